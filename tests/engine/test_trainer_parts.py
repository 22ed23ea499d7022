"""The Trainer's config-driven parts: optimizer choice, extra hooks' place, evaluator lookup."""
import os

import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import HookBase, hooks

from detpre.config import get_detpre_cfg
from detpre.data.mappers import build_mapper
from detpre.evaluation import build_evaluator
from detpre.registry import HOOK_REGISTRY
from detpre.solver import LARS, build_optimizer


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.frozen = torch.nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_lars_groups_exclude_bias_and_norm_and_frozen():
    cfg = get_detpre_cfg()
    cfg.SOLVER.OPTIMIZER, cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.WEIGHT_DECAY_BIAS = "LARS", 1e-5, 0.0
    net = _Net()
    opt = build_optimizer(cfg, net)
    assert isinstance(opt, LARS)
    adapted, norm, bias = opt.param_groups
    assert [p.shape for p in adapted["params"]] == [net.conv.weight.shape]
    assert adapted["lars_adapt"] and adapted["weight_decay"] == 1e-5
    assert not norm["lars_adapt"] and norm["weight_decay"] == 0.0 and len(norm["params"]) == 2
    assert not bias["lars_adapt"] and bias["weight_decay"] == 0.0 and len(bias["params"]) == 1
    # conv bias, bn weight, bn bias; frozen params left out


def test_sgd_is_detectron2s_and_unknown_optimizer_fails():
    cfg = get_detpre_cfg()
    assert isinstance(build_optimizer(cfg, _Net()), torch.optim.SGD)
    cfg.SOLVER.OPTIMIZER = "Adagrad"
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_optimizer(cfg, _Net())


def test_unknown_mapper_and_missing_evaluator_have_clear_errors():
    cfg = get_detpre_cfg()
    cfg.DATALOADER.MAPPER = "NoSuchMapper"
    with pytest.raises(KeyError, match="DATALOADER.MAPPER"):
        build_mapper(cfg)
    MetadataCatalog.get("_test_no_evaluator")  # no evaluator_type
    with pytest.raises(NotImplementedError, match="_test_no_evaluator"):
        build_evaluator(cfg, "_test_no_evaluator", None)


@HOOK_REGISTRY.register()
class _RecordingHook(HookBase):
    def __init__(self, cfg, trainer):
        self.cfg = cfg


def test_extra_hooks_go_before_checkpointing(tmp_path):
    from detpre.engine import Trainer

    cfg = get_detpre_cfg()
    cfg.merge_from_file(os.path.join(os.path.dirname(__file__), "..", "..", "configs/demo/mask_rcnn_R18_FPN_tiny.yaml"))
    cfg.DETPRE.HOOKS = ["_RecordingHook"]
    cfg.OUTPUT_DIR = str(tmp_path)
    from detpre.data.datasets import register_demo

    register_demo()
    trainer = Trainer(cfg)
    kinds = [type(h) for h in trainer._hooks]
    assert kinds.index(_RecordingHook) < kinds.index(hooks.PeriodicCheckpointer)
    assert "detpre" in trainer.checkpointer.checkpointables


def test_timed_writer_writes_every_period_and_after_enough_seconds():
    from types import SimpleNamespace

    from detectron2.utils.events import EventWriter

    from detpre.engine.writer import TimedPeriodicWriter

    class Writer(EventWriter):
        writes = []

        def write(self):
            self.writes.append(trainer.iter)

        def close(self):
            pass

    now = [0.0]
    trainer = SimpleNamespace(iter=0, max_iter=100)
    w = TimedPeriodicWriter([Writer()], period=20, seconds=20.0, clock=lambda: now[0])
    w.trainer = trainer
    w.before_train()
    for it in range(45):
        trainer.iter = it
        now[0] += 3.0 if it < 30 else 0.1  # 3 s per iteration, then fast
        w.after_step()
    # at 3 s per iteration every 7th (>= 20 s since the last write) and the period's 19; once
    # iterations are fast, only the period (39)
    assert Writer.writes == [6, 13, 19, 26, 39]
