"""``SOLVER.OPTIMIZER`` -> an optimizer; SGD stays exactly detectron2's."""
import torch
from detectron2.solver import build_optimizer as d2_build_optimizer
from detectron2.solver.build import maybe_add_gradient_clipping

from .lars import LARS
from .paper_recipes import add_full_model_clipping, build_adam, wants_full_model_clipping


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
    if wants_full_model_clipping(cfg):  # one global norm (Fast-MoCo), see paper_recipes.py
        clip = cfg.SOLVER.CLIP_GRADIENTS
        plain = cfg.clone()
        plain.defrost()
        plain.SOLVER.CLIP_GRADIENTS.ENABLED = False
        return add_full_model_clipping(build_optimizer(plain, model), clip.CLIP_VALUE, clip.NORM_TYPE)
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
