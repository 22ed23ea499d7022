"""
The LR schedules of the papers' official codes that detectron2 lacks, built by
``build_lr_scheduler`` (detectron2's own for every other ``SOLVER.LR_SCHEDULER_NAME``):

* ``"WarmupThenCosineLR"``: a warm-up over ``WARMUP_ITERS`` from ``WARMUP_FACTOR`` x LR to LR
  (``WARMUP_METHOD``), then a half cosine from LR to 0 over the *remaining* iterations, as
  SoCo (``contrast/lr_scheduler.py``: GradualWarmupScheduler + CosineAnnealingLR with
  ``T_max = (epochs - warmup_epoch) * iters``), Fast-MoCo (``core/lr_scheduler/
  lambda_scheduler.py`` WCosConLR) and MoCo v3 (``main_moco.py`` adjust_learning_rate) run it.
  detectron2's "WarmupCosineLR" runs its cosine over all of MAX_ITER and only replaces its
  start by the warm-up: with 10 of 100 epochs of warm-up its LR is 15% lower at mid-run.
* Parameter groups marked ``fixed_lr`` (``keep_lr_fixed``) keep their initial LR under any
  schedule: Fast-MoCo's predictor (WCosConLR's "constant LR for group 2"). detectron2's
  LRMultiplier scales every group by the same multiplier.
"""
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler
from detectron2.solver.lr_scheduler import LRMultiplier
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    CosineParamScheduler,
    LinearParamScheduler,
)

__all__ = ["build_lr_scheduler", "warmup_then_cosine", "GroupLRMultiplier", "keep_lr_fixed",
           "WARMUP_THEN_COSINE"]

WARMUP_THEN_COSINE = "WarmupThenCosineLR"


def warmup_then_cosine(warmup_factor, warmup_length, warmup_method="linear"):
    """
    The multiplier (an fvcore ParamScheduler of the training fraction) of "WarmupThenCosineLR":
    ``warmup_factor -> 1`` linearly (or constant ``warmup_factor``) over the first
    ``warmup_length`` of training, then ``(1 + cos(pi * (t - w) / (1 - w))) / 2``.
    """
    if warmup_method not in ("linear", "constant"):
        raise ValueError(f"SOLVER.WARMUP_METHOD={warmup_method!r}: use 'linear' or 'constant'")
    cosine = CosineParamScheduler(1.0, 0.0)
    if warmup_length <= 0:
        return cosine
    warmup = (LinearParamScheduler(warmup_factor, 1.0) if warmup_method == "linear"
              else ConstantParamScheduler(warmup_factor))
    if warmup_length >= 1:
        return warmup
    return CompositeParamScheduler([warmup, cosine], lengths=[warmup_length, 1.0 - warmup_length],
                                   interval_scaling=["rescaled", "rescaled"])


class GroupLRMultiplier(LRMultiplier):
    """detectron2's LRMultiplier, except that groups with ``fixed_lr`` keep their initial LR."""

    def get_lr(self):
        lrs = super().get_lr()
        return [base if g.get("fixed_lr", False) else lr
                for lr, base, g in zip(lrs, self.base_lrs, self.optimizer.param_groups)]


def keep_lr_fixed(optimizer, params):
    """
    Move ``params`` into groups of their own, marked ``fixed_lr`` (a group's other
    hyper-parameters stay theirs), before the first step. Returns ``optimizer``.
    """
    fixed = {id(p) for p in params}
    added = []
    for g in optimizer.param_groups:
        mine = [p for p in g["params"] if id(p) in fixed]
        if not mine:
            continue
        rest = [p for p in g["params"] if id(p) not in fixed]
        if rest:
            g["params"] = rest
            added.append({**{k: v for k, v in g.items() if k != "params"}, "params": mine, "fixed_lr": True})
        else:
            g["fixed_lr"] = True
    for g in added:
        optimizer.add_param_group(g)
    return optimizer


def build_lr_scheduler(cfg, optimizer):
    """``SOLVER.LR_SCHEDULER_NAME`` -> an LR scheduler stepped once per iteration; detectron2's
    own unchanged unless the optimizer has ``fixed_lr`` groups."""
    s = cfg.SOLVER
    has_fixed = any(g.get("fixed_lr", False) for g in optimizer.param_groups)
    if s.LR_SCHEDULER_NAME == WARMUP_THEN_COSINE:
        multiplier = warmup_then_cosine(s.WARMUP_FACTOR, min(s.WARMUP_ITERS / s.MAX_ITER, 1.0),
                                        s.WARMUP_METHOD)
        return GroupLRMultiplier(optimizer, multiplier=multiplier, max_iter=s.MAX_ITER)
    sched = d2_build_lr_scheduler(cfg, optimizer)
    if has_fixed:
        if not isinstance(sched, LRMultiplier):
            raise ValueError(f"SOLVER.LR_SCHEDULER_NAME={s.LR_SCHEDULER_NAME!r} cannot keep a group's "
                             f"LR fixed (Fast-MoCo's predictor); use {WARMUP_THEN_COSINE!r} or WarmupCosineLR")
        # the same multiplier, read per group (as add_full_model_clipping does with the optimizer)
        sched.__class__ = GroupLRMultiplier
        for g, lr in zip(optimizer.param_groups, sched.get_lr()):
            g["lr"] = lr
        sched._last_lr = [g["lr"] for g in optimizer.param_groups]
    return sched
