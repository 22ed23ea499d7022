"""
Fast-MoCo vs MoCo v3, side by side in one process: the same backbone, batch and initial weights;
every iteration both models take one training step on the same batch (in alternating order, so
drifting machine load hits both alike). Reports seconds per iteration, their ratio (the paper:
about 1.07), and the kNN / linear-probe accuracy of both backbones after the same iterations.
"""
import logging
import time

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler

from detpre.data.build import build_train_loader
from detpre.data.datasets import register_from_config
from detpre.data.mappers import fastmoco as _mapper  # noqa: F401  (registers TwoViewMapper)
from detpre.evaluation.backbone_probe import evaluate_backbone
from detpre.modeling.meta_arch import fastmoco as _arch  # noqa: F401  (registers FastMoCo)
from detpre.modeling.momentum import momentum_at
from detpre.solver import build_optimizer

from .amp import MixedPrecision

__all__ = ["baseline_config", "compare", "format_table"]


def baseline_config(cfg):
    """MoCo v3: ``cfg`` with the combination off."""
    base = cfg.clone()
    base.defrost()
    base.MODEL.FASTMOCO.COMBINE = "off"
    return base


class _Run:
    """One model with its optimizer and lr schedule, stepping as detectron2's SimpleTrainer +
    the MomentumUpdate hook do."""

    def __init__(self, name, cfg):
        self.name, self.cfg = name, cfg
        torch.manual_seed(max(cfg.SEED, 0))  # both runs start from the same weights
        self.model = build_model(cfg)
        self.model.train()
        self.opt = build_optimizer(cfg, self.model)
        self.sched = build_lr_scheduler(cfg, self.opt)
        self.amp = MixedPrecision.from_config(cfg)  # SOLVER.AMP, as in training
        self.times, self.losses = [], []

    def step(self, batch, it):
        sync = torch.cuda.synchronize if self.model.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        with self.amp.autocast():
            loss = sum(self.model(batch).values())
        self.opt.zero_grad()
        self.amp.backward(loss)
        self.amp.step(self.opt)
        m = self.cfg.MODEL.MOMENTUM
        self.model.target.update(self.model, momentum_at(it + 1, self.cfg.SOLVER.MAX_ITER, m.BASE, m.END, m.SCHEDULE))
        sync()
        self.times.append(time.perf_counter() - t0)
        self.sched.step()
        self.losses.append(loss.item())


def _synthetic_batches(cfg, seed=0):
    """Random uint8 views of the configured size: timing without data loading or data sets."""
    rng = np.random.RandomState(seed)
    n, s = cfg.SOLVER.IMS_PER_BATCH, cfg.INPUT.TWO_VIEW.SIZE
    while True:
        yield [{"views": [torch.from_numpy(rng.randint(0, 256, (3, s, s), dtype=np.uint8))
                          for _ in range(2)]} for _ in range(n)]


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
    runs = [_Run(f"Fast-MoCo ({cfg.MODEL.FASTMOCO.COMBINE})", cfg), _Run("MoCo v3", baseline_cfg)]
    rows = []
    if probe:
        probe = dict(train_dicts=DatasetCatalog.get(train_dataset), test_dicts=DatasetCatalog.get(test_dataset),
                     crop_size=crop_size, k=k, temperature=temperature)
        rows.append(dict(method="random init", **evaluate_backbone(
            cfg, "", backbone=runs[1].model.backbone.bottom_up, **probe)))
    log = logging.getLogger(__name__)
    data = _synthetic_batches(cfg, max(cfg.SEED, 0)) if synthetic else iter(build_train_loader(cfg))
    for it in range(iters):
        batch = next(data)
        for run in (runs if it % 2 == 0 else runs[::-1]):
            run.step(batch, it)
        if (it + 1) % 5 == 0 or it + 1 == iters:
            log.info("iter %d: %s", it + 1, ", ".join(
                f"{r.name} loss {r.losses[-1]:.3f} {r.times[-1]:.3f}s" for r in runs))
    for run in runs:
        t = np.array(run.times[warmup:])
        res = evaluate_backbone(cfg, "", backbone=run.model.backbone.bottom_up, **probe) if probe else {}
        rows.append(dict(method=run.name, s_per_iter=float(np.median(t)), s_per_iter_mean=float(t.mean()),
                         loss_first=run.losses[0], loss_last=run.losses[-1], **res))
    rows[-2]["time_ratio"] = rows[-2]["s_per_iter"] / rows[-1]["s_per_iter"]
    rows[-1]["time_ratio"] = 1.0
    return rows


def format_table(rows, iters, batch):
    """A Markdown table of ``compare``'s rows."""
    head = (f"| method ({iters} it, batch {batch}) | s/iter (median) | s/iter (mean) | time ratio | "
            "loss first -> last | kNN top-1 | linear top-1 |")
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        f = lambda key, fmt: (fmt % r[key]) if key in r else "-"  # noqa: E731
        loss = f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}" if "loss_first" in r else "-"
        lines.append(f"| {r['method']} | {f('s_per_iter', '%.3f')} | {f('s_per_iter_mean', '%.3f')} | "
                     f"{f('time_ratio', '%.3f')} | {loss} | {f('knn_top1', '%.1f')} | "
                     f"{f('linear_top1', '%.1f')} |")
    return "\n".join(lines)
