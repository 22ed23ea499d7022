"""
Optimizer pieces of the papers' official recipes that detectron2 lacks:

* ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE: "full_model"``: one global norm over every parameter,
  ``torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_VALUE)`` as Fast-MoCo's code does
  (detectron2's "norm" clips each parameter tensor on its own).
* ``SOLVER.OPTIMIZER: "Adam"``: Adam with coupled L2 weight decay (SpCL's code), which AdamW's
  decoupled decay is not.
"""
import torch
from detectron2.solver.build import get_default_optimizer_params

__all__ = ["FULL_MODEL", "wants_full_model_clipping", "add_full_model_clipping", "build_adam"]

FULL_MODEL = "full_model"


def wants_full_model_clipping(cfg):
    c = cfg.SOLVER.CLIP_GRADIENTS
    return bool(c.ENABLED) and c.CLIP_TYPE == FULL_MODEL


def add_full_model_clipping(optimizer, max_norm, norm_type=2.0):
    """Make ``optimizer.step`` first clip the gradients of all its parameters to one global
    ``max_norm`` (under AMP, GradScaler.step has unscaled them by then)."""
    base = type(optimizer)

    class FullModelClipping(base):
        def step(self, closure=None):
            params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure)

    FullModelClipping.__name__ = base.__name__ + "WithFullModelClipping"
    optimizer.__class__ = FullModelClipping
    return optimizer


def build_adam(cfg, model, optimizer_cls=torch.optim.Adam):
    """Adam (L2 ``SOLVER.WEIGHT_DECAY`` added to the gradient) or AdamW (``optimizer_cls``,
    decoupled decay) over detectron2's parameter groups (``WEIGHT_DECAY_NORM`` / ``_BIAS`` for
    those parameters; SpCL decays every parameter: set them equal)."""
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    return optimizer_cls(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
