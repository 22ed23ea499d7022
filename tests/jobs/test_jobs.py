"""The job runner behind the demo, the transfer benchmark and self-training rounds."""
import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from _catalog import names_freed

from detpre.config import get_detpre_cfg
from detpre.jobs import REPO_ROOT, final_metrics, is_finished, mean_std, paired_difference, repo_path
from detpre.jobs.pipeline import prerequisite_opts
from detpre.jobs.report import margin_sentence, transfer_table
from detpre.jobs.runner import run_logged
from detpre.jobs.transfer import schedule_opts


def test_schedule_is_scaled_to_the_iteration_budget():
    cfg = get_detpre_cfg()
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS = 1000, (600, 900), 100
    opts = dict(zip(*[iter(schedule_opts(cfg, 250))] * 2))
    assert opts == {"SOLVER.MAX_ITER": "250", "SOLVER.STEPS": "(150, 225)",
                    "SOLVER.WARMUP_ITERS": "25", "SOLVER.CHECKPOINT_PERIOD": "250"}
    cfg.merge_from_list(schedule_opts(cfg, 3))  # the overrides merge; tiny budgets stay valid
    assert cfg.SOLVER.MAX_ITER == 3 and all(0 < s < 3 for s in cfg.SOLVER.STEPS)
    assert cfg.SOLVER.WARMUP_ITERS <= 1


def test_precomputed_inputs_go_under_the_jobs_output_dir(tmp_path):
    """A job's proposals and Jigsaw sample file live in its own output dir: one extracted from other
    data (another demo data version, another --output-dir) is never read."""
    out = str(tmp_path / "job")
    soco = dict(zip(*[iter(prerequisite_opts("configs/demo/soco_R18_FPN_tiny.yaml", out))] * 2))
    proposals = os.path.join(out, "proposals", "detpre_demo_unlabeled.pkl")
    assert soco == {"DATASETS.PROPOSAL_FILES_TRAIN": str((proposals,))}
    jig = dict(zip(*[iter(prerequisite_opts("configs/demo/jigsaw_R18_tiny.yaml", out))] * 2))
    samples = os.path.join(out, "jigsaw", "samples_detpre_demo_train.json")
    assert jig == {"DATASETS.JIGSAW_SAMPLES": samples}
    assert prerequisite_opts("configs/demo/mocov3_R18_tiny.yaml", out) == []


def test_final_metrics_is_the_last_evaluation(tmp_path):
    recs = [{"iteration": 19, "time": 0.5}, {"iteration": 59, "bbox/AP": 1.0},
            {"iteration": 99, "bbox/AP": 12.5, "segm/AP": 10.0}, {"iteration": 99, "time": 0.4}]
    (tmp_path / "metrics.json").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    assert final_metrics(str(tmp_path))["bbox/AP"] == 12.5
    assert final_metrics(str(tmp_path / "none")) == {}


def test_paired_difference_by_hand():
    a, b = [6.0, 7.0, 8.0], [4.0, 4.0, 4.0]  # d = 2, 3, 4: mean 3, sd 1
    d = paired_difference(a, b)
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, df=2) * sd / sqrt(n) = 2.484
    assert d["mean"] == pytest.approx(3.0) and d["std"] == pytest.approx(1.0)
    assert (d["low"], d["high"]) == (pytest.approx(3 - half), pytest.approx(3 + half))
    assert d["excludes_zero"] and d["n"] == 3
    # d = 1, 2, 3: mean 2 but the interval [-0.48, 4.48] covers 0
    assert not paired_difference([5.0, 6.0, 7.0], [4.0, 4.0, 4.0])["excludes_zero"]
    assert mean_std([2.0]) == (2.0, 0.0)
    with pytest.raises(ValueError, match="pair them by seed"):
        paired_difference([1.0], [1.0, 2.0])


def test_finished_means_a_loadable_final_checkpoint(tmp_path):
    assert not is_finished(str(tmp_path))
    (tmp_path / "model_final.pth").write_bytes(b"")  # a kill during the final save
    assert not is_finished(str(tmp_path))
    (tmp_path / "model_final.pth").write_bytes(b"\x80\x04truncated")
    assert not is_finished(str(tmp_path))
    torch.save({"model": {}}, tmp_path / "model_final.pth")
    assert is_finished(str(tmp_path))


