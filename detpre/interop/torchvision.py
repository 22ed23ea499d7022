"""
torchvision's ResNet under detectron2's names and back.

The two ResNets are the same network when detectron2's puts a bottleneck's stride in its 3x3 conv
(``MODEL.RESNETS.STRIDE_IN_1X1 False``, torchvision's "v1.5") and has torchvision's widths; only
the names differ::

    torchvision                      detectron2 (under ``backbone.bottom_up.`` in FPN detectors)
    conv1.weight, bn1.*              stem.conv1.weight, stem.conv1.norm.*
    layerN.B.convK.weight, bnK.*     res{N+1}.B.convK.weight, res{N+1}.B.convK.norm.*
    layerN.B.downsample.0 / .1       res{N+1}.B.shortcut / res{N+1}.B.shortcut.norm
    fc.*                             (no counterpart: the detector's heads replace it)

torchvision models also expect RGB input normalized with ImageNet's mean / std (``TORCHVISION_OPTS``).
"""
import collections
import re
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np
import torch

from detpre.errors import DetpreError

__all__ = [
    "TORCHVISION_DEPTHS", "TORCHVISION_OPTS", "is_torchvision_resnet", "torchvision_to_detectron2",
    "check_torchvision_resnet", "detectron2_to_torchvision", "export_torchvision", "save_torchvision_file",
]

TORCHVISION_DEPTHS = (18, 34, 50, 101, 152)
# What a detectron2 config needs to run torchvision's weights as they were trained (detectron2's
# tools/convert-torchvision-to-d2.py says the same)
TORCHVISION_OPTS = ["MODEL.RESNETS.STRIDE_IN_1X1", "False", "INPUT.FORMAT", "RGB",
                    "MODEL.PIXEL_MEAN", "[123.675, 116.28, 103.53]", "MODEL.PIXEL_STD", "[58.395, 57.12, 57.375]"]
# BatchNorm in every flavour detectron2 has: each keeps weight, bias, running_mean, running_var
_BN_NORMS = ("BN", "FrozenBN", "SyncBN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N")

_TV_KEY = re.compile(r"(conv1\.weight|bn1\.\w+|fc\.(weight|bias)"
                     r"|layer[1-4]\.\d+\.(conv[1-3]\.weight|bn[1-3]\.\w+|downsample\.[01]\.\w+))")
_D2_KEY = re.compile(r"(?:stem|res(?P<stage>[2-5])\.(?P<block>\d+))\.(?P<layer>conv[1-3]|shortcut)"
                     r"\.(?P<norm>norm\.)?(?P<field>\w+)")


def is_torchvision_resnet(keys) -> bool:
    """True when ``keys`` are a torchvision ResNet's state_dict names (and nothing else)."""
    keys = list(keys)
    return ("conv1.weight" in keys and any(k.startswith("layer1.") for k in keys)
            and all(_TV_KEY.fullmatch(k) for k in keys))


def _to_detectron2_name(key):
    """``layer1.0.bn2.weight`` -> ``res2.0.conv2.norm.weight``; None for what detectron2 lacks."""
    if key.startswith("fc.") or key.endswith(".num_batches_tracked"):
        return None
    m = re.match(r"layer(\d)\.(\d+)\.", key)
    block, rest = (f"res{int(m.group(1)) + 1}.{m.group(2)}", key[m.end():]) if m else ("stem", key)
    rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
    rest = re.sub(r"^downsample\.0\.", "shortcut.", rest)
    rest = re.sub(r"^downsample\.1\.", "shortcut.norm.", rest)
    return f"{block}.{rest}"


def torchvision_to_detectron2(state_dict: Mapping[str, Any],
                              prefix: str = "backbone.bottom_up.") -> Dict[str, np.ndarray]:
    """A torchvision ResNet state_dict under detectron2's names (``prefix`` + ``stem.*`` /
    ``resN.*``) as numpy arrays, the model-zoo layout. ``fc.*`` and the BN batch counters are
    dropped: no detector has them."""
    out = collections.OrderedDict()
    for k, v in state_dict.items():
        name = _to_detectron2_name(k)
        if name is not None:
            out[prefix + name] = _numpy(v)
    return out


def _numpy(v):
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        return (v.float() if v.dtype == torch.bfloat16 else v).numpy()
    return np.asarray(v)


def check_torchvision_resnet(resnets) -> None:
    """Refuse a detectron2 ResNet definition (``cfg.MODEL.RESNETS``) that no torchvision ResNet
    computes; the message says which key and why."""
    depth = resnets.DEPTH
    if depth not in TORCHVISION_DEPTHS:
        raise DetpreError(f"MODEL.RESNETS.DEPTH {depth}: torchvision has ResNets of depths {TORCHVISION_DEPTHS} only")
    bottleneck = depth >= 50
    if bottleneck and resnets.STRIDE_IN_1X1:
        raise DetpreError(
            "MODEL.RESNETS.STRIDE_IN_1X1 True: this ResNet strides in its bottlenecks' 1x1 convs (the MSRA layout); "
            "torchvision's strides in the 3x3 conv, so no torchvision ResNet computes these features. Pretrain "
            "with STRIDE_IN_1X1 False to export to torchvision.")
    expected = {"NUM_GROUPS": 1, "WIDTH_PER_GROUP": 64, "STEM_OUT_CHANNELS": 64,
                "RES2_OUT_CHANNELS": 256 if bottleneck else 64, "RES5_DILATION": 1}
    for key, value in expected.items():
        if resnets[key] != value:
            raise DetpreError(f"MODEL.RESNETS.{key} {resnets[key]}: torchvision's resnet{depth} has {value}; "
                              "other widths, groups or dilations are not exported")
    if any(resnets.DEFORM_ON_PER_STAGE):
        raise DetpreError("MODEL.RESNETS.DEFORM_ON_PER_STAGE: torchvision's ResNet has no deformable convs")
    if resnets.NORM not in _BN_NORMS:
        raise DetpreError(f"MODEL.RESNETS.NORM {resnets.NORM!r}: torchvision's ResNet has BatchNorm; only "
                          f"{_BN_NORMS} export")


