"""
Self-training benchmark: does a round of pseudo-labels beat the same training without them? Per
round and seed, the student (labeled + pseudo-labeled batches) is compared with its control: the
same config from the same start (the round's teacher), same iterations, batch, augmentation, loss
and seed, with the pseudo stream drawn from the labeled images (``control_opts``), so only the
pseudo-labels differ. Student and control of a seed are paired; rows give mean +- std over seeds
and the paired difference with its 95% t-interval, next to the teacher's AP and the pseudo-labels'
precision / recall against the unlabeled set's evaluation-only ground truth (when it has one).

``mode="online"`` (``--mode online``) benchmarks online self-training instead (one round): the
student is the student config in MODEL.SELF_TRAINING.MODE online (an EMA teacher pseudo-labels the
unlabeled images as training goes, ``detpre.engine.online_teacher``) from the trained teacher, its
control the same config trained on the labeled images alone (same labeled batches, iterations, start
and seed; no unlabeled pass); rows add the EMA teachers' AP, each against the control, and the
students' pseudo-boxes per image. The pseudo-label quality is the trained teacher's at the threshold:
what the EMA teacher starts from.

Round 1's teacher is trained once (``teacher_config``, SEED 0 unless ``teacher_opts`` say
otherwise) and labels for every seed; round r > 1's teacher of seed s is round r - 1's student of
seed s, and that round's control starts from it too: each round asks whether its own pseudo-labels
were worth it. Every training is a ``tools/train_net.py`` run (skipped when finished, resumed when
killed), pseudo-labels are reused when written: re-running the command continues.
"""
import math
import os
import threading
from typing import Any, Dict, Optional, Sequence

from detpre.config import get_detpre_cfg
from detpre.errors import DetpreError
from detpre.utils.io import write_json_atomic

from .runner import final_evaluation, metrics_records, repo_path, run_graph, say, train
from .stats import ground_truth_json, image_interval, image_metrics, mean_std, paired_difference
from .transfer import METRICS

__all__ = ["run_self_training_benchmark", "RESULT_FILE"]

RESULT_FILE = "benchmark_self_training.json"
_LABEL_LOCK = threading.Lock()  # pseudo-labelling runs in this process: one at a time


def _opt_str(opts):
    return [o if isinstance(o, str) else repr(o) if isinstance(o, (tuple, list)) else str(o) for o in opts]


def _trained(config, out_dir, opts, what):
    metrics = final_evaluation(config, out_dir, opts)
    if not metrics:
        raise RuntimeError(f"{out_dir}: the {what} wrote no evaluation (bbox/AP) to metrics.json; does its "
                           "config set DATASETS.TEST?")
    # an online student's pseudo-label health: logged during training, so not in the final
    # evaluation's record (written at MAX_ITER); its last training record has it
    health = next((r for r in reversed(metrics_records(out_dir)) if "pseudo/boxes_per_image" in r), {})
    return {"weights": os.path.join(out_dir, "model_final.pth"), "metrics": metrics, "health": health}


def online_control_opts():
    """The control of an online student: the same config trained on its labeled images alone
    (detpre's supervised Trainer: the online run's labeled stream, batch for batch, no unlabeled pass)."""
    return ["MODEL.SELF_TRAINING.MODE", "offline", "MODEL.SELF_TRAINING.ENABLED", False]


def _summary(values):
    m, s = mean_std(values)
    return {"mean": m, "std": s, "values": [float(v) for v in values]}


