"""
Momentum (EMA) target networks, shared by every momentum method (SoCo, Fast-MoCo/MoCo v3).

``MomentumTarget`` holds copies of named parts of the online model under the same paths, so a
model's state dict has ``backbone.*`` next to ``target.backbone.*`` and exporting the EMA
weights only strips ``target.``.
"""
import copy
import math

import torch
from torch import nn

__all__ = ["MomentumTarget", "momentum_at"]


class MomentumTarget(nn.Module):
    """
    EMA copies of ``model``'s submodules at ``paths`` (e.g. ``("backbone", "roi_heads.box_head",
    "projector")``). They never require grad; ``update`` moves them by
    ``t <- m * t + (1 - m) * o`` with one fused (foreach) op over all parameters.
    Buffers (BN statistics) are the target's own, as in BYOL/MoCo.

    ``fresh``: {path: module} built on its own with the online part's structure, used instead of
    a copy (``init == "random"``): Fast-MoCo's code starts its EMA encoder as a second, randomly
    initialized network. ``start`` then leaves it as it is.
    """

    def __init__(self, model, paths, fresh=None):
        super().__init__()
        self.paths = tuple(paths)
        fresh = dict(fresh or {})
        if fresh and set(fresh) != set(self.paths):
            raise ValueError(f"MomentumTarget: fresh modules for {sorted(fresh)}, paths {sorted(self.paths)}")
        self.init = "random" if fresh else "copy"
        for path in self.paths:
            parent = self
            *parents, leaf = path.split(".")
            for name in parents:
                if not hasattr(parent, name):
                    parent.add_module(name, nn.Module())
                parent = getattr(parent, name)
            parent.add_module(leaf, fresh[path] if fresh else copy.deepcopy(model.get_submodule(path)))
        self.requires_grad_(False)
        if fresh:
            self._pairs(model)  # same structure, or fail now

    def _pairs(self, model):
        online, target = [], []
        for path in self.paths:
            o = list(model.get_submodule(path).parameters())
            t = list(self.get_submodule(path).parameters())
            assert len(o) == len(t), f"online and target '{path}' differ in structure"
            online += o
            target += t
        return online, target

    @torch.no_grad()
    def update(self, model, m):
        """``model`` is the online model (unwrapped from DDP); ``m`` the momentum in [0, 1]."""
        online, target = self._pairs(model)
        torch._foreach_lerp_(target, [p.detach() for p in online], 1.0 - m)

    @torch.no_grad()
    def start(self, model):
        """Before a fresh run's first step: a "copy" target becomes the online network (e.g. after
        ``MODEL.WEIGHTS`` loaded only the online keys), a "random" one keeps its own init."""
        if self.init == "copy":
            self.copy_from(model)

    @torch.no_grad()
    def copy_from(self, model):
        """Make the target equal to the online weights and BN statistics (e.g. after
        ``MODEL.WEIGHTS`` loaded only the online keys)."""
        self.update(model, 0.0)
        for path in self.paths:
            for t, o in zip(self.get_submodule(path).buffers(), model.get_submodule(path).buffers()):
                t.copy_(o)


def momentum_at(it, max_iter, base, end=1.0, schedule="cosine"):
    """
    BYOL's schedule: ``end - (end - base) * (cos(pi * it / max_iter) + 1) / 2``, i.e. ``base``
    at iteration 0 and ``end`` at ``max_iter``; ``"constant"`` keeps ``base``.
    """
    if schedule == "constant" or max_iter <= 0:
        return base
    if schedule != "cosine":
        raise ValueError(f"MODEL.EMA.SCHEDULE={schedule!r}: use 'cosine' or 'constant'")
    t = min(max(it / max_iter, 0.0), 1.0)
    return end - (end - base) * (math.cos(math.pi * t) + 1) / 2
