"""
The converged comparison's parts (detpre.jobs.converged, transfer's plateau mode): iterations to
reach an AP by hand, the plateau summary and table from made-up runs (the trainings faked), the
fine-tuning record of a plateau run, and the demo's selection / report splits and label budgets.
"""
import hashlib
import json
import os

import pytest
import torch
from _catalog import names_freed
from detectron2.data import DatasetCatalog

from detpre.jobs.converged import converged_settings, converged_table, expected_seconds, plot_plateau_curves
from detpre.jobs.transfer import Plateau, iterations_to_reach

FINETUNE = "configs/demo/mask_rcnn_R18_FPN_tiny.yaml"


def _h(*pairs):
    return [{"iteration": i, "value": v} for i, v in pairs]


def test_iterations_to_reach_by_hand():
    hist = _h((100, 1.0), (200, None), (300, 2.5), (400, 3.0), (500, 2.9))
    assert iterations_to_reach(hist, 2.5) == 300  # the first at or above
    assert iterations_to_reach(hist, 0.5) == 100
    assert iterations_to_reach(hist, 3.0) == 400
    assert iterations_to_reach(hist, 3.01) is None  # never
    assert iterations_to_reach(hist, None) is None and iterations_to_reach([], 1.0) is None
    assert iterations_to_reach(_h((100, float("nan")), (200, 1.0)), 0.0) == 200


def _run(history, ap, s_per_iter=0.5, cap=500):
    best = max(range(len(history)), key=lambda k: (history[k]["value"], -k))
    last = history[-1]["iteration"]
    return {"bbox/AP": ap, "bbox/AP50": ap, "segm/AP": ap,
            "plateau": {"history": history, "best": history[best], "stopped_at": last if last < cap else None,
                        "iterations": last, "max_iter": cap, "s_per_iter": s_per_iter}}


# selection histories per init and seed, and report APs: random init's plateau is 3.0 (seed 0,
# after 300 iterations) and 2.5 (seed 1, after 200)
RUNS = {
    None: {0: _run(_h((100, 1.0), (200, 2.0), (300, 3.0), (400, 3.0), (500, 3.0)), 10.0),
           1: _run(_h((100, 1.0), (200, 2.5), (300, 2.5), (400, 2.4)), 11.0)},
    "soco": {0: _run(_h((100, 2.0), (200, 3.5), (300, 4.0), (400, 4.0)), 12.0),  # reaches 3.0 at 200
             1: _run(_h((100, 2.6), (200, 3.0), (300, 3.1), (400, 3.0)), 13.0)},  # reaches 2.5 at 100
    "jigsaw": {0: _run(_h((100, 0.5), (200, 1.0), (300, 1.0), (400, 0.9)), 9.0),  # never reaches 3.0
               1: _run(_h((100, 2.5), (200, 2.0), (300, 2.0)), 12.0)},
    "control": {0: _run(_h((100, 1.0), (200, 2.0), (300, 3.2), (400, 3.0), (500, 3.1)), 10.5, cap=800),
                1: _run(_h((100, 1.0), (200, 2.7), (300, 2.5), (400, 2.4)), 11.5, cap=800)},
}


@pytest.fixture
def faked_transfer(tmp_path, monkeypatch):
    """run_transfer in plateau mode with its trainings faked (RUNS); the calls it made."""
    from detpre.data.datasets import DEMO_NAMES
    from detpre.data.datasets.reid import REID_DEMO_NAMES
    from detpre.jobs import transfer

    calls = []
    monkeypatch.setattr(transfer, "ensure_prerequisites", lambda *a, **k: None)
    monkeypatch.setattr(transfer, "prerequisite_opts", lambda *a, **k: [])
    monkeypatch.setattr(transfer, "pretrain", lambda config, out, *a, **k: {
        "train_s": 150.0, "iters": 300, "images_per_s": 16.0, "wall_s": None, "s_per_iter": 0.5, "out": out})
    monkeypatch.setattr(transfer, "export", lambda checkpoint, path, *a: (path, None))
    monkeypatch.setattr(transfer, "probe", lambda *a, **k: {"knn_top1": 1.0, "linear_top1": 1.0})

    def finetune(config, out, weights, seed, opts, *a, **k):
        o = dict(zip(opts[::2], opts[1::2]))
        calls.append((os.path.relpath(out, tmp_path), o))
        init = None if not weights else os.path.basename(os.path.dirname(weights))
        if init is None and o["SOLVER.MAX_ITER"] == "800":
            init = "control"
        return RUNS[init][seed], 1.0

    monkeypatch.setattr(transfer, "finetune", finetune)
    with names_freed((*DEMO_NAMES, "detpre_demo_select", "detpre_demo_report", *REID_DEMO_NAMES)):
        yield transfer, calls