def run_self_training_benchmark(teacher_config: str, student_config: str, output_dir: str, *,
                                seeds: Sequence[int] = (0, 1, 2), rounds: int = 1, jobs: int = 2,
                                teacher_opts: Sequence[Any] = (), student_opts: Sequence[Any] = (),
                                unlabeled_dataset: Optional[str] = None, unlabeled_limit: int = 0,
                                groundtruth: Optional[str] = None,
                                label_kwargs: Optional[Dict[str, Any]] = None,
                                mode: str = "offline") -> Dict[str, Any]:
    """
    Run the benchmark into ``output_dir``; returns ``{"rounds": [...], ...}`` (also written to
    ``output_dir/benchmark_self_training.json``). ``jobs`` trainings run at once (one thread each
    when more than one); ``unlabeled_limit`` > 0 labels only the first images (a smoke run);
    ``groundtruth`` defaults to the unlabeled set's evaluation-only json (the demo's).
    """
    import torch
    from detectron2.data import DatasetCatalog

    from detpre.data.datasets import register_from_config

    from .self_training import control_opts, label_round, pseudo_dataset_opts, unlabeled_groundtruth

    if rounds < 1 or not seeds:
        raise DetpreError(f"--rounds {rounds} / --seeds {list(seeds)}: need at least one round and one seed")
    mode = str(mode).lower()
    if mode not in ("offline", "online"):
        raise DetpreError(f"--mode {mode}: use offline or online")
    online = mode == "online"
    if online and rounds != 1:
        raise DetpreError(f"--mode online --rounds {rounds}: online self-training is one run (its teacher "
                          "follows the student as it trains); use --rounds 1")
    seeds = [int(s) for s in seeds]
    threads = 1 if jobs > 1 else None
    if threads:
        torch.set_num_threads(threads)  # this process pseudo-labels while a training runs
    teacher_config, student_config = repo_path(teacher_config), repo_path(student_config)
    teacher_opts = ["SEED", 0, *teacher_opts]
    scfg = get_detpre_cfg(student_config, _opt_str(student_opts))
    unlabeled = unlabeled_dataset or scfg.MODEL.SELF_TRAINING.UNLABELED_DATASET
    if not unlabeled:
        raise DetpreError(f"{student_config}: no unlabeled data set: set MODEL.SELF_TRAINING.UNLABELED_DATASET "
                          "or pass --unlabeled")
    register_from_config(scfg)
    dicts = DatasetCatalog.get(unlabeled)  # (generates the demo, and its ground truth, on first use)
    dicts = dicts[:unlabeled_limit] if unlabeled_limit > 0 else dicts
    groundtruth = groundtruth or unlabeled_groundtruth(unlabeled)
    # the students' thresholds label every round, whichever config the labelling model comes from
    label_kwargs = dict(label_kwargs or {})
    if label_kwargs.get("score_threshold") is None:
        label_kwargs["score_threshold"] = scfg.MODEL.SELF_TRAINING.SCORE_THRESHOLD
    if label_kwargs.get("class_thresholds") is None:
        label_kwargs["class_thresholds"] = list(scfg.MODEL.SELF_TRAINING.CLASS_THRESHOLDS)
    say(f"[self-training benchmark] {len(dicts)} unlabeled images of {unlabeled}; pseudo-label quality "
        + (f"against {groundtruth}" if groundtruth else "not measured (no ground truth)"))
    t_iters = get_detpre_cfg(teacher_config, _opt_str(teacher_opts)).SOLVER.MAX_ITER
    say(f"[self-training benchmark] plan: a teacher ({t_iters} it), then per round {len(seeds)} students and "
        f"{len(seeds)} controls ({scfg.SOLVER.MAX_ITER} it each, {scfg.SOLVER.IMS_PER_BATCH} images a batch), "
        f"{rounds} round(s), {jobs} run(s) at once")
    os.makedirs(output_dir, exist_ok=True)

    def seed_dir(r, s):
        return os.path.join(output_dir, f"round{r}", f"seed{s}")

    def teacher_key(r, s):
        return ("teacher",) if r == 1 else ("student", r - 1, s)

    def label_key(r, s):
        return ("label", 1) if r == 1 else ("label", r, s)

    def teacher_job():
        out = os.path.join(output_dir, "teacher")
        # nothing else can run before the teacher is trained: it gets every job's thread
        train(teacher_config, out, _opt_str(teacher_opts), "teacher", jobs if threads else None)
        return _trained(teacher_config, out, _opt_str(teacher_opts), "teacher")

    def label_job(r, s):
        def run(teacher):
            config, opts = (teacher_config, teacher_opts) if r == 1 else (student_config, student_opts)
            tcfg = get_detpre_cfg(config, _opt_str(opts))
            rdir = os.path.join(output_dir, "round1", "labels") if r == 1 else os.path.join(seed_dir(r, s), "labels")
            with _LABEL_LOCK:
                say(f"[round {r}] pseudo-labelling {len(dicts)} images with {teacher['weights']}")
                pl, quality = label_round(tcfg, dicts, rdir, teacher["weights"], label_kwargs, groundtruth)
            return {"pseudo_labels": pl, "quality": quality}
        return run

    def train_job(kind, r, s):
        def run(teacher, labels=None):
            out = os.path.join(seed_dir(r, s), kind)
            if online:
                opts = (["MODEL.SELF_TRAINING.MODE", "online", "MODEL.SELF_TRAINING.UNLABELED_DATASET", unlabeled]
                        if kind == "student" else online_control_opts())
            elif kind == "student":
                name, root, opts = pseudo_dataset_opts(labels["pseudo_labels"], unlabeled)
                opts = ["DATASETS.COCO", [[name, labels["pseudo_labels"], root]], *opts]
            else:
                opts = control_opts(scfg)
            opts = [*student_opts, *opts, "MODEL.WEIGHTS", teacher["weights"], "SEED", s]
            train(student_config, out, _opt_str(opts), f"round {r} {kind} seed {s}", threads)
            return _trained(student_config, out, _opt_str(opts), kind)
        return run

    tasks = {("teacher",): (teacher_job, ())}
    for r in range(1, rounds + 1):
        for s in seeds:
            if online:  # no pseudo-label files: the student's teacher labels each batch; the labelling
                # job measures what the EMA teacher starts from (precision / recall at the threshold)
                tasks[label_key(r, s)] = (label_job(r, s), (teacher_key(r, s),))
                tasks[("student", r, s)] = (train_job("student", r, s), (teacher_key(r, s),))
                tasks[("control", r, s)] = (train_job("control", r, s), (teacher_key(r, s),))
                continue
            if label_key(r, s) not in tasks:
                tasks[label_key(r, s)] = (label_job(r, s), (teacher_key(r, s),))
            tasks[("student", r, s)] = (train_job("student", r, s), (teacher_key(r, s), label_key(r, s)))
            tasks[("control", r, s)] = (train_job("control", r, s), (teacher_key(r, s),))
    done = run_graph(tasks, jobs)

    result = {"teacher_config": teacher_config, "student_config": student_config,
              "teacher_opts": _opt_str(teacher_opts), "student_opts": _opt_str(student_opts), "seeds": seeds,
              "unlabeled_dataset": unlabeled, "unlabeled_images": len(dicts), "groundtruth": groundtruth,
              "threshold": label_kwargs["score_threshold"], "mode": mode, "rounds": []}
    test_set = scfg.DATASETS.TEST[0] if scfg.DATASETS.TEST else None
    gt_json = ground_truth_json(scfg, test_set) if test_set else None
    for r in range(1, rounds + 1):
        teachers = [done[teacher_key(r, s)]["metrics"] for s in seeds]
        labels = [done[label_key(r, s)] for s in (seeds[:1] if r == 1 else seeds)]
        row = {"round": r, "teacher": {label: _summary([m.get(k, math.nan) for m in teachers[:1 if r == 1 else None]])
                                       for label, k in METRICS},
               "pseudo_labels": [lab["pseudo_labels"] for lab in labels], "quality": None}
        if online:  # the EMA teachers (teacher/bbox/AP, ...) and what they fed their students
            finals = [done[("student", r, s)]["metrics"] for s in seeds]
            row["online_teacher"] = {label: _summary([m.get(f"teacher/{k}", math.nan) for m in finals])
                                     for label, k in METRICS}
            row["pseudo_boxes_per_image"] = _summary([done[("student", r, s)].get("health", {}).get(
                "pseudo/boxes_per_image", math.nan) for s in seeds])
        if labels and all(lab["quality"] for lab in labels):
            qs = [lab["quality"] for lab in labels]
            row["quality"] = {"precision": _summary([q["precision"] for q in qs]),
                              "precision (any class)": _summary([q.get("class_agnostic", {}).get(
                                  "precision", math.nan) for q in qs]),
                              "recall": _summary([q["recall"] for q in qs]),
                              "kept": _summary([q["kept"] for q in qs]),
                              "teacher unlabeled box AP": _summary([q["teacher_unlabeled"]["AP"] for q in qs]),
                              "threshold": qs[0]["threshold"], "curves": [q["curve"] for q in qs]}
        for kind in ("student", "control"):
            row[kind] = {label: _summary([done[(kind, r, s)]["metrics"].get(k, math.nan) for s in seeds])
                         for label, k in METRICS}
        row["difference"] = {label: paired_difference(row["student"][label]["values"], row["control"][label]["values"])
                             for label, _ in METRICS}
        runs = {kind: [os.path.join(seed_dir(r, s), kind) for s in seeds] for kind in ("student", "control")}
        row["difference_images"] = {label: image_interval(runs["student"], runs["control"], test_set, gt_json,
                                                          iou_type=iou_type) for label, iou_type in image_metrics(scfg)}
        if online:  # the EMA teachers against the same controls: which weights to keep
            row["teacher_difference"] = {label: paired_difference(row["online_teacher"][label]["values"],
                                                                  row["control"][label]["values"])
                                         for label, _ in METRICS}
            row["teacher_difference_images"] = {
                label: image_interval(runs["student"], runs["control"], test_set, gt_json, iou_type=iou_type,
                                      run_folder="inference_teacher") for label, iou_type in image_metrics(scfg)}
        result["rounds"].append(row)
    write_json_atomic(os.path.join(output_dir, RESULT_FILE), result, indent=1)
    return result
