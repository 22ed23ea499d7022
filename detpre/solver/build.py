"""``SOLVER.OPTIMIZER`` -> an optimizer; SGD stays exactly detectron2's."""
import torch
from detectron2.solver import build_optimizer as d2_build_optimizer
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

from .lars import LARS


def _lars_param_groups(cfg, model):
    """Weights are LARS-adapted and decayed; biases/norm parameters (ndim <= 1) are neither."""
    adapt, plain = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (plain if cfg.SOLVER.LARS.EXCLUDE_BIAS_AND_NORM and p.ndim <= 1 else adapt).append(p)
    groups = [{"params": adapt}]
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0, "lars_adapt": False})
    return groups


def build_optimizer(cfg, model):
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
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        return maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(
            params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY
        )
    raise ValueError(f"SOLVER.OPTIMIZER={cfg.SOLVER.OPTIMIZER!r}: use SGD, LARS or AdamW")