def test_configs_and_tools_are_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert repo_path("configs/demo/soco_R18_FPN_tiny.yaml") == str(REPO_ROOT / "configs/demo/soco_R18_FPN_tiny.yaml")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mine.yaml").write_text("")
    assert repo_path("configs/mine.yaml") == "configs/mine.yaml"  # the user's own file wins


def test_run_logged_logs_and_reports_failures(tmp_path, capsys):
    log = tmp_path / "log.txt"
    sec = run_logged([sys.executable, "-c", "print('eta: 0:00:01  iter: 19  total_loss: 1.5')"],
                     str(log), "unit")
    assert sec >= 0 and "iter: 19" in log.read_text()
    with pytest.raises(RuntimeError, match="exit 3.*last lines"):
        run_logged([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], str(log), "unit")
    assert "[unit] $" in capsys.readouterr().out


def _row(name, aps, cost=None):

    runs = [{"bbox/AP": a, "bbox/AP50": 2 * a, "segm/AP": a / 2} for a in aps]
    return {"init": name, "pretrain": cost, "probe": {"knn_top1": 20.0, "linear_top1": 30.0},
            "finetune": runs, "summary": None, "_runs": runs}


def test_table_and_margin_sentence():
    from detpre.jobs.transfer import _summary

    rows = [_row("random init", [1.0, 2.0, 3.0]),
            _row("soco", [3.0, 4.5, 5.0], {"train_s": 100.0, "iters": 50, "images_per_s": 4.0})]
    for r in rows:
        r["summary"] = _summary(r["_runs"], rows[0]["_runs"])
    result = {"rows": rows, "seeds": [0, 1, 2]}
    table = transfer_table(result)
    assert "2.00 ± 1.00" in table and "+2.17" in table and "*" in table
    assert "better than random init beyond the seed noise" in margin_sentence(result)
    # with the evaluation images' sampling counted, the verdict follows that (wider) interval
    rows[1]["summary"]["box AP"]["vs_random_images"] = {"mean": 2.17, "low": -0.5, "high": 4.8, "n": 3,
                                                         "num_images": 300, "excludes_zero": False}
    assert "+2.17 [-0.50, +4.80]" in transfer_table(result) and "seeds + images" in transfer_table(result)
    line = margin_sentence(result)
    assert "[-0.50, +4.80] counting the sampling of the 300 evaluation images too" in line
    assert "not distinguishable from random init" in line
    # mask AP (segm/AP = AP / 2 here): its own line and its own seeds + images column
    mask = [ln for ln in line.splitlines() if "mask AP" in ln]
    assert len(mask) == 1 and "mask AP +1.08 over random init" in mask[0]
    rows[1]["summary"]["mask AP"]["vs_random_images"] = {"mean": 1.08, "low": 0.2, "high": 1.9, "n": 3,
                                                          "num_images": 300, "excludes_zero": True}
    assert "+1.08 [+0.20, +1.90] *" in transfer_table(result)
    assert "better than random init beyond the noise of seeds and evaluation images" in margin_sentence(result)
    # a detector without masks (Faster R-CNN): no mask AP line
    for r in rows:
        for run in r["_runs"]:
            run.pop("segm/AP")
        r["summary"] = _summary(r["_runs"], rows[0]["_runs"])
    assert "mask AP" not in margin_sentence(result) and "box AP" in margin_sentence(result)


def test_every_tool_answers_help_from_outside_the_repository(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)

    def help_of(tool):
        return tool.name, subprocess.run([sys.executable, str(tool), "--help"], cwd=tmp_path, env=env,
                                         capture_output=True, text=True, timeout=120)

    # a tool's --help is mostly importing torch and detectron2: several at once
    with ThreadPoolExecutor(4) as pool:
        answers = dict(pool.map(help_of, sorted((REPO_ROOT / "tools").glob("*.py"))))
    failed = {name: (p.stdout + p.stderr)[-300:] for name, p in answers.items()
              if p.returncode != 0 or "usage" not in p.stdout.lower()}
    assert len(answers) > 10 and not failed, failed


