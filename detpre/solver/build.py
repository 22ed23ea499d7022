"""
``SOLVER.OPTIMIZER`` -> an optimizer; SGD stays exactly detectron2's. A model whose parameters
must not follow the LR schedule says which by a method ``fixed_lr_parameters()`` (Fast-MoCo's
predictor); they get groups of their own marked ``fixed_lr`` (see lr_scheduler.py).
"""
import torch
from detectron2.solver import build_optimizer as d2_build_optimizer
from detectron2.solver.build import maybe_add_gradient_clipping

from .lars import LARS
from .lr_scheduler import keep_lr_fixed
from .paper_recipes import add_full_model_clipping, build_adam, wants_full_model_clipping

_NORM_TYPES = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm,
               torch.nn.LocalResponseNorm)


def _lars_param_groups(cfg, model):
    """
    Weights are LARS-adapted and decayed by SOLVER.WEIGHT_DECAY. With EXCLUDE_BIAS_AND_NORM,
    normalization parameters and biases are not adapted; they take detectron2's
    WEIGHT_DECAY_NORM / WEIGHT_DECAY_BIAS and BIAS_LR_FACTOR, times LARS.NON_ADAPTED_LR_FACTOR.
    """
    s = cfg.SOLVER
    base, factor = s.BASE_LR, s.LARS.NON_ADAPTED_LR_FACTOR
    wd_bias = s.WEIGHT_DECAY if s.WEIGHT_DECAY_BIAS is None else s.WEIGHT_DECAY_BIAS
    groups = {"adapt": {"params": [], "lars_adapt": True},
              "norm": {"params": [], "lars_adapt": False, "weight_decay": s.WEIGHT_DECAY_NORM,
                       "lr": base * factor},
              "bias": {"params": [], "lars_adapt": False, "weight_decay": wd_bias,
                       "lr": base * factor * s.BIAS_LR_FACTOR}}
    seen = set()
    for module in model.modules():
        norm = isinstance(module, _NORM_TYPES)
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if not s.LARS.EXCLUDE_BIAS_AND_NORM or (p.ndim > 1 and not norm):
                kind = "adapt"
            else:
                kind = "norm" if norm else "bias"  # 1-d parameters of other modules count as biases
            groups[kind]["params"].append(p)
    return [g for g in groups.values() if g["params"]]


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    optimizer = _build_optimizer(cfg, model)
    fixed = getattr(model, "fixed_lr_parameters", None)
    return keep_lr_fixed(optimizer, fixed()) if callable(fixed) else optimizer


def _build_optimizer(cfg, model):
    if wants_full_model_clipping(cfg):  # one global norm (Fast-MoCo), see paper_recipes.py
        clip = cfg.SOLVER.CLIP_GRADIENTS
        plain = cfg.clone()
        plain.defrost()
        plain.SOLVER.CLIP_GRADIENTS.ENABLED = False
        return add_full_model_clipping(_build_optimizer(plain, model), clip.CLIP_VALUE, clip.NORM_TYPE)
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "SGD":
        return d2_build_optimizer(cfg, model)
    if name == "LARS":
        return maybe_add_gradient_clipping(cfg, LARS)(
            _lars_param_groups(cfg, model),
            lr=cfg.SOLVER.BASE_LR,
            momentum=cfg.SOLVER.MOMENTUM,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
            eta=cfg.SOLVER.LARS.ETA,
        )
    if name == "ADAMW":
        return build_adam(cfg, model, maybe_add_gradient_clipping(cfg, torch.optim.AdamW))
    if name == "ADAM":  # coupled L2 (SpCL), see paper_recipes.py
        return build_adam(cfg, model, maybe_add_gradient_clipping(cfg, torch.optim.Adam))
    raise ValueError(f"SOLVER.OPTIMIZER={cfg.SOLVER.OPTIMIZER!r}: use SGD, LARS, AdamW or Adam")
