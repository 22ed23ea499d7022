"""
Weights that other tools wrote (ImageNet / COCO weights a user already has), read without running
code from the file and resolved against the detector they are to initialize.

Formats, told apart by extension and keys:

- ``.pkl``: a detectron2 model-zoo file (``{"model": arrays, "__author__": ...}``) or a Caffe2 /
  Detectron one (``{"blobs": ...}`` or a flat dict of Caffe2 names such as ``res2_0_branch2a_w``).
  Unpickled by ``detpre.utils.safe_load.SafeUnpickler``: numpy arrays and plain containers only.
- ``.pth``: a detectron2 checkpoint (``{"model": tensors}``) or a torchvision ResNet state_dict
  (``conv1.weight``, ``layer1.0.bn1.*``), ``safe_load.load_torch`` (``weights_only=True``). torchvision's
  names are converted (``detpre.interop.torchvision``).

``import_checked`` gives what detectron2's checkpointer would load from such a file into the
fine-tuning detector, under the detector's own names, and refuses weights that leave its ResNet random.
"""
import collections
import hashlib
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from detpre.errors import DetpreError
from detpre.utils.safe_load import RefusedGlobal, SafeUnpickler, UntrustedFileError, load_torch, safe_pickle_load

from .torchvision import TORCHVISION_OPTS, is_torchvision_resnet, torchvision_to_detectron2

__all__ = ["SafeUnpickler", "RefusedGlobal", "safe_pickle_load", "read_weights", "layout_opts", "resolve_weights",
           "import_checked", "file_sha256", "FORMATS_HELP"]

FORMATS_HELP = ("a detectron2 model-zoo .pkl, a detectron2 checkpoint .pth ({'model': state_dict}) or a "
                "torchvision ResNet state_dict .pth")
# The input convention and stride placement each format was trained with (None: the fine-tuning
# config's own). Caffe2 / Detectron ImageNet models are MSRA's: BGR, 0-255 minus the mean, stride in 1x1.
_LAYOUT_OPTS = {
    "torchvision": TORCHVISION_OPTS,
    "caffe2": ["MODEL.RESNETS.STRIDE_IN_1X1", "True", "INPUT.FORMAT", "BGR",
               "MODEL.PIXEL_MEAN", "[103.53, 116.28, 123.675]", "MODEL.PIXEL_STD", "[1.0, 1.0, 1.0]"],
}
_C2_NAME = re.compile(r"(conv1_w|res_conv1_bn_\w+|res\d_\d+_branch\w+|fc1000_[wb]|pred_[wb])")


def _torch_load(path):
    try:
        return load_torch(path, kind="weights file")
    except UntrustedFileError as e:  # e.g. a whole module pickled
        raise UntrustedFileError(f"{e}; or save the state_dict alone (torch.save(model.state_dict(), path))") from None
    except Exception as e:
        raise DetpreError(f"{path}: not a readable PyTorch file ({type(e).__name__}: {e})") from None


def _arrays(model, path):
    out = collections.OrderedDict()
    for k, v in model.items():
        if hasattr(v, "detach"):  # a torch tensor
            v = v.detach().cpu()
            v = (v.float() if str(v.dtype) == "torch.bfloat16" else v).numpy()
        elif isinstance(v, np.generic):  # a 0-d blob pickled as a numpy scalar
            v = np.asarray(v)
        if not isinstance(v, np.ndarray):
            raise DetpreError(f"{path}: its model entry {k!r} is a {type(v).__name__}, not an array; "
                              f"pass {FORMATS_HELP}")
        out[str(k)] = v
    return out


def _unknown(path, data):
    keys = list(data)[:5] if isinstance(data, dict) else type(data).__name__
    return DetpreError(f"{path}: unknown weights format (found {keys}); pass {FORMATS_HELP}")


def read_weights(path: str) -> Dict[str, Any]:
    """
    The weights in ``path`` as ``{"format", "model", "author", "matching_heuristics"}``:
    ``format`` "detectron2", "caffe2" or "torchvision"; ``model`` name -> numpy array (torchvision's
    under detectron2's ResNet names, no prefix); the other two as detectron2's checkpointer reads
    them (suffix matching of names, Caffe2 renaming when ``author`` is "Caffe2").
    """
    if not os.path.isfile(path):
        raise DetpreError(f"{path}: no such file; pass {FORMATS_HELP}")
    if path.endswith(".pkl"):
        data = safe_pickle_load(path)
        if not isinstance(data, dict):
            raise _unknown(path, data)
        if isinstance(data.get("model"), dict) and "__author__" in data:
            author = str(data["__author__"])
            model = _arrays(data["model"], path)
            fmt = "caffe2" if author == "Caffe2" else "torchvision" if author == "torchvision" else "detectron2"
            return {"format": fmt, "model": model, "author": author,
                    "matching_heuristics": bool(data.get("matching_heuristics", False))}
        blobs = data.get("blobs", data)  # Detectron detection models / ImageNet models
        if not isinstance(blobs, dict) or not any(_C2_NAME.fullmatch(str(k)) for k in blobs):
            raise _unknown(path, data)
        blobs = {k: v for k, v in blobs.items() if not str(k).endswith("_momentum")}
        return {"format": "caffe2", "model": _arrays(blobs, path), "author": "Caffe2", "matching_heuristics": True}
    data = _torch_load(path)
    if not isinstance(data, dict):
        raise _unknown(path, data)
    if isinstance(data.get("model"), dict):
        return {"format": "detectron2", "model": _arrays(data["model"], path),
                "author": str(data.get("__author__", os.path.basename(path))),
                "matching_heuristics": bool(data.get("matching_heuristics", False))}
    if is_torchvision_resnet(data):
        return {"format": "torchvision", "model": torchvision_to_detectron2(data, prefix=""), "author": "torchvision",
                "matching_heuristics": True}
    if data and all(hasattr(v, "detach") for v in data.values()) and any(str(k).startswith("backbone.") for k in data):
        # a bare detectron2 state_dict: detectron2 reads it as {"model": it}
        return {"format": "detectron2", "model": _arrays(data, path), "author": os.path.basename(path),
                "matching_heuristics": False}
    raise _unknown(path, data)


