"""
Noisy-Student rounds: teacher -> pseudo-labels on the unlabeled set -> student (strong
augmentation, mixed batches, normalized loss) -> the student is the next round's teacher.

Every step is skipped when its output exists and resumes when it was killed (trainer
checkpoints, pseudo-label chunks), so re-running the same command continues where it stopped.
Each student's weights are also exported as a plain detectron2 checkpoint (``student.pth``).

Where the unlabeled set has an evaluation-only ground truth (the demo's; its metadata
``eval_only_json_file``), each round also measures its pseudo-labels: the teacher labels once at
its test threshold (``teacher_detections.json``), the pseudo-labels are those boxes at the
pseudo-label threshold (the same boxes as labelling at it), and their precision / recall, curve
and the teacher's AP on the unlabeled images go to ``pseudo_label_quality.json``. ``control``
also trains each round's control: the same student run with labeled images in both streams.
"""
import hashlib
import json
import logging
import math
import os

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from detpre.config import get_detpre_cfg
from detpre.data.datasets import register_coco, register_from_config
from detpre.engine.self_training import SelfTrainingTrainer
from detpre.engine.trainer import Trainer
from detpre.pseudo_labels import (
    detections_floor,
    filter_pseudo_labels,
    label_images,
    num_classes_of,
    pseudo_label_quality,
    resolve_thresholds,
    teacher_box_ap,
)
from detpre.utils.io import atomic_open, write_json_atomic
from detpre.utils.safe_load import load_torch

from .runner import evaluate_weights, final_metrics, is_finished, repo_path

__all__ = ["self_train", "export_plain_checkpoint", "unlabeled_groundtruth", "label_round", "control_opts",
           "pseudo_dataset_opts"]

logger = logging.getLogger("detpre.self_training")


def export_plain_checkpoint(checkpoint, path):
    """Only the model weights of a training checkpoint, as ``{"model": state_dict}`` (atomic)."""
    state = load_torch(checkpoint, kind="checkpoint")["model"]
    with atomic_open(path, "wb") as f:
        torch.save({"model": state, "__author__": "detpre self-training"}, f)
    return path


def _train(trainer_cls, cfg):
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if not is_finished(cfg.OUTPUT_DIR):
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        trainer = trainer_cls(cfg)
        trainer.resume_or_load(resume=True)
        trainer.train()
    return final


def _evaluate(cfg, weights, trained_here=False):
    """AP of ``weights`` on DATASETS.TEST: the end-of-training evaluation of a run in OUTPUT_DIR
    that produced them, else a fresh one (cached in OUTPUT_DIR/eval_<name>.json)."""
    if trained_here and final_metrics(cfg.OUTPUT_DIR):
        logger.info("Evaluated weights: %s (end of training, %s/metrics.json)", weights, cfg.OUTPUT_DIR)
        return final_metrics(cfg.OUTPUT_DIR)
    cache = os.path.join(cfg.OUTPUT_DIR, "eval_" + os.path.basename(weights) + ".json")
    if os.path.isfile(cache):
        with open(cache) as f:
            return json.load(f)
    if not cfg.DATASETS.TEST:
        return {}
    logger.info("Evaluating weights: %s", weights)
    flat = evaluate_weights(cfg, weights)
    write_json_atomic(cache, flat)
    return flat


def unlabeled_groundtruth(dataset_name):
    """The evaluation-only ground-truth json of an unlabeled data set (metadata
    ``eval_only_json_file``, the demo's), or None; never a training data set."""
    path = MetadataCatalog.get(dataset_name).get("eval_only_json_file", None)
    return path if path and os.path.isfile(path) else None


def label_round(tcfg, dicts, rdir, weights, label_kwargs=None, groundtruth=None):
    """
    ``rdir/pseudo_labels.json``: ``dicts`` pseudo-labeled by the teacher (``tcfg`` + ``weights``);
    returns ``(path, quality)``. With ``groundtruth`` (a COCO json of these images), through the
    teacher's detections at its test threshold, and ``quality`` is their precision / recall at
    the pseudo-label threshold, curve and teacher box AP (else None). Reused when written at
    the same thresholds; another threshold filters the detections again.
    """
    kw = dict(label_kwargs or {})
    kw.setdefault("progress", False)  # a job among others: its start and end are logged, no bar
    pl = os.path.join(rdir, "pseudo_labels.json")
    if groundtruth is None:
        if not os.path.isfile(pl):
            label_images(tcfg, dicts, pl, weights=weights, **kw)
        return pl, None
    qpath = os.path.join(rdir, "pseudo_label_quality.json")
    st = tcfg.MODEL.SELF_TRAINING
    thr, cls = kw.pop("score_threshold", None), kw.pop("class_thresholds", None)
    thresholds = resolve_thresholds(st.SCORE_THRESHOLD if thr is None else thr,
                                    st.CLASS_THRESHOLDS if cls is None else cls, num_classes_of(tcfg))
    floor = detections_floor(tcfg, thresholds)
    cached = None
    if os.path.isfile(pl) and os.path.isfile(qpath):
        with open(qpath) as f:
            cached = json.load(f)
        if cached.get("thresholds") == thresholds.tolist():
            return pl, cached
    dets = os.path.join(rdir, "teacher_detections.json")
    # detections made at a floor above a new threshold lack boxes it keeps: label again
    if not os.path.isfile(dets) or (cached is not None and cached.get("detections_floor", 1.0) > floor):
        label_images(tcfg, dicts, dets, weights=weights, score_threshold=floor, class_thresholds=[], **kw)
    filter_pseudo_labels(dets, pl, thresholds)
    with open(dets) as f:
        cats = [c["id"] for c in json.load(f)["categories"]]
    at = float(thresholds[0]) if len(set(thresholds.tolist())) == 1 else dict(zip(cats, thresholds.tolist()))
    quality = {**pseudo_label_quality(dets, groundtruth, at), "groundtruth_json": groundtruth,
               "teacher_unlabeled": teacher_box_ap(dets, groundtruth),
               "thresholds": thresholds.tolist(), "detections_floor": floor}
    write_json_atomic(qpath, quality, indent=1)
    return pl, quality