def _result(tmp_path, transfer):
    methods = [transfer.Method("soco", "configs/demo/soco_R18_FPN_tiny.yaml", detector="backbone_fpn",
                               pretrain_dir=str(tmp_path / "shared" / "soco")),
               transfer.Method("jigsaw", "configs/demo/jigsaw_R18_tiny.yaml")]
    return transfer.run_transfer(
        methods, FINETUNE, str(tmp_path / "labels60"), seeds=(0, 1), jobs=1,
        finetune_opts=["SOLVER.MAX_ITER", "500", "DATASETS.DEMO_ROOT", str(tmp_path / "no_demo")],
        plateau=Plateau("detpre_demo_select", "detpre_demo_report", period=100, patience=2, min_delta=0.1))


def test_plateau_mode_of_run_transfer_and_its_summary(tmp_path, faked_transfer):
    transfer, calls = faked_transfer
    res = _result(tmp_path, transfer)
    # every run fine-tunes to a plateau on the selection split, reported on the report split; the
    # control's cap is the fine-tuning cap plus Jigsaw's 300 pretraining iterations
    for out, o in calls:
        assert o["TEST.PLATEAU.ENABLED"] == "True" and o["TEST.PLATEAU.DATASET"] == "detpre_demo_select"
        assert o["DATASETS.TEST"] == "('detpre_demo_report',)" and o["TEST.PLATEAU.PATIENCE"] == "2"
        assert o["SOLVER.MAX_ITER"] == ("800" if out.startswith("labels60/finetune/random_init_800_it") else "500")
    rows = {r["init"]: r for r in res["rows"]}
    assert list(rows) == ["random init", "random init 800 it", "soco", "jigsaw"]
    assert res["rows"][2]["pretrain"]["out"] == str(tmp_path / "shared" / "soco" / "pretrain")  # shared pretraining
    assert res["plateau"]["select"] == "detpre_demo_select"

    soco = rows["soco"]["plateau"]
    assert soco["iters_to_plateau"]["values"] == [300, 300]
    assert soco["iters_to_plateau"]["vs_random"]["mean"] == pytest.approx(50.0)  # (0 + 100) / 2
    assert soco["iters_to_random_plateau"]["values"] == [200, 100]
    assert soco["iters_saved"]["values"] == [100, 100] and soco["iters_saved"]["mean"] == 100
    assert soco["select_best"]["values"] == [4.0, 3.1] and soco["finetune_s_per_iter"]["mean"] == 0.5
    assert rows["soco"]["summary"]["box AP"]["vs_random"]["mean"] == pytest.approx(2.0)  # plateau AP, report split
    jig = rows["jigsaw"]["plateau"]
    assert jig["iters_to_random_plateau"]["values"] == [None, 100] and jig["iters_to_random_plateau"]["n"] == 1
    assert jig["iters_saved"]["values"] == [None, 100]
    assert jig["iters_to_plateau"]["values"] == [200, 100]
    assert jig["iters_to_plateau"]["vs_control"]["mean"] == pytest.approx(-100.0)  # (200 - 300 + 100 - 200) / 2
    assert rows["jigsaw"]["summary"]["box AP"]["vs_control"]["mean"] == pytest.approx(-0.5)
    rnd = rows["random init"]["plateau"]
    assert rnd["iters_saved"]["values"] == [0, 0] and "vs_random" not in rnd["iters_to_plateau"]
    assert rnd["iters_trained"]["values"] == [500, 400]


