"""The self-training benchmark's plan (fake trainings): paired student / control, rounds, table."""
import json
import os

import numpy as np
import pytest
from _catalog import names_freed
from _self_training_data import write_images

import detpre.jobs.self_training as st_jobs
import detpre.jobs.self_training_benchmark as bench
from detpre.data.datasets import register_image_folder
from detpre.jobs.report import self_training_margin, self_training_table

# what makes the second stream pseudo-labeled (the control's is labeled, and trains every loss)
PSEUDO_KEYS = ("DATASETS.COCO", "MODEL.SELF_TRAINING.PSEUDO_DATASETS", "MODEL.SELF_TRAINING.UNLABELED_DATASET",
               "MODEL.SELF_TRAINING.PSEUDO_LOSSES")


def _ap(kind, r, s):
    return {"teacher": 1.0, "student": 3.0 + r + 0.5 * s, "control": 2.0 + 0.25 * s}[kind]


@pytest.fixture
def fake_jobs(tmp_path, monkeypatch):
    """``train`` writes metrics with a known AP, ``label_round`` a pseudo-label json; both record calls.
    The unlabeled set's name is free again afterwards (other modules use this fixture too)."""
    with names_freed(("bench_test_unlabeled",)):
        yield _fake_jobs(tmp_path, monkeypatch)


def _fake_jobs(tmp_path, monkeypatch):
    images = str(tmp_path / "unlabeled")
    write_images(images, 3)
    register_image_folder("bench_test_unlabeled", images)
    calls = {"train": [], "label": [], "threshold": 0.5}

    def train(config, out, opts, label="", threads=None):
        parts = out.split(os.sep)
        kind = parts[-1]
        r = int(parts[-3][len("round"):]) if kind != "teacher" else 0
        o = dict(zip(opts[::2], opts[1::2]))
        calls["train"].append((kind, r, int(o["SEED"]), o))
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "metrics.json"), "w") as f:
            # the final evaluation's record: at (beyond) the config's last iteration
            record = {"iteration": 10 ** 6, "bbox/AP": _ap(kind, r, int(o["SEED"])), "bbox/AP50": 0.0}
            if o.get("MODEL.SELF_TRAINING.MODE") == "online":  # its EMA teacher, evaluated beside it
                record["teacher/bbox/AP"] = record["bbox/AP"] + 0.5
            f.write(json.dumps(record) + "\n")
        return 1.0

    def label_round(tcfg, dicts, rdir, weights, label_kwargs=None, groundtruth=None):
        calls["label"].append((rdir, weights, len(dicts)))
        # every round labels at the students' threshold, whichever config the teacher comes from
        assert label_kwargs["score_threshold"] == calls["threshold"] and label_kwargs["class_thresholds"] == []
        os.makedirs(rdir, exist_ok=True)
        pl = os.path.join(rdir, "pseudo_labels.json")
        with open(pl, "w") as f:
            json.dump({"info": {"image_root": images}, "images": [], "annotations": [], "categories": []}, f)
        curve = {"threshold": [0.5], "precision": [0.5], "recall": [0.25]}
        return pl, {"precision": 0.5, "recall": 0.25, "kept": 10, "threshold": 0.5, "curve": curve,
                    "teacher_unlabeled": {"AP": 4.0}}

    monkeypatch.setattr(bench, "train", train)
    monkeypatch.setattr(st_jobs, "label_round", label_round)
    return calls


