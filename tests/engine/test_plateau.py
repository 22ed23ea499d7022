"""
Fine-tuning to a plateau (TEST.PLATEAU, detpre.engine.plateau): the rule by hand; a tiny real run
stops early, finished (a loadable model_final.pth), with model_best.pth = the weights of its best
evaluation (= those a plain run has after as many iterations); a run killed and resumed ends with
the uninterrupted run's plateau.json and weights, and a resumed stopped run trains nothing.
"""
import json
import os

import pytest
import torch
from _catalog import names_freed

from detpre.checkpoint import is_finished
from detpre.config import get_detpre_cfg
from detpre.engine.plateau import PlateauStop, PlateauTrainer, plateau_decision, read_plateau
from detpre.engine.trainer import Trainer
from detpre.errors import DetpreError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs/demo/mask_rcnn_R18_FPN_tiny.yaml")
EXTRA = ("detpre_demo_select", "detpre_demo_report")


@pytest.mark.parametrize("values, patience, min_delta, expected", [
    ([1, 2, 3, 4], 2, 0.0, (3, None)),  # still rising
    ([1, 3, 2, 2], 2, 0.0, (1, 3)),  # two evaluations without a rise after the best
    ([1, 3, 3, 3], 2, 0.0, (1, 3)),  # equal is no rise; the first of equals is the best
    ([1, 3, 3.05, 2, 2], 3, 0.1, (2, 4)),  # 3.05 is the best but no rise of more than 0.1
    ([1, 3, 3.05, 3.2, 2, 2], 3, 0.1, (3, None)),  # 3.2 rises over 3.05 by more than 0.1: patience restarts
    ([None, float("nan"), 0.5, 0.4], 1, 0.0, (2, 3)),  # no value (nothing detected): no stop before a value
    ([None, None, None], 1, 0.0, (0, None)),
    ([5], 1, 0.0, (0, None)),
    ([], 3, 0.0, (None, None)),
    ([2, 1, 1, 1, 9], 3, 0.0, (0, 3)),  # stops before the late rise: the rule looks back only
])
def test_the_rule_by_hand(values, patience, min_delta, expected):
    assert plateau_decision(values, patience, min_delta) == expected


def test_the_rule_refuses_no_patience():
    with pytest.raises(ValueError):
        plateau_decision([1.0], 0)


@pytest.fixture
def demo(tmp_path):
    """A tiny demo with selection and report splits, registered as the demo (names put back after)."""
    from detpre.data.datasets import DEMO_NAMES, generate_demo_dataset
    from detpre.data.datasets.reid import REID_DEMO_NAMES

    root = generate_demo_dataset(str(tmp_path / "demo"), seed=2, num_train=4, num_val=0, num_unlabeled=0,
                                 num_select=3, num_report=3)
    with names_freed((*DEMO_NAMES, *EXTRA, *REID_DEMO_NAMES)):
        yield root


def _opts(root, out, max_iter, *extra):
    return ["DATASETS.DEMO_ROOT", root, "DATASETS.REID_DEMO_ROOT", os.path.join(root, "reid_unused"),
            "DATASETS.TRAIN", "('detpre_demo_train',)", "DATASETS.TEST", "('detpre_demo_report',)",
            "MODEL.MASK_ON", "False", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(max_iter), "SOLVER.WARMUP_ITERS", "0",
            "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.DETECTIONS_PER_IMAGE", "20",
            "TEST.PLATEAU.ENABLED", "True", "TEST.PLATEAU.DATASET", "detpre_demo_select",
            "TEST.PLATEAU.PERIOD", "2", "OUTPUT_DIR", out, *map(str, extra)]


def _cfg(opts):
    from detpre.data.datasets import register_from_config

    cfg = get_detpre_cfg(CONFIG, opts)
    register_from_config(cfg)
    return cfg


def _train(cfg, resume=False, seed=0, kill_after=None):
    """A run in this process (torch's RNG seeded as a fresh process's would not be: ``seed``);
    ``kill_after``: the run dies after that many iterations, as with SIGKILL (nothing saved then)."""
    from detectron2.engine import HookBase

    class Killed(BaseException):
        pass

    class KillAt(HookBase):
        def after_step(self):
            if self.trainer.iter + 1 == kill_after:
                raise Killed()

    torch.manual_seed(seed)
    trainer = (PlateauTrainer if cfg.TEST.PLATEAU.ENABLED else Trainer)(cfg)
    trainer.resume_or_load(resume=resume)
    if kill_after:
        trainer.register_hooks([KillAt()])
        with pytest.raises(Killed):
            trainer.train()
    else:
        trainer.train()
    return trainer


def _scripted(monkeypatch, by_iteration):
    """The hook's evaluations run for real, but the values it decides on are ``by_iteration``'s
    (the tiny runs' AP stays 0): a best after the first evaluation, then a plateau."""
    real = PlateauStop._evaluate

    def evaluate(self):
        real(self)
        return by_iteration[self.trainer.iter + 1]
    monkeypatch.setattr(PlateauStop, "_evaluate", evaluate)


