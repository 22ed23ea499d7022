"""
``DetpreCheckpointer``: detectron2's ``DetectionCheckpointer`` that never leaves a half-written
checkpoint behind and never loads weights silently wrong.

- every save (periodic and final) goes to a temporary name that is renamed when complete, and
  ``last_checkpoint`` is updated (atomically) after it; a kill mid-save leaves the previous state;
  a save that fails (full disk: torch's "unexpected pos") is a one-line ``DetpreError`` naming the
  folder, its free space and the checkpoint that is kept;
- ``--resume`` loads the newest checkpoint that loads, saying which newer ones it skipped;
- ``MODEL.WEIGHTS``: a missing file or one that is not a checkpoint is a ``DetpreError`` naming
  it; a pretrained part (backbone, FPN, FPN top block, RPN, box head) that loads only in part is an
  error unless ``MODEL.WEIGHTS_STRICT`` is off (then a warning), with the coverage per part.
  A detectron2 detector with another number of anchors per location fills only the RPN's conv,
  so it needs ``MODEL.WEIGHTS_STRICT False`` (its objectness and delta layers then start random).
- every file is read without running code from it (``detpre.utils.safe_load``): ``.pkl`` weights
  hold numpy arrays, ``.pth`` / ``.pyth`` tensors; a file that needs more is refused naming
  ``DETPRE_TRUSTED_FILES``, also on ``--resume`` (a refused checkpoint is not skipped as broken).
"""
import errno
import glob
import logging
import os
import shutil

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

from detpre.errors import DetpreError
from detpre.utils.io import atomic_open, write_bytes_atomic
from detpre.utils.safe_load import UntrustedFileError, load_pickle, load_torch

from .files import checkpoint_candidates, read_checkpoint

__all__ = ["DetpreCheckpointer", "weights_coverage", "READABLE_FORMATS", "MAX_MISSING_SHARE"]

logger = logging.getLogger(__name__)

READABLE_FORMATS = (
    "detpre reads: .pth (torch.save of a state dict or of {'model': state dict}, e.g. a "
    "model_final.pth), .pkl (detectron2 model zoo, tools/convert_pretrained.py exports, Caffe2 "
    "pickles of numpy arrays) and .pyth (pycls)")

# A pretrained part may miss at most this share of its weights (e.g. a renamed norm layer).
MAX_MISSING_SHARE = 0.1

# The FPN's top block is a part of its own: RetinaNet's P6/P7 convs have no counterpart in an R-CNN
# FPN (a max-pool), so a SoCo export (R-CNN FPN) fills RetinaNet's FPN but not its top block.
_PARTS = {
    "backbone": lambda k: k.startswith("backbone.") and not k.startswith(("backbone.fpn_", "backbone.top_block.")),
    "FPN": lambda k: k.startswith("backbone.fpn_"),
    "FPN top block": lambda k: k.startswith("backbone.top_block."),
    "RPN": lambda k: k.startswith("proposal_generator."),
    "box head": lambda k: k.startswith("roi_heads.box_head."),
}


def weights_coverage(model_keys, missing_keys, incorrect_shapes):
    """Per part ``{"total", "loaded", "shape_mismatch": [(key, ckpt shape, model shape)]}``, only
    for parts the checkpoint holds (something loaded or has the wrong shape)."""
    missing = set(missing_keys)
    out = {}
    for part, belongs in _PARTS.items():
        keys = [k for k in model_keys if belongs(k) and not k.endswith("num_batches_tracked")]
        wrong = [s for s in incorrect_shapes if belongs(s[0])]
        loaded = sum(k not in missing for k in keys)
        if keys and (loaded or wrong):
            out[part] = {"total": len(keys), "loaded": loaded, "shape_mismatch": wrong}
    return out