def test_student_and_control_differ_only_in_pseudo_labels(tmp_path, fake_jobs):
    out = str(tmp_path / "bench")
    result = bench.run_self_training_benchmark(
        "configs/demo/self_training_benchmark_teacher.yaml", "configs/demo/self_training_benchmark_student.yaml",
        out, seeds=(0, 1, 2), rounds=2, jobs=1, unlabeled_dataset="bench_test_unlabeled", unlabeled_limit=2,
        groundtruth="gt.json")
    trains = fake_jobs["train"]
    assert [t[0] for t in trains].count("teacher") == 1  # one teacher labels round 1 for every seed
    teacher_w = os.path.join(out, "teacher", "model_final.pth")
    student_w = lambda r, s: os.path.join(out, f"round{r}", f"seed{s}", "student", "model_final.pth")  # noqa: E731
    assert [(w, n) for _, w, n in fake_jobs["label"]] == [(teacher_w, 2)] + [(student_w(1, s), 2) for s in (0, 1, 2)]
    runs = {(k, r, s): o for k, r, s, o in trains if k != "teacher"}
    assert len(runs) == 2 * 2 * 3
    for r in (1, 2):
        for s in (0, 1, 2):
            student, control = runs[("student", r, s)], runs[("control", r, s)]
            start = teacher_w if r == 1 else student_w(r - 1, s)  # round r's teacher: round r-1's student
            assert student["MODEL.WEIGHTS"] == control["MODEL.WEIGHTS"] == start
            assert student["SEED"] == control["SEED"] == str(s)
            assert control["MODEL.SELF_TRAINING.PSEUDO_DATASETS"] == "('detpre_demo_train',)"
            assert student["MODEL.SELF_TRAINING.PSEUDO_DATASETS"].startswith("('detpre_self_training_")
            same = lambda o: {k: v for k, v in o.items() if k not in PSEUDO_KEYS}  # noqa: E731
            assert same(student) == same(control) and control["MODEL.SELF_TRAINING.PSEUDO_LOSSES"] == "[]"

    r1, r2 = result["rounds"]
    assert r1["teacher"]["box AP"]["values"] == [1.0]
    assert r2["teacher"]["box AP"]["values"] == r1["student"]["box AP"]["values"] == [4.0, 4.5, 5.0]
    d = r1["difference"]["box AP"]  # student - control = 2 + 0.25 s: mean 2.25
    assert d["mean"] == pytest.approx(2.25) and d["n"] == 3 and d["excludes_zero"]
    assert r2["difference"]["box AP"]["mean"] == pytest.approx(3.25)
    assert r1["quality"]["precision"]["values"] == [0.5] and len(r2["quality"]["recall"]["values"]) == 3
    with open(os.path.join(out, bench.RESULT_FILE)) as f:
        assert json.load(f)["rounds"][1]["student"]["box AP"]["values"] == [5.0, 5.5, 6.0]

    table = self_training_table(result)
    assert "| 1 " in table and "0.50" in table and "+2.25" in table and "*" in table
    assert "4.50 ± 0.50" in table  # round 2's teachers: three students
    margin = self_training_margin(result)
    assert margin.count("better than the control beyond the seed noise") == 2