def test_run_graph_runs_each_task_after_its_deps():
    import threading
    import time

    from detpre.jobs.runner import run_graph

    order, lock = [], threading.Lock()

    def task(name, value, delay=0.0):
        def fn(*deps):
            time.sleep(delay)
            with lock:
                order.append(name)
            return value + sum(deps)
        return fn

    tasks = {"pre": (task("pre", 10, 0.2), ()), "a": (task("a", 1), ()),
             "b": (task("b", 2), ("pre",)), "c": (task("c", 3), ("b", "a"))}
    out = run_graph(tasks, jobs=2)
    assert list(out) == ["pre", "a", "b", "c"] and out == {"pre": 10, "a": 1, "b": 12, "c": 16}
    assert order.index("a") < order.index("pre") < order.index("b") < order.index("c")  # a ran meanwhile

    def boom():
        raise RuntimeError("step failed")
    with pytest.raises(RuntimeError, match="step failed"):
        run_graph({"x": (boom, ()), "y": (task("y", 0), ("x",))}, jobs=2)
    with pytest.raises(ValueError, match="unknown tasks"):
        run_graph({"z": (task("z", 0), ("missing",))})


def test_run_transfer_pairs_seeds_and_keeps_one_export_per_transfer_path(tmp_path, monkeypatch):
    """The graph of the transfer benchmark with its trainings faked: every init is fine-tuned with
    every seed from its own export, a method's export and fine-tuning runs are named by what it
    transfers (a finished run for another detector is never reused), the margin is paired."""
    from detpre.jobs import transfer

    calls = {"export": [], "finetune": []}
    monkeypatch.setattr(transfer, "ensure_prerequisites", lambda *a, **k: None)
    monkeypatch.setattr(transfer, "prerequisite_opts", lambda *a, **k: [])
    monkeypatch.setattr(transfer, "pretrain", lambda config, out, *a, **k: {"train_s": 1.0, "iters": 1,
                                                                             "images_per_s": 1.0})

    def export(checkpoint, path, config, detector):
        calls["export"].append((os.path.relpath(path, tmp_path), detector))
        return path, None

    def finetune(config, out, weights, seed, opts, *a, **k):
        calls["finetune"].append((os.path.relpath(out, tmp_path), weights and os.path.relpath(weights, tmp_path)))
        iters = dict(zip(opts[::2], opts[1::2])).get("SOLVER.MAX_ITER", "500")
        calls.setdefault("iters", {})[os.path.relpath(out, tmp_path)] = iters
        # every pretrained init +0.5 on its seed, 300 more iterations +0.25
        ap = 1.0 + seed + (0.5 if weights else 0.0) + (0.25 if iters == "800" else 0.0)
        return {"bbox/AP": ap, "bbox/AP50": ap, "segm/AP": ap}, 1.0

    monkeypatch.setattr(transfer, "export", export)
    monkeypatch.setattr(transfer, "finetune", finetune)
    monkeypatch.setattr(transfer, "probe", lambda *a, **k: {"knn_top1": 1.0, "linear_top1": 1.0})
    methods = [transfer.Method("soco", "configs/demo/soco_R18_FPN_tiny.yaml", detector="backbone_fpn"),
               transfer.Method("jigsaw", "configs/demo/jigsaw_R18_tiny.yaml")]
    res = transfer.run_transfer(methods, "configs/demo/mask_rcnn_R18_FPN_tiny.yaml", str(tmp_path), seeds=(0, 1),
                                jobs=1)
    assert sorted(calls["export"]) == [("jigsaw/export_mask_rcnn.pkl", "mask_rcnn"),
                                       ("soco/export_backbone_fpn.pkl", "backbone_fpn")]
    # Jigsaw cuts its objects out of detpre_demo_train, which fine-tuning trains on: its control is
    # random init fine-tuned its 300 pretraining + the config's 500 iterations; SoCo (unlabeled) has none
    assert sorted(calls["finetune"]) == [
        ("finetune/jigsaw/seed0", "jigsaw/export_mask_rcnn.pkl"),
        ("finetune/jigsaw/seed1", "jigsaw/export_mask_rcnn.pkl"),
        ("finetune/random_init/seed0", None), ("finetune/random_init/seed1", None),
        ("finetune/random_init_800_it/seed0", None), ("finetune/random_init_800_it/seed1", None),
        ("finetune/soco_backbone_fpn/seed0", "soco/export_backbone_fpn.pkl"),
        ("finetune/soco_backbone_fpn/seed1", "soco/export_backbone_fpn.pkl")]
    assert calls["iters"]["finetune/random_init_800_it/seed0"] == "800"
    assert calls["iters"]["finetune/jigsaw/seed0"] == "500"
    rows = {r["init"]: r for r in res["rows"]}
    assert [r["init"] for r in res["rows"]] == ["random init", "random init 800 it", "soco", "jigsaw"]
    d = rows["soco"]["summary"]["box AP"]["vs_random"]
    assert d["mean"] == pytest.approx(0.5) and d["low"] == pytest.approx(0.5)  # paired: no spread left
    assert "control" not in rows["soco"] and "vs_control" not in rows["soco"]["summary"]["box AP"]
    assert rows["jigsaw"]["control"] == "random init 800 it"
    assert rows["random init 800 it"]["control_for"] == ["jigsaw"]
    assert rows["jigsaw"]["summary"]["box AP"]["vs_control"]["mean"] == pytest.approx(0.25)
    assert rows["random init 800 it"]["summary"]["box AP"]["vs_random"]["mean"] == pytest.approx(0.25)
    assert os.path.isfile(tmp_path / "benchmark_transfer.json")