def _os_error(e):
    """The first ``OSError`` in ``e``'s chain (``__cause__`` / ``__context__``), or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _save_failed(save_file, err):
    """One line for a checkpoint that could not be written: why, the free space, what to do."""
    folder = os.path.dirname(os.path.abspath(save_file))
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free there"
    except OSError:
        free = "free space unknown"
    try:
        with open(os.path.join(folder, "last_checkpoint")) as f:
            kept = f"the previous checkpoint {os.path.join(folder, f.read().strip())} is kept"
    except OSError:
        kept = "no earlier checkpoint"
    full = err.errno in (errno.ENOSPC, errno.EDQUOT)
    todo = ("free space on that disk (or move OUTPUT_DIR to one with room)" if full
            else "fix the folder (permissions, mount)")
    return (f"cannot write checkpoint {save_file}: {err.strerror or err} ({free}); {kept}; "
            f"{todo}, then resume with --resume")


class DetpreCheckpointer(DetectionCheckpointer):
    def __init__(self, model, save_dir="", *, weights_strict=True, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.weights_strict = bool(weights_strict)
        self._resolved = None  # (path, loaded data or None) of the newest intact checkpoint

    # ---- writing ------------------------------------------------------------------------
    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        try:
            with atomic_open(save_file, "wb") as f:
                torch.save(data, f)
            self.tag_last_checkpoint(basename)
        except Exception as e:  # torch reports a full disk as "unexpected pos", the OSError in its chain
            err = _os_error(e)
            if err is None:
                raise
            raise DetpreError(_save_failed(save_file, err)) from e
        self._resolved = (save_file, None)

    def tag_last_checkpoint(self, last_filename_basename):
        write_bytes_atomic(os.path.join(self.save_dir, "last_checkpoint"),
                           last_filename_basename.encode())

    # ---- resuming -----------------------------------------------------------------------
    def _tagged(self):
        try:
            with open(os.path.join(self.save_dir, "last_checkpoint")) as f:
                return f.read().strip()
        except OSError:
            return ""

    def _resolve(self):
        """The newest checkpoint of ``save_dir`` that loads; warns about every newer one."""
        if self._resolved is not None:
            return self._resolved[0]
        if self.save_to_disk:  # temporary files of a save that was killed
            for tmp in glob.glob(os.path.join(glob.escape(self.save_dir), ".*.pth.*.tmp")):
                os.remove(tmp)
        skipped = []
        for path in checkpoint_candidates(self.save_dir, self._tagged()):
            try:
                data = read_checkpoint(path)
            except UntrustedFileError:  # not broken: skipping it would restart the run
                raise
            except Exception as e:
                skipped.append(f"{os.path.basename(path)} ({type(e).__name__}: {e})")
                continue
            if skipped:
                logger.warning("--resume: %s cannot be loaded; resuming from %s, the newest "
                               "intact checkpoint", "; ".join(skipped), path)
            self._resolved = (path, data)
            return path
        if skipped:
            logger.warning("--resume: no checkpoint in %s loads (%s); starting from MODEL.WEIGHTS",
                           self.save_dir, "; ".join(skipped))
        self._resolved = ("", None)
        return ""

    def get_checkpoint_file(self):
        return self._resolve()

    def has_checkpoint(self):
        return bool(self.save_dir) and bool(self._resolve())

    # ---- loading ------------------------------------------------------------------------
    def load(self, path, *args, **kwargs):
        if path and "://" not in path and not os.path.isfile(path):
            raise DetpreError(f"{path}: no such checkpoint file (MODEL.WEIGHTS / --weights); give "
                              "an existing .pth/.pkl, a detectron2:// model-zoo path, or '' for "
                              "random initialization")
        self._loading = path
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename):
        if self._resolved is not None and self._resolved[0] == filename and self._resolved[1]:
            data, self._resolved = self._resolved[1], (filename, None)  # verified while resolving
            return data
        try:
            data = self._read_file(filename)
        except UntrustedFileError:
            raise
        except Exception as e:
            reason = (str(e).strip().splitlines() or [""])[0][:200]
            raise DetpreError(f"{filename} is not a checkpoint detpre can read ({type(e).__name__}: "
                              f"{reason}); {READABLE_FORMATS}") from e
        model = data.get("model") if isinstance(data, dict) else None
        if not isinstance(model, dict):
            raise DetpreError(f"{filename} holds no state dict; {READABLE_FORMATS}")
        bad = [k for k, v in model.items() if not isinstance(v, (torch.Tensor, np.ndarray))]
        if bad:
            raise DetpreError(f"{filename} is not a checkpoint: entry {bad[0]!r} is a "
                              f"{type(model[bad[0]]).__name__}, not a weight array; {READABLE_FORMATS}")
        return data

    def _read_file(self, filename):
        """detectron2's ``DetectionCheckpointer._load_file`` (model-zoo, Caffe2 and pycls layouts)
        with its ``pickle.load`` / ``torch.load`` replaced by the safe readers."""
        if filename.endswith(".pkl"):
            data = load_pickle(filename, kind="weights .pkl")
            if "model" in data and "__author__" in data:  # detectron2 model zoo
                self.logger.info("Reading a file from '%s'", data["__author__"])
                return data
            if "blobs" in data:  # Caffe2 / Detectron1 detection models; ImageNet ones have none
                data = data["blobs"]
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        data = load_torch(filename, kind="checkpoint")
        if filename.endswith(".pyth"):  # pycls
            assert "model_state" in data, "pycls checkpoints must contain 'model_state'"
            state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        return data if "model" in data else {"model": data}

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        if incompatible is not None:
            self._check_coverage(incompatible)
        return incompatible

    def _check_coverage(self, incompatible):
        cov = weights_coverage(list(self.model.state_dict()), incompatible.missing_keys,
                               incompatible.incorrect_shapes)
        if not cov:
            return
        report = ", ".join(f"{p} {c['loaded']}/{c['total']}" for p, c in cov.items())
        logger.info("Weights loaded per pretrained part: %s", report)
        short = {p: c for p, c in cov.items() if c["total"] - c["loaded"] > MAX_MISSING_SHARE * c["total"]}
        if not short:
            return
        details = []
        for p, c in short.items():
            ex = c["shape_mismatch"][:2]
            shapes = "; e.g. " + ", ".join(f"{k}: {tuple(a)} in the file vs {tuple(b)} in the model"
                                           for k, a, b in ex) if ex else ""
            details.append(f"{p}: {c['total'] - c['loaded']} of {c['total']} weights not loaded"
                           f" ({len(c['shape_mismatch'])} with other shapes{shapes})")
        source = getattr(self, "_loading", "") or "MODEL.WEIGHTS"
        msg = (f"{source}: the weights fill only part of the pretrained model parts ({'; '.join(details)}); "
               f"coverage {report}. The file was made for another architecture/config")
        if self.weights_strict:
            raise DetpreError(msg + "; fix the config to match it, or set MODEL.WEIGHTS_STRICT False "
                              "to train with those weights randomly initialized")
        logger.warning("%s; MODEL.WEIGHTS_STRICT is off, training anyway", msg)
