"""
Export a detpre training checkpoint as a detectron2 model-zoo file that ``MODEL.WEIGHTS`` of a
stock Mask R-CNN / Faster R-CNN / RetinaNet config loads.

detpre's meta-architectures name their modules as detectron2's detectors do (``backbone.*``
with ``bottom_up``/``fpn_*``, ``roi_heads.box_head.*``) and keep momentum copies under
``target.``, so export only selects keys (and, for the EMA weights, strips ``target.``).
"""
import collections
import os
import pickle
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from detectron2.modeling import META_ARCH_REGISTRY

from detpre.utils.io import atomic_open
from detpre.utils.safe_load import UntrustedFileError, load_torch

__all__ = [
    "DETECTOR_PREFIXES", "load_detpre_checkpoint", "export_weights", "save_model_zoo_file",
    "coverage_report", "stored_config", "detector_config", "export_checked",
]

# What each detector family takes from a pretrained checkpoint.
DETECTOR_PREFIXES = {
    "mask_rcnn": ("backbone.", "roi_heads.box_head."),
    "faster_rcnn": ("backbone.", "roi_heads.box_head."),
    "retinanet": ("backbone.",),
    # ResNet + FPN for any FPN detector, its RoI box head left to the detector's own init
    "backbone_fpn": ("backbone.",),
    "backbone": ("backbone.bottom_up.",),
    # ResNet + FPN + RPN + RoI box head: all an R-CNN has that does not depend on its classes
    # (ClassAgnosticRCNN's box pretraining; the box predictor and mask head stay the detector's)
    "rpn_box_head": ("backbone.", "proposal_generator.", "roi_heads.box_head."),
}


def _is_detpre_arch(name):
    return name in META_ARCH_REGISTRY and META_ARCH_REGISTRY.get(name).__module__.startswith("detpre.")


