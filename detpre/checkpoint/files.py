"""
Is a checkpoint file whole? ``checkpoint_problem`` loads it; ``is_finished`` is what "this run is
done" means everywhere (``--resume``, job runners): a ``model_final.pth`` that loads. Read with
``safe_load.load_torch``: any ``model_*.pth`` in an output folder may have been put there by
someone else, and finding out whether a run finished must not run code from it.
"""
import os
import re

from detpre.utils.safe_load import load_torch

__all__ = ["read_checkpoint", "checkpoint_problem", "is_finished", "checkpoint_candidates"]

_PERIODIC = re.compile(r"^model_(\d{7})\.pth$")


def read_checkpoint(path):
    """The dict a detectron2 ``.pth`` checkpoint holds; raises when it is not one."""
    data = load_torch(path, kind="checkpoint")
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ValueError("no 'model' state dict in it")
    return data


def checkpoint_problem(path):
    """``None`` when ``path`` is a loadable checkpoint, else why not (one line)."""
    if not os.path.isfile(path):
        return "no such file"
    if os.path.getsize(path) == 0:
        return "empty file (the write was interrupted)"
    try:
        read_checkpoint(path)
    except Exception as e:  # truncated zip, pickle errors, foreign content
        return f"{type(e).__name__}: {e}"
    return None


def is_finished(out_dir):
    """True when ``out_dir`` holds a loadable ``model_final.pth`` (a finished training run)."""
    return checkpoint_problem(os.path.join(out_dir, "model_final.pth")) is None


def checkpoint_candidates(out_dir, last=""):
    """Checkpoint files of ``out_dir``, newest first: ``model_final.pth``, then ``model_XXXXXXX.pth``
    by iteration; ``last`` (what ``last_checkpoint`` names) first when it has another name."""
    names = os.listdir(out_dir) if os.path.isdir(out_dir) else []
    periodic = sorted((n for n in names if _PERIODIC.match(n)), reverse=True)
    ordered = (["model_final.pth"] if "model_final.pth" in names else []) + periodic
    if last and last not in ordered and last in names:
        ordered.insert(0, last)
    return [os.path.join(out_dir, n) for n in ordered]