def _to_torchvision_name(key):
    m = _D2_KEY.fullmatch(key)
    if m is None:
        return None
    if m["stage"] is None:
        head = "bn1" if m["norm"] else "conv1"
    else:
        layer = m["layer"]
        if layer == "shortcut":
            part = "downsample.1" if m["norm"] else "downsample.0"
        else:
            part = layer.replace("conv", "bn") if m["norm"] else layer
        head = f"layer{int(m['stage']) - 1}.{m['block']}.{part}"
    return f"{head}.{m['field']}"


def detectron2_to_torchvision(weights: Mapping[str, Any], resnets, prefix: str = "backbone.bottom_up.",
                              num_classes: int = 1000) -> Dict[str, torch.Tensor]:
    """
    The ResNet under ``prefix`` in detectron2 ``weights`` (tensors or arrays) as the state_dict of
    ``torchvision.models.resnet<DEPTH>(num_classes=num_classes)``, checked key by key and shape by
    shape against that model (``strict=True`` loads it). ``resnets``: the ``MODEL.RESNETS`` the
    weights were trained with (``check_torchvision_resnet``). BN batch counters are 0. ``fc`` is
    zero: a strict load needs it and nothing pretrained it; the user replaces the head.
    """
    import torchvision

    check_torchvision_resnet(resnets)
    out, unknown = collections.OrderedDict(), []
    for k, v in weights.items():
        if not k.startswith(prefix) or k.endswith(".num_batches_tracked"):
            continue
        name = _to_torchvision_name(k[len(prefix):])
        if name is None:
            unknown.append(k)
            continue
        out[name] = torch.as_tensor(_numpy(v)).clone()
    if unknown:
        raise DetpreError(f"{len(unknown)} ResNet tensors have no torchvision counterpart (e.g. {unknown[:3]})")
    target = getattr(torchvision.models, f"resnet{resnets.DEPTH}")(num_classes=num_classes).state_dict()
    out["fc.weight"] = torch.zeros_like(target["fc.weight"])
    out["fc.bias"] = torch.zeros_like(target["fc.bias"])
    for k, v in target.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.zeros_like(v)
    missing = [k for k in target if k not in out]
    extra = [k for k in out if k not in target]
    bad = [k for k in out if k in target and out[k].shape != target[k].shape]
    if missing or extra or bad:
        raise DetpreError(
            f"the {prefix}* weights are not a torchvision resnet{resnets.DEPTH}: {len(missing)} of its tensors "
            f"missing (e.g. {missing[:3]}), {len(extra)} extra (e.g. {extra[:3]}), {len(bad)} of another shape "
            f"(e.g. {bad[:3]}); is MODEL.RESNETS the one they were trained with, with every stage (res5) built?")
    return collections.OrderedDict((k, out[k]) for k in target)  # torchvision's order


def _input_notes(cfg) -> List[str]:
    """What differs from torchvision's input convention (RGB, ImageNet mean / std)."""
    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    if (cfg.INPUT.FORMAT == "RGB" and np.allclose(cfg.MODEL.PIXEL_MEAN, mean, atol=1e-3)
            and np.allclose(cfg.MODEL.PIXEL_STD, std, atol=1e-3)):
        return []
    return [f"pretrained on {cfg.INPUT.FORMAT} input normalized with mean {list(cfg.MODEL.PIXEL_MEAN)}, std "
            f"{list(cfg.MODEL.PIXEL_STD)} (0-255), not torchvision's RGB with mean {mean}, std {std}: give it "
            "input prepared that way to get the pretrained features"]


def export_torchvision(checkpoint: str, use_target: bool = False, config_file: str = "",
                       num_classes: int = 1000) -> Tuple[Dict[str, torch.Tensor], int, List[str]]:
    """The ResNet of a detpre pretraining ``checkpoint`` (online or EMA-target weights) as a
    torchvision state_dict (``detectron2_to_torchvision``), its ResNet definition read from
    ``config_file`` or the config stored in the checkpoint. Returns ``(state_dict, depth, notes)``;
    ``notes``: what a torchvision user must know (input convention)."""
    from detpre.checkpoint import export_weights, load_detpre_checkpoint, stored_config
    from detpre.config import get_detpre_cfg

    state, _ = load_detpre_checkpoint(checkpoint)
    weights = export_weights(state, "backbone", use_target=use_target)
    cfg = get_detpre_cfg(config_file) if config_file else stored_config(checkpoint)
    try:
        out = detectron2_to_torchvision(weights, cfg.MODEL.RESNETS, num_classes=num_classes)
    except DetpreError as e:
        raise DetpreError(f"{checkpoint}: {e}") from None
    return out, cfg.MODEL.RESNETS.DEPTH, _input_notes(cfg)


def save_torchvision_file(state_dict: Dict[str, torch.Tensor], path: str) -> None:
    """``torch.save`` of plain tensors (loadable with ``weights_only=True``), written to a
    temporary name and renamed."""
    from detpre.utils.io import atomic_open

    with atomic_open(path, "wb") as f:
        torch.save({k: v.contiguous() for k, v in state_dict.items()}, f)