@pytest.mark.parametrize("jobs", [1, 2])
def test_run_transfer_computes_proposals_before_pretraining_and_on_one_core_when_shared(tmp_path, monkeypatch, jobs):
    """With two runs at once, a method's proposals are computed in its pretraining task with one
    worker, so random init's first fine-tuning does not wait for them; with one, on every core
    before any training. Either way they exist before the method pretrains."""
    import threading

    from detpre.jobs import transfer

    events, lock = [], threading.Lock()

    def log(*e):
        with lock:
            events.append(e)

    monkeypatch.setattr(transfer, "prerequisite_opts", lambda *a, **k: [])
    monkeypatch.setattr(transfer, "ensure_prerequisites",
                        lambda config, opts, label, *a, **k: log("proposals", label, k.get("workers")))
    monkeypatch.setattr(transfer, "pretrain", lambda config, out, opts, label, *a, **k: log("pretrain", label)
                        or {"train_s": 1.0, "iters": 1, "images_per_s": 1.0})
    monkeypatch.setattr(transfer, "export", lambda checkpoint, path, *a: (path, None))
    monkeypatch.setattr(transfer, "finetune", lambda config, out, weights, seed, opts, label, *a, **k:
                        log("finetune", label) or ({"bbox/AP": 1.0, "bbox/AP50": 1.0, "segm/AP": 1.0}, 1.0))
    monkeypatch.setattr(transfer, "probe", lambda *a, **k: {"knn_top1": 1.0, "linear_top1": 1.0})
    methods = [transfer.Method("soco", "configs/demo/soco_R18_FPN_tiny.yaml", detector="backbone_fpn")]
    transfer.run_transfer(methods, "configs/demo/mask_rcnn_R18_FPN_tiny.yaml", str(tmp_path), seeds=(0,), jobs=jobs)
    proposals = [e for e in events if e[0] == "proposals"]
    assert proposals == [("proposals", "soco", 1 if jobs > 1 else None)]
    assert events.index(proposals[0]) < events.index(("pretrain", "soco pretraining"))
    if jobs == 1:
        assert events[0] == proposals[0]


@pytest.fixture
def demo_names_freed():
    """The run registers the demo names (at a tmp root) and two of its own: all put back after."""
    from detpre.data.datasets import DEMO_NAMES
    from detpre.data.datasets.reid import REID_DEMO_NAMES

    with names_freed((*DEMO_NAMES, *REID_DEMO_NAMES), extra=("jobs_eval_train", "jobs_eval_val")):
        yield