def pseudo_dataset_opts(pl, unlabeled):
    """Student overrides that train on the pseudo-label json ``pl`` (registered by name through
    DATASETS.COCO, so a ``tools/train_net.py`` subprocess registers it too)."""
    with open(pl) as f:
        root = json.load(f)["info"]["image_root"]
    name = "detpre_self_training_" + hashlib.sha1(os.path.abspath(pl).encode()).hexdigest()[:8]
    return name, root, ["MODEL.SELF_TRAINING.ENABLED", True, "MODEL.SELF_TRAINING.PSEUDO_DATASETS", (name,),
                        "MODEL.SELF_TRAINING.UNLABELED_DATASET", unlabeled]


def control_opts(student_cfg):
    """The control of a student: the same run (batch, streams, augmentation, loss, iterations,
    start) with its pseudo stream drawn from the labeled data instead, so only the
    pseudo-labels differ. Being labels, that stream trains every loss (MODEL.SELF_TRAINING.PSEUDO_LOSSES
    is the student's)."""
    return ["MODEL.SELF_TRAINING.ENABLED", True,
            "MODEL.SELF_TRAINING.PSEUDO_DATASETS", tuple(student_cfg.DATASETS.TRAIN),
            "MODEL.SELF_TRAINING.PSEUDO_LOSSES", []]


def self_train(teacher_config, student_config, output_dir, *, rounds=1, teacher_weights=None,
               unlabeled_dataset=None, teacher_opts=(), student_opts=(), student_from_teacher=False,
               label_kwargs=None, control=False):
    """Run ``rounds`` teacher -> student rounds; returns a list of per-model result rows (a
    student's also holds its round's ``pseudo_labels`` quality and ``control`` AP, when measured)."""
    if rounds < 1:
        raise ValueError(f"--rounds {rounds}: must be >= 1")
    teacher_config, student_config = repo_path(teacher_config), repo_path(student_config)
    tcfg = get_detpre_cfg(teacher_config, list(teacher_opts) + ["OUTPUT_DIR", os.path.join(output_dir, "teacher")])
    register_from_config(tcfg)
    trained = teacher_weights is None
    if trained:
        logger.info("training the teacher (%s) on %s", teacher_config, tcfg.DATASETS.TRAIN)
        teacher_weights = _train(Trainer, tcfg)
    rows = [{"model": "teacher", "weights": teacher_weights, **_evaluate(tcfg, teacher_weights, trained)}]

    scfg0 = get_detpre_cfg(student_config, student_opts)
    unlabeled = unlabeled_dataset or scfg0.MODEL.SELF_TRAINING.UNLABELED_DATASET
    if not unlabeled:
        raise ValueError("no unlabeled data set: set MODEL.SELF_TRAINING.UNLABELED_DATASET in the student "
                         "config or pass --unlabeled")
    register_from_config(scfg0)
    dicts = DatasetCatalog.get(unlabeled)
    for r in range(1, rounds + 1):
        rdir = os.path.join(output_dir, f"round{r}")
        logger.info("round %d: pseudo-labelling %s with %s", r, unlabeled, teacher_weights)
        pl, quality = label_round(tcfg, dicts, rdir, teacher_weights, label_kwargs, unlabeled_groundtruth(unlabeled))
        name, root, opts = pseudo_dataset_opts(pl, unlabeled)
        register_coco(name, pl, root, source=f"round {r} pseudo-labels")
        start = ["MODEL.WEIGHTS", teacher_weights] if student_from_teacher else []
        scfg = get_detpre_cfg(student_config, list(student_opts) + opts + start
                              + ["OUTPUT_DIR", os.path.join(rdir, "student")])
        final = _train(SelfTrainingTrainer, scfg)
        student = export_plain_checkpoint(final, os.path.join(rdir, "student.pth"))
        row = {"model": f"student (round {r})", "weights": student, **_evaluate(scfg, student, True)}
        if quality is not None:
            row["pseudo_labels"] = quality
        if control:
            ccfg = get_detpre_cfg(student_config, list(student_opts) + control_opts(scfg) + start
                                  + ["OUTPUT_DIR", os.path.join(rdir, "control")])
            cfinal = _train(SelfTrainingTrainer, ccfg)
            row["control"] = _evaluate(ccfg, cfinal, True)
        rows.append(row)
        teacher_weights, tcfg = student, scfg  # the student labels the next round
    return rows


def format_rows(rows):
    lines = ["| model | box AP | box AP50 | mask AP | weights |", "|---|---|---|---|---|"]
    for r in rows:
        g = lambda k: r.get(k, math.nan)  # noqa: E731
        aps = " | ".join(f"{g(k):.2f}" for k in ("bbox/AP", "bbox/AP50", "segm/AP"))
        lines.append(f"| {r['model']} | {aps} | {r['weights']} |")
    return "\n".join(lines)