def test_online_rows_pair_students_and_ema_teachers_with_labeled_only_controls(tmp_path, fake_jobs):
    fake_jobs["threshold"] = 0.7  # the online student config's
    out = str(tmp_path / "bench")
    result = bench.run_self_training_benchmark(
        "configs/demo/self_training_benchmark_teacher.yaml", "configs/demo/self_training_online_benchmark_student.yaml",
        out, seeds=(0, 1, 2), jobs=1, unlabeled_dataset="bench_test_unlabeled", groundtruth="gt.json", mode="online")
    runs = {(k, s): o for k, _, s, o in fake_jobs["train"] if k != "teacher"}
    # one labelling, by the trained teacher: the quality the EMA teacher starts from (students train without it)
    assert [w for _, w, _ in fake_jobs["label"]] == [os.path.join(out, "teacher", "model_final.pth")]
    assert not any(k.startswith("DATASETS.COCO") or "PSEUDO_DATASETS" in k for o in runs.values() for k in o)
    for s in (0, 1, 2):
        student, control = runs[("student", s)], runs[("control", s)]
        assert student["MODEL.WEIGHTS"] == control["MODEL.WEIGHTS"] == os.path.join(out, "teacher", "model_final.pth")
        assert student["SEED"] == control["SEED"] == str(s)
        assert student["MODEL.SELF_TRAINING.MODE"] == "online"
        assert student["MODEL.SELF_TRAINING.UNLABELED_DATASET"] == "bench_test_unlabeled"
        assert control["MODEL.SELF_TRAINING.MODE"] == "offline" and control["MODEL.SELF_TRAINING.ENABLED"] == "False"
    (row,) = result["rounds"]
    assert row["difference"]["box AP"]["mean"] == pytest.approx(2.25)  # 2 + 0.25 s
    assert row["online_teacher"]["box AP"]["values"] == [4.5, 5.0, 5.5]
    d = row["teacher_difference"]["box AP"]  # the teachers: the students + 0.5
    assert d["mean"] == pytest.approx(2.75) and d["n"] == 3 and d["excludes_zero"]
    assert row["teacher_difference_images"]["box AP"] is None  # no COCO results written by the fake runs
    assert row["quality"]["precision"]["values"] == [0.5]
    margin = self_training_margin(result).splitlines()
    assert margin[0].startswith("round 1: student box AP +2.25") and "better than the control" in margin[0]
    assert margin[1].startswith("round 1: EMA teacher box AP +2.75 over the same control")
    # teachers 5.0 on average, students 4.5: keep the teacher
    assert margin[2] == ("round 1: keep model_final_teacher.pth (the EMA teacher): box AP 5.00 against 4.50 "
                         "for the student (mean over seeds)")
    row["online_teacher"]["box AP"]["mean"] = float("nan")  # a teacher never evaluated (burn-in not over)
    assert self_training_margin(result).splitlines()[-1].endswith("not measured (the EMA teacher or the student "
                                                                  "has no box AP)")


def test_no_seed_or_online_rounds_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="at least one round and one seed"):
        bench.run_self_training_benchmark("a.yaml", "b.yaml", str(tmp_path), seeds=())
    with pytest.raises(ValueError, match="--rounds 1"):  # online: one run, its teacher follows the student
        bench.run_self_training_benchmark("a.yaml", "b.yaml", str(tmp_path), rounds=2, mode="online")


def test_label_round_measures_the_pseudo_labels_it_writes(tmp_path):
    """With a ground truth: detections + filtered pseudo-labels + quality, reused on a second call."""
    import torch
    from _self_training_data import tiny_cfg, write_coco
    from detectron2.modeling import build_model

    from detpre.pseudo_labels import pseudo_label_quality

    torch.manual_seed(0)
    cfg = tiny_cfg()
    weights = str(tmp_path / "teacher.pth")
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    dicts = write_images(str(tmp_path / "imgs"), 3)
    gt = write_coco(str(tmp_path / "gt.json"), dicts)
    rdir = str(tmp_path / "round1")
    plain = [{"file_name": d["file_name"], "image_id": d["image_id"]} for d in dicts]
    st_jobs.label_round(cfg, plain, rdir, weights, {"score_threshold": 0.9, "progress": False}, gt)
    dets = os.path.join(rdir, "teacher_detections.json")
    data = json.load(open(dets))
    thr = float(np.median([a["score"] for a in data["annotations"]]))  # keeps about half of them
    for f in ("pseudo_labels.json", "pseudo_label_quality.json"):
        os.remove(os.path.join(rdir, f))
    pl, q = st_jobs.label_round(cfg, plain, rdir, weights, {"score_threshold": thr, "progress": False}, gt)
    kept = json.load(open(pl))
    assert json.load(open(dets)) == data  # the detections were reused, only the threshold changed
    assert min(a["score"] for a in data["annotations"]) < thr <= min(a["score"] for a in kept["annotations"])
    assert q["threshold"] == thr and q["kept"] == len(kept["annotations"]) > 0 and q["groundtruth"] == 4
    assert q["precision"] == pseudo_label_quality(dets, gt, thr)["precision"]
    assert 0 <= q["teacher_unlabeled"]["AP"] <= 100 and q["curve"]["threshold"][0] == 0.05
    stamp = os.path.getmtime(pl)
    again = st_jobs.label_round(cfg, plain, rdir, weights, {"score_threshold": thr}, gt)  # reused
    assert again[0] == pl and json.dumps(again[1], sort_keys=True) == json.dumps(q, sort_keys=True)
    assert os.path.getmtime(pl) == stamp
    # another threshold on the same directory: filtered again from the same detections, not reused
    higher = max(a["score"] for a in kept["annotations"])
    pl2, q2 = st_jobs.label_round(cfg, plain, rdir, weights, {"score_threshold": higher, "progress": False}, gt)
    assert q2["threshold"] == higher and q2["kept"] == len(json.load(open(pl2))["annotations"]) <= q["kept"]
    assert all(a["score"] >= higher for a in json.load(open(pl2))["annotations"])
    assert json.load(open(dets)) == data