def _model(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_hook_stops_early_and_keeps_the_best_weights(tmp_path, demo, monkeypatch):
    out = str(tmp_path / "run")
    _scripted(monkeypatch, {2: 0.5, 4: 2.0, 6: 1.0, 8: 1.5, 10: 9.0})
    trainer = _train(_cfg(_opts(demo, out, 40, "TEST.PLATEAU.PATIENCE", 2, "TEST.PLATEAU.MIN_DELTA", 0.0)))
    p = read_plateau(out)
    assert p["history"] == [{"iteration": 2, "value": 0.5}, {"iteration": 4, "value": 2.0},
                            {"iteration": 6, "value": 1.0}, {"iteration": 8, "value": 1.5}]
    assert p["stopped_at"] == 8 and p["best"] == {"iteration": 4, "value": 2.0}
    assert trainer.iter == 7 and trainer.max_iter == 8  # stopped after 8 of 40 iterations
    assert is_finished(out)  # a finished run: the job runners skip it
    final, kept = _model(os.path.join(out, "model_final.pth")), _model(os.path.join(out, "model_best.pth"))
    assert kept["iteration"] == 3 and final["iteration"] == 7
    assert _same(final["model"], kept["model"])  # model_final.pth = the best evaluation's weights
    assert final["trainer"]["hooks"]["PlateauStop"]["stopped_at"] == 8
    # the end-of-training evaluation scored those weights on the report split
    assert set(p["final"]) >= {"bbox/AP", "bbox/AP50"} and p["final_dataset"] == ["detpre_demo_report"]
    with open(os.path.join(out, "metrics.json")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    assert [r for r in records if "bbox/AP" in r][-1]["bbox/AP"] == pytest.approx(p["final"]["bbox/AP"], nan_ok=True)
    assert any("plateau/bbox/AP" in r for r in records)  # the evaluations in metrics.json too

    # a plain run of 4 iterations has the same weights: evaluating changes nothing in training,
    # and model_best.pth is the model of that evaluation, not the last one's
    ref = str(tmp_path / "plain")
    monkeypatch.undo()
    _train(_cfg(_opts(demo, ref, 4, "TEST.PLATEAU.ENABLED", "False")))
    assert _same(_model(os.path.join(ref, "model_final.pth"))["model"], kept["model"])


def test_a_real_plateau_stops_on_real_evaluations(tmp_path, demo):
    """Unscripted: the tiny runs' AP does not rise by 1000, so the third evaluation stops it."""
    out = str(tmp_path / "run")
    _train(_cfg(_opts(demo, out, 40, "TEST.PLATEAU.PATIENCE", 2, "TEST.PLATEAU.MIN_DELTA", 1000.0)))
    p = read_plateau(out)
    assert [h["iteration"] for h in p["history"]] == [2, 4, 6] and p["stopped_at"] == 6 and is_finished(out)
    best, _ = plateau_decision([h["value"] for h in p["history"]], 2, 1000.0)
    assert _model(os.path.join(out, "model_best.pth"))["iteration"] == p["history"][best]["iteration"] - 1


def test_a_killed_and_resumed_run_ends_as_the_uninterrupted_one(tmp_path, demo, monkeypatch):
    # best after 4 iterations, then no rise of 0.5 for two evaluations: stops after 8
    _scripted(monkeypatch, {2: 1.0, 4: 3.0, 6: 3.2, 8: 2.0, 10: 9.0, 12: 9.0, 14: 9.0})
    extra = ("TEST.PLATEAU.PATIENCE", 2, "TEST.PLATEAU.MIN_DELTA", 0.5)
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    _train(_cfg(_opts(demo, full, 14, *extra)))
    ref = read_plateau(full)
    assert ref["stopped_at"] == 8 and ref["best"] == {"iteration": 6, "value": 3.2}
    # killed after 7 iterations: the last checkpoint is model_best.pth of iteration 6; plateau.json has it
    _train(_cfg(_opts(demo, killed, 14, *extra)), kill_after=7)
    assert [h["iteration"] for h in read_plateau(killed)["history"]] == [2, 4, 6] and not is_finished(killed)
    assert open(os.path.join(killed, "last_checkpoint")).read() == "model_best.pth"
    _train(_cfg(_opts(demo, killed, 14, *extra)), resume=True, seed=123)  # another process's RNG state
    assert read_plateau(killed) == ref
    for name in ("model_best.pth", "model_final.pth"):
        assert _same(_model(os.path.join(full, name))["model"], _model(os.path.join(killed, name))["model"]), name

    # killed while model_best.pth of evaluation 6 was written: the last checkpoint is the periodic
    # one after 4 iterations (the best then), plateau.json is one evaluation on; the replay
    # evaluates 6 again
    again = str(tmp_path / "again")
    _train(_cfg(_opts(demo, again, 14, *extra, "SOLVER.CHECKPOINT_PERIOD", 4)), kill_after=7)
    os.remove(os.path.join(again, "model_best.pth"))
    with open(os.path.join(again, "last_checkpoint"), "w") as f:
        f.write("model_0000003.pth")
    _train(_cfg(_opts(demo, again, 14, *extra, "SOLVER.CHECKPOINT_PERIOD", 4)), resume=True, seed=7)
    assert read_plateau(again) == ref
    assert _same(_model(os.path.join(full, "model_final.pth"))["model"],
                 _model(os.path.join(again, "model_final.pth"))["model"])

    # --resume of a run that stopped at its plateau: nothing trains, the model stays the best one
    before = _model(os.path.join(full, "model_final.pth"))
    trainer = _train(_cfg(_opts(demo, full, 14, *extra)), resume=True)
    assert trainer.start_iter == 8
    assert _same(_model(os.path.join(full, "model_final.pth"))["model"], before["model"])
    assert read_plateau(full) == ref


def test_a_selection_split_that_is_trained_on_or_reported_is_refused(tmp_path, demo):
    out = str(tmp_path / "bad")
    for key, value in (("TEST.PLATEAU.DATASET", "detpre_demo_report"), ("TEST.PLATEAU.DATASET", "detpre_demo_train"),
                       ("TEST.PLATEAU.DATASET", "")):
        with pytest.raises(DetpreError, match="TEST.PLATEAU"):
            PlateauTrainer(_cfg(_opts(demo, out, 4, key, value)))