def test_the_converged_table_and_plot_from_a_made_up_result(tmp_path, faked_transfer):
    transfer, _ = faked_transfer
    res = _result(tmp_path, transfer)
    settings = converged_settings()
    settings["budgets"] = {"60": 500}
    result = {"settings": json.loads(json.dumps(settings)), "seeds": [0, 1], "budgets": {"60": res},
              "data": {"num_select": 200, "num_report": 500}}
    table = converged_table(result)
    assert "### 60 labeled images (cap 500 iterations)" in table
    assert "detpre_demo_select (200 images)" in table and "detpre_demo_report (500 images)" in table
    line = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in table.splitlines()
            if ln.startswith("| ") and not ln.startswith("| init")}
    headers = [c.strip() for c in next(ln for ln in table.splitlines() if ln.startswith("| init")).split("|")[2:-1]]
    soco = dict(zip(headers, line["soco"]))
    assert soco["pretrain s"] == "150" and soco["img/s"] == "16.0"
    assert soco["plateau box AP"] == "12.50 ± 0.71" and soco["Δ vs random [seeds]"].startswith("+2.00 [")
    assert soco["it to plateau"] == "300 ± 0" and soco["Δ it vs random [seeds]"].startswith("+50 [")
    assert soco["it to random's plateau AP"] == "150 ± 71"
    assert soco["fine-tuning it saved"] == "+100 ± 0" and soco["fine-tuning s saved"] == "+50s"
    assert soco["Δ vs same-total control"] == "-"
    jig = dict(zip(headers, line["jigsaw"]))
    assert jig["it to random's plateau AP"] == "100 (1/2 seeds)" and jig["Δ vs same-total control"].startswith("-0.50")
    rnd = dict(zip(headers, line["random init"]))
    assert rnd["pretrain s"] == "-" and rnd["Δ vs random [seeds]"] == "-" and rnd["it trained"] == "450 ± 71"

    path = plot_plateau_curves(result, str(tmp_path / "curves.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_the_expected_time_grows_with_seeds_and_the_machine():
    s = converged_settings()
    one, three = expected_seconds(s, [0]), expected_seconds(s, [0, 1, 2])
    assert 3600 < one < three < 3.2 * one and expected_seconds(s, [0, 1, 2], speed=2.0) == pytest.approx(2 * three)


def test_a_plateau_runs_record_and_one_killed_in_its_final_evaluation(tmp_path, monkeypatch):
    """finetune() of a finished plateau run returns plateau.json's report evaluation and history;
    a run killed during that evaluation gets model_final.pth evaluated and the record written."""
    from detpre.jobs import pipeline, runner

    out = tmp_path / "run"
    out.mkdir()
    torch.save({"model": {"w": torch.zeros(1)}, "iteration": 299}, out / "model_final.pth")
    hist = _h((100, 1.0), (200, 2.0), (300, 1.5), (400, 1.0))
    plateau = {"dataset": "s", "metric": "bbox/AP", "period": 100, "patience": 2, "min_delta": 0.0, "max_iter": 1000,
               "history": hist, "best": hist[1], "stopped_at": 400, "final": None, "final_dataset": ["r"]}
    (out / "plateau.json").write_text(json.dumps(plateau))
    (out / "metrics.json").write_text("\n".join(json.dumps({"iteration": i, "time": 0.25 + i / 1000})
                                                for i in range(3)) + "\n")
    evaluated = []
    monkeypatch.setattr(pipeline, "train", lambda *a, **k: None)  # finished before
    monkeypatch.setattr(runner, "evaluate_weights", lambda cfg, w: evaluated.append((cfg.OUTPUT_DIR, w)) or
                        {"bbox/AP": 7.0, "segm/AP": 6.0})
    opts = ["TEST.PLATEAU.ENABLED", "True", "TEST.PLATEAU.DATASET", "s", "DATASETS.TEST", "('r',)"]
    rec, sec = pipeline.finetune(FINETUNE, str(out), None, 0, opts)
    assert sec is None and rec["bbox/AP"] == 7.0 and rec["segm/AP"] == 6.0
    assert evaluated == [(str(out), str(out / "model_final.pth"))]
    assert rec["plateau"]["best"] == hist[1] and rec["plateau"]["iterations"] == 400
    assert rec["plateau"]["s_per_iter"] == pytest.approx(0.251) and rec["plateau"]["history"] == hist
    assert json.loads((out / "plateau.json").read_text())["final"] == {"bbox/AP": 7.0, "segm/AP": 6.0}
    again, _ = pipeline.finetune(FINETUNE, str(out), None, 0, opts)  # now read, not evaluated
    assert again == rec and len(evaluated) == 1


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_demo_selection_and_report_splits_share_no_image_and_budgets_are_the_first_images(tmp_path):
    from detpre.data.datasets import DEMO_NAMES, ensure_demo, generate_demo_dataset, register_demo
    from detpre.data.datasets.demo import demo_extra_names
    from detpre.data.datasets.demo_gen import read_demo_marker

    root = generate_demo_dataset(str(tmp_path / "conv"), num_train=8, num_val=2, num_unlabeled=5, num_select=6,
                                 num_report=7, train_subsets=(3,))
    images = {s: {_digest(os.path.join(root, "images", s, f)) for f in os.listdir(os.path.join(root, "images", s))}
              for s in ("train", "val", "unlabeled", "select", "report")}
    assert {s: len(v) for s, v in images.items()} == {"train": 8, "val": 2, "unlabeled": 5, "select": 6, "report": 7}
    for a in images:
        for b in images:
            assert a == b or not images[a] & images[b], (a, b)  # no image in two splits
    marker = read_demo_marker(root)
    assert marker == {"version": 3, "seed": 0, "num_train": 8, "num_val": 2, "num_unlabeled": 5, "num_select": 6,
                      "num_report": 7, "train_subsets": [3]}
    # a demo made without them has the marker it always had (the default demo's is not changed)
    plain = generate_demo_dataset(str(tmp_path / "plain"), num_train=2, num_val=1, num_unlabeled=1)
    assert sorted(read_demo_marker(plain)) == ["num_train", "num_unlabeled", "num_val", "seed", "version"]
    assert sorted(os.listdir(os.path.join(plain, "images"))) == ["train", "unlabeled", "val"]
    with pytest.raises(ValueError, match="train_subsets"):
        generate_demo_dataset(str(tmp_path / "bad"), num_train=4, train_subsets=(4,))

    assert ensure_demo(root) == root  # a demo of other sizes is used as it is, not an error
    extra = ("detpre_demo_select", "detpre_demo_report", "detpre_demo_train3")
    assert demo_extra_names(root) == extra and demo_extra_names(plain) == ()
    with names_freed((*DEMO_NAMES, *extra)):
        register_demo(root)
        train, first = DatasetCatalog.get("detpre_demo_train"), DatasetCatalog.get("detpre_demo_train3")
        assert [d["file_name"] for d in first] == [d["file_name"] for d in train[:3]]
        assert [d["annotations"] for d in first] == [d["annotations"] for d in train[:3]]
        select, report = DatasetCatalog.get("detpre_demo_select"), DatasetCatalog.get("detpre_demo_report")
        assert len(select) == 6 and len(report) == 7 and all(d["annotations"] for d in select + report)
        assert not {d["file_name"] for d in select} & {d["file_name"] for d in report}


def test_the_comparisons_pretrainings_label_free_shared_labeled_per_budget(tmp_path):
    from detpre.jobs.converged import _finetune_opts, _methods

    s = converged_settings()
    for budget, train in ((60, "('detpre_demo_train60',)"), (600, "('detpre_demo_train',)")):
        ms = {m.name: m for m in _methods(s, "ROOT", budget, "OUT")}
        assert list(ms) == ["soco", "jigsaw", "fastmoco", "agnostic"]
        assert ms["soco"].pretrain_dir == os.path.join("OUT", "pretrain", "soco")
        assert ms["soco"].detector == "backbone_fpn"
        assert ms["fastmoco"].pretrain_dir == os.path.join("OUT", "pretrain", "fastmoco")
        for name in ("jigsaw", "agnostic"):  # on the budget's labeled images: one each
            o = dict(zip(ms[name].opts[::2], ms[name].opts[1::2]))
            assert ms[name].pretrain_dir is None and o["DATASETS.TRAIN"] == train and o["DATASETS.DEMO_ROOT"] == "ROOT"
        assert "DATASETS.TRAIN" not in ms["soco"].opts
        o = dict(zip(_finetune_opts(s, "ROOT", budget)[::2], _finetune_opts(s, "ROOT", budget)[1::2]))
        assert o["DATASETS.TRAIN"] == train and o["SOLVER.MAX_ITER"] == str(s["budgets"][budget])
    assert list(converged_settings(smoke=True)["methods"]) == ["soco", "agnostic"]