def test_the_control_trains_every_loss_on_its_labeled_second_stream(repo_root):
    """A student whose pseudo-labels train localization only: its control's second stream is
    labeled images, which train every loss; everything else is the student's."""
    from detpre.config import get_detpre_cfg

    config = os.path.join(repo_root, "configs/demo/self_training_benchmark_student.yaml")
    student_opts = ["MODEL.SELF_TRAINING.PSEUDO_LOSSES", "['loss_rpn_cls', 'loss_box_reg']",
                    "MODEL.SELF_TRAINING.LOSS_NORM", "False"]
    student = get_detpre_cfg(config, student_opts)
    control = get_detpre_cfg(config, student_opts + bench._opt_str(st_jobs.control_opts(student)))
    assert list(student.MODEL.SELF_TRAINING.PSEUDO_LOSSES) == ["loss_rpn_cls", "loss_box_reg"]
    assert list(control.MODEL.SELF_TRAINING.PSEUDO_LOSSES) == []
    assert tuple(control.MODEL.SELF_TRAINING.PSEUDO_DATASETS) == tuple(student.DATASETS.TRAIN)
    assert control.MODEL.SELF_TRAINING.LOSS_NORM is False and control.SOLVER.MAX_ITER == student.SOLVER.MAX_ITER


def test_make_demo_self_training_teacher_student_and_control_share_the_20_labeled_images(repo_root):
    """The make target's regime: the teacher, the online student and its control (the student config
    with the online control's keys) all train on detpre_demo_train20, from 1000 teacher iterations."""
    from detpre.config import get_detpre_cfg

    demo = os.path.join(repo_root, "configs", "demo")
    teacher = get_detpre_cfg(os.path.join(demo, "self_training_20_labels_teacher.yaml"))
    student = get_detpre_cfg(os.path.join(demo, "self_training_online_20_labels_student.yaml"))
    control = get_detpre_cfg(os.path.join(demo, "self_training_online_20_labels_student.yaml"),
                             [str(v) for v in bench.online_control_opts()])
    assert teacher.DATASETS.TRAIN == student.DATASETS.TRAIN == control.DATASETS.TRAIN == ("detpre_demo_train20",)
    assert teacher.SOLVER.MAX_ITER == 1000 and student.SOLVER.MAX_ITER == control.SOLVER.MAX_ITER == 200
    assert student.MODEL.SELF_TRAINING.MODE == "online" and control.MODEL.SELF_TRAINING.MODE == "offline"
    assert student.MODEL.SELF_TRAINING.UNLABELED_DATASET == "detpre_demo_unlabeled"
    with open(os.path.join(repo_root, "Makefile")) as f:
        target = f.read().split("demo-self-training:")[1].split("\n\n")[0]
    assert "self_training_20_labels_teacher.yaml" in target and "self_training_online_20_labels_student.yaml" in target