def layout_opts(fmt: str) -> List[str]:
    """Config overrides under which weights of format ``fmt`` compute what they were trained to:
    stride placement and input convention (``[]``: the fine-tuning config's own)."""
    return list(_LAYOUT_OPTS.get(fmt, []))


_RESNET_CONV = re.compile(r"(^|.*\.)(stem|res[2-5])\..*weight")


def resolve_weights(weights: Dict[str, Any], model_state: Dict[str, Any]) -> Tuple[Dict[str, np.ndarray], Dict]:
    """
    What detectron2's checkpointer loads from ``weights`` (``read_weights``) into a model with
    ``model_state``: under the model's names, tensors of another shape dropped. BN running statistics
    the file lacks (Caffe2 models fold them into the affine) are the model's initial ones, which is
    what loading leaves. Returns ``(resolved, report)``; ``report``: ``filled``, ``random_init``,
    ``shape_mismatch``, ``unused`` key lists and ``resnet_convs`` ``(filled, total)``.
    """
    import torch

    ckpt = {k: torch.as_tensor(v) for k, v in weights["model"].items()}
    mismatch = []
    if weights["matching_heuristics"]:
        from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts

        try:
            matched = align_and_update_state_dicts(model_state, ckpt, c2_conversion=weights["author"] == "Caffe2")
        except ValueError as e:  # one of its names fits two of the model's
            raise DetpreError(f"its names do not map onto the detector's one to one ({e})") from None
        matched = {k: v for k, v in matched.items() if k in model_state}  # none matched: it returns its input
    else:
        matched = {k: v for k, v in ckpt.items() if k in model_state}
        mismatch = [k for k, v in matched.items() if tuple(v.shape) != tuple(model_state[k].shape)]
    resolved = collections.OrderedDict(
        (k, v.numpy()) for k, v in matched.items() if tuple(v.shape) == tuple(model_state[k].shape))
    for k in list(model_state):
        stem, _, field = k.rpartition(".")
        if field in ("running_mean", "running_var") and k not in resolved and f"{stem}.weight" in resolved:
            resolved[k] = model_state[k].detach().cpu().numpy().copy()
    convs = [k for k, v in model_state.items() if v.dim() == 4 and _RESNET_CONV.fullmatch(k)]
    report = {
        "filled": list(resolved),
        "random_init": [k for k in model_state if k not in resolved and not k.endswith("num_batches_tracked")],
        "shape_mismatch": mismatch,
        "unused": [k for k in ckpt if k not in model_state] if not weights["matching_heuristics"] else [],
        "resnet_convs": (sum(k in resolved for k in convs), len(convs)),
    }
    return resolved, report


def import_checked(path: str, config_file: str, opts: Sequence[str] = (),
                   extra_opts: Optional[Sequence[str]] = None) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """
    Weights from ``path`` (any ``read_weights`` format) resolved against the detector of
    ``config_file`` + ``opts`` + the format's ``layout_opts`` + ``extra_opts``; refused (DetpreError
    naming the file) when they leave a ResNet conv of that detector random: another depth or width,
    or nothing that fits. Returns ``(weights under the detector's names, info)``; ``info``: ``format``,
    ``opts`` (the layout + extra overrides a run from these weights needs) and the ``resolve_weights``
    counts.
    """
    from detectron2.modeling import build_model

    from detpre.checkpoint import detector_config
    from detpre.config import get_detpre_cfg

    weights = read_weights(path)
    run_opts = layout_opts(weights["format"]) + [str(o) for o in (extra_opts or ())]
    cfg = detector_config(get_detpre_cfg(config_file, [*map(str, opts), *run_opts]))
    try:
        resolved, report = resolve_weights(weights, build_model(cfg).state_dict())
    except DetpreError as e:
        raise DetpreError(f"{path}: {e}") from None
    filled, total = report["resnet_convs"]
    if not report["filled"] or filled < total:
        names = list(weights["model"])[:3]
        raise DetpreError(
            f"{path} ({weights['format']} weights, names like {names}) fills {filled} of the {total} ResNet convs of "
            f"{config_file}'s detector; the weights and the fine-tuning config must define the same ResNet "
            "(MODEL.RESNETS.DEPTH, RES2_OUT_CHANNELS, ...: pass them after --)")
    info = {"format": weights["format"], "author": weights["author"], "opts": run_opts,
            "filled": len(report["filled"]), "random_init": len(report["random_init"]),
            "shape_mismatch": len(report["shape_mismatch"]), "unused": len(report["unused"])}
    return resolved, info


def file_sha256(path: str) -> str:
    """The file's SHA-256, to tell whether an imported copy is still of the same weights."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