def test_a_run_killed_during_its_final_evaluation_is_evaluated_again(tmp_path, demo_names_freed):
    """model_final.pth is written before the end-of-training evaluation: a kill in between leaves
    a finished run without AP. final_evaluation evaluates model_final.pth and gives the record the
    trainer wrote (here computed first by an uninterrupted run, then removed)."""
    from detpre.data.datasets import generate_demo_dataset
    from detpre.engine.trainer import Trainer
    from detpre.jobs.runner import final_evaluation

    root = generate_demo_dataset(str(tmp_path / "demo"), seed=2, num_train=4, num_val=3, num_unlabeled=1)
    coco = str([[f"jobs_eval_{s}", os.path.join(root, "annotations", f"instances_{s}.json"),
                 os.path.join(root, "images", s)] for s in ("train", "val")])
    out = str(tmp_path / "run")
    opts = ["DATASETS.COCO", coco, "DATASETS.TRAIN", "('jobs_eval_train',)", "DATASETS.TEST", "('jobs_eval_val',)",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "()",
            "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.DETECTIONS_PER_IMAGE", "20"]
    config = "configs/demo/mask_rcnn_R18_FPN_tiny.yaml"
    from detpre.data.datasets import register_from_config

    opts += ["DATASETS.DEMO_ROOT", str(tmp_path / "demo_default"), "DATASETS.REID_DEMO_ROOT",
             str(tmp_path / "reid_default")]
    cfg = get_detpre_cfg(repo_path(config), opts + ["OUTPUT_DIR", out])
    register_from_config(cfg)
    trainer = Trainer(cfg)
    trainer.train()
    written = final_metrics(out)
    assert "bbox/AP" in written and "segm/AP" in written and is_finished(out)

    path = os.path.join(out, "metrics.json")
    kept = [line for line in open(path) if "bbox/AP" not in line]
    periodic = json.dumps({"iteration": 0, "bbox/AP": 99.0}) + "\n"  # a TEST.EVAL_PERIOD evaluation
    kept.append(periodic)
    with open(path, "w") as f:
        f.writelines(kept)  # as if killed during the final evaluation
    assert final_metrics(out)["bbox/AP"] == 99.0 and is_finished(out)
    again = final_evaluation(config, out, opts)
    for k in ("bbox/AP", "bbox/AP50", "segm/AP"):
        assert again[k] == pytest.approx(written[k], abs=1e-6, nan_ok=True)
    assert final_metrics(out)["bbox/AP"] == again["bbox/AP"]  # appended: the next call just reads it
    assert len(open(path).readlines()) == len(kept) + 1
    assert final_evaluation(config, str(tmp_path / "never_ran"), opts) == {}


def test_demo_output_is_tied_to_the_data_and_budget_it_was_made_with(tmp_path):
    """A demo resumed over results of another demo data version, or of another fine-tuning budget,
    must not print them as today's: its finished runs would be skipped, not redone."""
    from detpre.errors import DetpreError
    from detpre.jobs.demo import check_output_data

    v3 = {"version": 3, "seed": 0, "num_train": 60, "num_val": 300, "num_unlabeled": 300}
    stamp = {"data": v3, "finetune_opts": ["SOLVER.MAX_ITER", "160"]}
    out = str(tmp_path / "demo")
    check_output_data(out, stamp)  # a new output dir records them
    check_output_data(out, stamp)  # and accepts them again
    with open(os.path.join(out, "demo_data.json")) as f:
        assert json.load(f) == stamp
    with pytest.raises(DetpreError, match=r"data .*'num_val': 300.*not .*'num_val': 50.*rm -rf"):
        check_output_data(out, {**stamp, "data": {**v3, "version": 2, "num_val": 50}})
    with pytest.raises(DetpreError, match=r"finetune_opts .*'160'.*not .*'600'"):
        check_output_data(out, {**stamp, "finetune_opts": ["SOLVER.MAX_ITER", "600"]})
    with open(os.path.join(out, "demo_data.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(DetpreError, match="delete that directory"):
        check_output_data(out, stamp)
    legacy = tmp_path / "legacy"  # results from before the stamp existed
    (legacy / "finetune").mkdir(parents=True)
    with pytest.raises(DetpreError, match="before the demo recorded"):
        check_output_data(str(legacy), stamp)
    other = tmp_path / "other"  # e.g. the self-training benchmark's outputs only: not the demo's
    (other / "benchmark_self_training").mkdir(parents=True)
    check_output_data(str(other), stamp)


def test_demo_estimate_scales_with_the_machines_speed():
    from detpre.jobs.demo import expected_seconds

    base = expected_seconds(["agnostic"], [0, 1, 2])
    assert base > 0
    assert math.isclose(expected_seconds(["agnostic"], [0, 1, 2], speed=2.6), 2.6 * base)
    # one more method costs its pretraining and 3 more fine-tuning runs
    assert expected_seconds(["agnostic", "soco"], [0, 1, 2]) > base


def test_cpu_speed_step_is_timed_in_one_thread_and_restores_the_thread_count():
    from detpre.jobs.cpu_speed import step_seconds

    before = torch.get_num_threads()
    s = step_seconds("configs/demo/mask_rcnn_R18_FPN_tiny.yaml", reps=1, batch=(1, 3, 64, 64))
    assert 0 < s < 60 and math.isfinite(s)
    assert torch.get_num_threads() == before