def _read_checkpoint(path):
    """The whole dict of a detpre training checkpoint (run info included); refuses others."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        ckpt = load_torch(path, kind="checkpoint")  # --input may be any file: never run code from it
    except UntrustedFileError:
        raise
    except Exception as e:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({e})") from e
    info = ckpt.get("detpre") if isinstance(ckpt, dict) else None
    arch = info.get("meta_architecture") if isinstance(info, dict) else None
    if not isinstance(ckpt, dict) or "model" not in ckpt or arch is None:
        raise ValueError(
            f"{path}: not a checkpoint written by detpre's tools/train_net.py (no 'detpre' run "
            "info); pass a model_XXXXXXX.pth / model_final.pth from a detpre pretraining run."
        )
    if not _is_detpre_arch(arch):
        raise ValueError(
            f"{path}: meta-architecture {arch!r} is not a detpre pretraining architecture; a "
            "detectron2 detector checkpoint already loads through MODEL.WEIGHTS as it is."
        )
    return ckpt


def load_detpre_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], str]:
    """Returns ``(state_dict, meta_architecture)``; refuses files detpre did not train."""
    ckpt = _read_checkpoint(path)
    return ckpt["model"], ckpt["detpre"]["meta_architecture"]


def stored_config(path: str):
    """The config a detpre checkpoint was trained with (its run info), as a detpre CfgNode; keys
    renamed since it was written are read under their new names."""
    import yaml
    from detectron2.config import CfgNode

    from detpre.config import get_detpre_cfg, translate_renamed

    dump = _read_checkpoint(path)["detpre"].get("config")
    if not dump:
        raise ValueError(f"{path}: its run info holds no config; pass --config-file")
    cfg = get_detpre_cfg()
    cfg.merge_from_other_cfg(CfgNode(translate_renamed(yaml.safe_load(dump), f"{path}'s config")))
    return cfg


# How a pretraining config becomes the detector it is checked against: the same ResNet / FPN /
# box head definition, the detector's own meta-architecture.
_DETECTOR_OVERRIDES = {
    "mask_rcnn": {"META_ARCHITECTURE": "GeneralizedRCNN", "MASK_ON": True},
    "faster_rcnn": {"META_ARCHITECTURE": "GeneralizedRCNN", "MASK_ON": False},
    "retinanet": {"META_ARCHITECTURE": "RetinaNet", "MASK_ON": False},
    "backbone_fpn": {"META_ARCHITECTURE": "GeneralizedRCNN", "MASK_ON": False},
    "backbone": {"META_ARCHITECTURE": "GeneralizedRCNN", "MASK_ON": False},
    "rpn_box_head": {"META_ARCHITECTURE": "GeneralizedRCNN", "MASK_ON": False},
}


def detector_config(cfg, detector: Optional[str] = None):
    """A copy of ``cfg`` built as ``detector`` (None: its own meta-architecture), on CPU, no weights."""
    cfg = cfg.clone()
    cfg.defrost()
    for k, v in _DETECTOR_OVERRIDES.get(detector, {}).items():
        setattr(cfg.MODEL, k, v)
    if detector == "retinanet" and cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone":
        cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS, cfg.MODEL.LOAD_PROPOSALS = "cpu", "", False
    return cfg


def export_checked(checkpoint: str, detector: Optional[str] = None, use_target: bool = False,
                   config_file: Optional[str] = None) -> Tuple[Dict[str, np.ndarray], Dict[str, list], str, str]:
    """
    Export ``checkpoint`` for ``detector`` (None: what its method declares, ``export_detector``,
    else "mask_rcnn") and check it against the detector built from
    ``config_file`` (the fine-tuning config) or, by default, from the config stored in the
    checkpoint. Returns ``(weights, report, meta_architecture, checked_against)``; raises
    ValueError when exported tensors do not fit the detector (nothing should be written then);
    ``report["detector"]`` is the detector exported for.
    """
    from detectron2.modeling import build_model

    from detpre.config import get_detpre_cfg
    from detpre.method import declared

    state, arch = load_detpre_checkpoint(checkpoint)
    detector = detector or declared(arch, "export_detector", "mask_rcnn")
    weights = export_weights(state, detector, use_target=use_target)
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"--config-file {config_file}: no such file (the fine-tuning "
                                    "config to check the export against)")
        cfg, against = detector_config(get_detpre_cfg(config_file)), config_file
    else:
        cfg, against = detector_config(stored_config(checkpoint), detector), f"{checkpoint} (its config)"
    report = dict(coverage_report(weights, build_model(cfg)), detector=detector)
    if report["shape_mismatch"]:
        raise ValueError(
            f"{len(report['shape_mismatch'])} exported tensors do not fit the detector of {against} "
            f"(e.g. {report['shape_mismatch'][:3]}): pretraining and fine-tuning configs must define "
            "the same ResNet/FPN/box head.")
    return weights, report, arch, against


def export_weights(state_dict: Dict[str, torch.Tensor], detector: str = "mask_rcnn",
                   use_target: bool = False) -> Dict[str, np.ndarray]:
    """The online (or EMA target) weights a ``detector`` takes, as numpy arrays."""
    if detector not in DETECTOR_PREFIXES:
        raise ValueError(f"detector {detector!r}: use one of {sorted(DETECTOR_PREFIXES)}")
    if use_target:
        source = {k[len("target."):]: v for k, v in state_dict.items() if k.startswith("target.")}
        if not source:
            raise ValueError("--ema: this checkpoint has no momentum target (keys 'target.*')")
    else:
        source = {k: v for k, v in state_dict.items() if not k.startswith("target.")}
    prefixes = DETECTOR_PREFIXES[detector]
    if detector == "rpn_box_head" and not any(k.startswith("proposal_generator.") for k in source):
        raise ValueError("rpn_box_head: this checkpoint has no RPN (keys 'proposal_generator.*'; only "
                         "box pretraining, ClassAgnosticRCNN, trains one); export it with mask_rcnn")
    out = collections.OrderedDict(
        (k, v.detach().cpu().numpy()) for k, v in source.items() if k.startswith(prefixes)
    )
    if not out:
        raise ValueError(f"nothing to export for {detector}: no keys start with {prefixes}")
    return out


def save_model_zoo_file(weights: Dict[str, np.ndarray], path: str, author: str = "detpre") -> None:
    """detectron2's model-zoo ``.pkl`` layout, written to a temporary name and renamed."""
    data = {"model": dict(weights), "__author__": author, "matching_heuristics": False}
    with atomic_open(path, "wb") as f:
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)


def coverage_report(weights: Dict[str, np.ndarray], model: torch.nn.Module) -> Dict[str, list]:
    """
    Compare exported ``weights`` with a detector ``model``'s state dict: which of its keys they
    fill, which stay randomly initialized, which exported keys it does not have or with another shape.
    """
    target = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    filled = [k for k, v in weights.items() if k in target and tuple(np.shape(v)) == target[k]]
    mismatched = [k for k, v in weights.items() if k in target and tuple(np.shape(v)) != target[k]]
    unused = [k for k in weights if k not in target]
    filled_set = set(filled)
    random_init = [k for k in target if k not in filled_set and not k.endswith("num_batches_tracked")]
    return {"filled": filled, "shape_mismatch": mismatched, "unused": unused, "random_init": random_init}
