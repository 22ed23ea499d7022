"""The step timer drives the real trainer as detectron2's loop does; a method's declared pieces."""
import pytest
import torch
from detectron2.engine import HookBase
from test_soco_resume import _cfg, _dataset

from detpre.benchmarks import DATA, STEP, StepTimer
from detpre.engine import Trainer
from detpre.registry import HOOK_REGISTRY

EVENTS = []


@HOOK_REGISTRY.register()
class _OrderHook(HookBase):
    """Records every call with the trainer's and the storage's iteration and the current LR."""

    def __init__(self, cfg, trainer):
        pass

    def _log(self, stage):
        storage_iter = self.trainer.storage.iter if stage != "before_train" else None
        EVENTS.append((stage, self.trainer.iter, storage_iter,
                       self.trainer.optimizer.param_groups[0]["lr"]))

    def before_train(self):
        self._log("before_train")

    def before_step(self):
        self._log("before_step")

    def after_step(self):
        self._log("after_step")

    def after_train(self):
        self._log("after_train")


def _soco_cfg(repo_root, tmp_path, name):
    cfg = _cfg(repo_root, _dataset(tmp_path), tmp_path / name)
    cfg.merge_from_list(["SOLVER.MAX_ITER", 3, "SOLVER.WARMUP_ITERS", 2, "SOLVER.STEPS", (2,),
                         "SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR", "DATALOADER.NUM_WORKERS", 0,
                         "DATALOADER.MAPPER", "", "DETPRE.HOOKS", ["_OrderHook"]])
    return cfg


def _trainer(cfg):
    torch.manual_seed(0)
    return Trainer(cfg)


def test_timed_steps_are_the_plain_training(repo_root, tmp_path):
    """Same hook calls in the same order, same LR schedule, same weights as ``train()``; and the
    SoCo config without DATALOADER.MAPPER / DETPRE.HOOKS gets its views and target updates."""
    plain = _trainer(_soco_cfg(repo_root, tmp_path, "plain"))
    initial_target = {k: v.clone() for k, v in plain.model.state_dict().items() if k.startswith("target.")}
    EVENTS.clear()
    plain.train()
    plain_events = list(EVENTS)

    timed = _trainer(_soco_cfg(repo_root, tmp_path, "timed"))
    EVENTS.clear()
    rows = StepTimer(timed).run(3)
    assert EVENTS == plain_events
    assert [e[:3] for e in EVENTS[1:-1]] == [(s, i, i) for i in range(3) for s in ("before_step", "after_step")]
    assert len({e[3] for e in EVENTS}) == 3  # warm-up, then the step at 2: the scheduler stepped
    assert timed.optimizer.param_groups[0]["lr"] == plain.optimizer.param_groups[0]["lr"]
    assert timed.iter == plain.iter == 3
    ref = plain.model.state_dict()
    for k, v in timed.model.state_dict().items():
        assert torch.equal(v, ref[k]), k

    assert len(rows) == 3 and {DATA, STEP, "LRScheduler", "MomentumUpdate", "_OrderHook"} <= set(rows[0]["parts"])
    assert all(v >= 0 for r in rows for v in r["parts"].values())
    assert rows[0]["total_loss"] > 0
    # MomentumUpdate was added from SoCo's declaration: the target moved
    assert any(not torch.equal(ref[k], v) for k, v in initial_target.items())
    # the timer leaves the hooks' own methods in place
    assert all("before_step" not in vars(h) for h in timed._hooks)


def test_a_conflicting_mapper_names_the_required_one():
    from detpre.config import get_detpre_cfg
    from detpre.data.mappers import build_mapper
    from detpre.errors import DetpreError
    from detpre.method import declared_hooks, declared_mapper

    cfg = get_detpre_cfg()
    cfg.MODEL.META_ARCHITECTURE = "SoCo"
    assert declared_mapper(cfg) == "SoCoMapper" and declared_hooks(cfg) == ["MomentumUpdate"]
    cfg.DATALOADER.MAPPER = "TwoViewMapper"
    with pytest.raises(DetpreError, match="SoCoMapper"):
        build_mapper(cfg)
    cfg.MODEL.META_ARCHITECTURE = "JigsawPretrain"
    cfg.DATALOADER.MAPPER, cfg.DETPRE.HOOKS = "", ["PeriodicHook"]
    assert declared_mapper(cfg) == "JigsawMapper" and declared_hooks(cfg) == ["PeriodicHook", "ERFRefresh"]
    cfg.MODEL.JIGSAW.MODE = "global"
    assert declared_hooks(cfg) == ["PeriodicHook"]
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"  # detectron2's: declares nothing
    assert declared_mapper(cfg) == "" and declared_hooks(cfg) == ["PeriodicHook"]


def test_the_student_trainer_is_picked_by_its_declaration():
    from detpre.config import get_detpre_cfg
    from detpre.engine.defaults import trainer_class
    from detpre.engine.self_training import SelfTrainingTrainer

    cfg = get_detpre_cfg()
    assert trainer_class(cfg) is Trainer
    cfg.MODEL.SELF_TRAINING.ENABLED = True
    assert trainer_class(cfg) is SelfTrainingTrainer
