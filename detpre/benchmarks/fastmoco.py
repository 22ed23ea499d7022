"""
Fast-MoCo vs MoCo v3, side by side in one process: the same backbone, batch and initial weights.
Each is a real trainer of its config on the ``StepTimer`` (so AMP, DDP, clipping, the LR schedule
and the momentum update run as in training); every iteration both take one step on the same
batch (the seeded stream, or the same synthetic views), in alternating order so drifting machine
load hits both alike. Returns seconds per iteration (data loading excluded), their ratio (the
paper: about 1.07), and the kNN / linear-probe accuracy of both backbones after the same
iterations.
"""
import logging
import tempfile

import numpy as np
import torch
from detectron2.data import DatasetCatalog

from detpre.data.datasets import register_from_config
from detpre.engine import Trainer
from detpre.engine.hooks import unwrap_model
from detpre.evaluation.backbone_probe import evaluate_backbone

from .pretrain import scratch_config
from .step_timer import DATA, StepTimer
from .table import markdown_table

__all__ = ["baseline_config", "compare", "format_table"]


def baseline_config(cfg):
    """MoCo v3: ``cfg`` with the combination off."""
    base = cfg.clone()
    base.defrost()
    base.MODEL.FASTMOCO.COMBINE = "off"
    return base


def _synthetic_batches(cfg, seed=0):
    """Random uint8 views of the configured size: timing without data loading or data sets."""
    rng = np.random.RandomState(seed)
    n, s = cfg.SOLVER.IMS_PER_BATCH, cfg.INPUT.TWO_VIEW.SIZE
    while True:
        yield [{"views": [torch.from_numpy(rng.randint(0, 256, (3, s, s), dtype=np.uint8))
                          for _ in range(2)]} for _ in range(n)]


class _SyntheticTrainer(Trainer):
    """The trainer on random views; no collapse watch (it reads the training set's images, and
    synthetic timing registers no data set)."""

    def __init__(self, cfg):
        cfg = cfg.clone()
        cfg.defrost()
        cfg.DETPRE.COLLAPSE.ENABLED = False
        super().__init__(cfg)

    @classmethod
    def build_train_loader(cls, cfg):
        return _synthetic_batches(cfg, max(cfg.SEED, 0))


class _Run:
    """One trainer on its timer; ``step()`` takes one training iteration."""

    def __init__(self, name, cfg, trainer_cls):
        self.name = name
        torch.manual_seed(max(cfg.SEED, 0))  # both runs start from the same weights
        self.trainer = trainer_cls(cfg)
        self.steps = StepTimer(self.trainer).steps(cfg.SOLVER.MAX_ITER)
        self.rows = []

    def step(self):
        self.rows.append(next(self.steps))

    def close(self):
        self.steps.close()  # after_train of every hook

    @property
    def backbone(self):
        return unwrap_model(self.trainer.model).backbone.bottom_up

    def result(self, warmup):
        t = np.array([sum(v for k, v in r["parts"].items() if k != DATA) for r in self.rows[warmup:]])
        return dict(method=self.name, s_per_iter=float(np.median(t)), s_per_iter_mean=float(t.mean()),
                    loss_first=self.rows[0]["total_loss"], loss_last=self.rows[-1]["total_loss"])


def compare(cfg, baseline_cfg=None, iters=20, warmup=3, train_dataset="detpre_demo_train",
            test_dataset="detpre_demo_val", crop_size=64, k=200, temperature=0.07, probe=True,
            synthetic=False):
    """
    Train Fast-MoCo (``cfg``) and MoCo v3 (``baseline_cfg``, default ``cfg`` with COMBINE off)
    for ``iters`` iterations on the same batches; the first ``warmup`` are not timed. Returns a
    list of result dicts (the random-init backbone first, as the probe's floor, when ``probe``).
    ``synthetic``: random views instead of ``cfg``'s train loader (timing only).
    """
    baseline_cfg = baseline_config(cfg) if baseline_cfg is None else baseline_cfg
    if iters <= warmup:
        raise ValueError(f"--iters {iters} must exceed --warmup {warmup}")
    if probe or not synthetic:
        register_from_config(cfg)
    trainer_cls = _SyntheticTrainer if synthetic else Trainer
    log = logging.getLogger(__name__)
    rows = []
    with tempfile.TemporaryDirectory(prefix="detpre_fastmoco_") as a, \
            tempfile.TemporaryDirectory(prefix="detpre_mocov3_") as b:
        runs = [_Run(f"Fast-MoCo ({cfg.MODEL.FASTMOCO.COMBINE})", scratch_config(cfg, a, iters), trainer_cls),
                _Run("MoCo v3", scratch_config(baseline_cfg, b, iters), trainer_cls)]
        if probe:
            probe = dict(train_dicts=DatasetCatalog.get(train_dataset), test_dicts=DatasetCatalog.get(test_dataset),
                         crop_size=crop_size, k=k, temperature=temperature)
            rows.append(dict(method="random init", **evaluate_backbone(cfg, "", backbone=runs[1].backbone, **probe)))
        try:
            for it in range(iters):
                for run in (runs if it % 2 == 0 else runs[::-1]):
                    run.step()
                if (it + 1) % 5 == 0 or it + 1 == iters:
                    log.info("iter %d: %s", it + 1, ", ".join(
                        f"{r.name} loss {r.rows[-1]['total_loss']:.3f}" for r in runs))
        finally:
            for run in runs:
                run.close()
        for run in runs:
            res = evaluate_backbone(cfg, "", backbone=run.backbone, **probe) if probe else {}
            rows.append(dict(run.result(warmup), **res))
    rows[-2]["time_ratio"] = rows[-2]["s_per_iter"] / rows[-1]["s_per_iter"]
    rows[-1]["time_ratio"] = 1.0
    return rows


def format_table(rows, iters, batch):
    """A Markdown table of ``compare``'s rows."""
    def f(r, key, fmt):
        return (fmt % r[key]) if key in r else "-"

    header = [f"method ({iters} it, batch {batch})", "s/iter (median)", "s/iter (mean)", "time ratio",
              "loss first -> last", "kNN top-1", "linear top-1"]
    table = [[r["method"], f(r, "s_per_iter", "%.3f"), f(r, "s_per_iter_mean", "%.3f"), f(r, "time_ratio", "%.3f"),
              f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}" if "loss_first" in r else "-",
              f(r, "knn_top1", "%.1f"), f(r, "linear_top1", "%.1f")] for r in rows]
    return markdown_table(header, table)
