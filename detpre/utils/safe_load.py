"""
The one place detpre reads files that can run code when read: pickles (``.pkl``, ``.pth``) and
YAML configs. Unpickling can call any importable function, and a ``!!python/object`` YAML tag can
too, so a file a user downloaded or was sent could run code just by being named in a config.

- ``.pth`` (checkpoints, weights): ``torch.load(weights_only=True)``: tensors, plain containers and
  numbers, plus numpy arrays and scalars (``add_safe_globals``), which detectron2's checkpointer
  accepts in a state dict. Everything detpre writes is that.
- ``.pkl`` (model-zoo weights, exports, proposal files): ``SafeUnpickler``: dicts, lists, tuples,
  strings, numbers, numpy arrays and dtypes, nothing else.
- configs: ``yaml.safe_load`` (``detpre.config.DetpreCfgNode``); the configs that ship with detpre and
  detectron2 are trusted like their code.

A file that needs more is refused with one line naming it and the switch: the environment variable
``DETPRE_TRUSTED_FILES``, an ``os.pathsep``-separated list of files or folders whose files are read
fully (``pickle.load``, ``torch.load(weights_only=False)``, ``yaml.unsafe_load``). The job runner's
subprocesses inherit it.
"""
import collections
import importlib
import os
import pickle
import re
import warnings
from typing import Any, Dict, Tuple

from detpre.errors import DetpreError

__all__ = ["TRUST_ENV", "UntrustedFileError", "RefusedGlobal", "SafeUnpickler", "is_trusted", "is_trusted_config",
           "refusal",
           "load_pickle", "safe_pickle_load", "load_torch"]

TRUST_ENV = "DETPRE_TRUSTED_FILES"


class UntrustedFileError(DetpreError):
    """A file needs more than the safe readers allow and is not listed in ``DETPRE_TRUSTED_FILES``."""


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for something other than numpy arrays and plain containers."""

    def __init__(self, name):
        super().__init__(f"it asks for {name}")
        self.name = name


def _under(path, roots):
    if not isinstance(path, (str, os.PathLike)):
        return False
    real = os.path.realpath(path)
    for root in roots:
        root = os.path.realpath(os.path.expanduser(root))
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return True
    return False


def is_trusted(path) -> bool:
    """Whether ``path`` is, or lies under, an entry of ``DETPRE_TRUSTED_FILES`` (symlinks resolved;
    relative entries are relative to the current directory)."""
    return _under(path, [e.strip() for e in os.environ.get(TRUST_ENV, "").split(os.pathsep) if e.strip()])


def is_trusted_config(path) -> bool:
    """``is_trusted``, or a config that ships with the code (detpre's ``configs/``, detectron2's model
    zoo): as trusted as the code itself, and detectron2's RetinaNet configs (and detpre's copy) build
    their anchor sizes with a ``!!python/object/apply:eval`` tag."""
    import detectron2

    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    shipped = [os.path.join(os.path.dirname(detectron2.__file__), "model_zoo", "configs")]
    if os.path.isfile(os.path.join(checkout, "setup.py")) and os.path.isdir(os.path.join(checkout, "detpre")):
        shipped.append(os.path.join(checkout, "configs"))  # detpre's checkout, not a site-packages/configs
    return is_trusted(path) or _under(path, shipped)


def refusal(path, what, kind, verb="unpickle", holds="arrays, numbers, strings, containers") -> UntrustedFileError:
    """The one-line refusal: the file, what it asked for, and how to trust it."""
    return UntrustedFileError(
        f"{path}: refused to {verb}: {what}, which could run code and which a {kind} does not need "
        f"({holds}); if the file comes from a source you trust, add it (or its folder) to the "
        f"environment variable {TRUST_ENV}")


def _core(submodule):
    """numpy's ``_core.<submodule>`` (numpy 2), or ``core.<submodule>`` (numpy 1)."""
    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{submodule}")


def _numpy(name):
    import numpy as np

    return getattr(np, name)


# (module, name) a pickle of numpy arrays refers to, numpy 1 and 2 spellings and Python 2's
_ALLOWED = {
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
    ("_codecs", "encode"): lambda: importlib.import_module("_codecs").encode,  # bytes in protocol 2
    ("builtins", "bytearray"): lambda: bytearray,
    ("__builtin__", "bytearray"): lambda: bytearray,
    ("numpy", "ndarray"): lambda: _numpy("ndarray"),
    ("numpy", "dtype"): lambda: _numpy("dtype"),
}
for _m in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_m}.multiarray", "_reconstruct")] = lambda: _core("multiarray")._reconstruct
    _ALLOWED[(f"{_m}.multiarray", "scalar")] = lambda: _core("multiarray").scalar
    _ALLOWED[(f"{_m}.numeric", "_frombuffer")] = lambda: _core("numeric")._frombuffer  # protocol 5


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays, dicts, lists, tuples, strings and numbers and nothing
    else (plus ``allow``: ``{(module, name): object}``): a pickle can call any importable function
    while it loads, and a file of weights or boxes has no need to."""

    def __init__(self, *args, allow=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._allow = dict(allow or {})

    def find_class(self, module, name):
        if (module, name) in self._allow:
            return self._allow[(module, name)]
        make = _ALLOWED.get((module, name))
        if make is None:
            raise RefusedGlobal(f"{module}.{name}")
        return make()


def load_pickle(path: str, kind: str = "weights file", allow: Dict[Tuple[str, str], Any] = None) -> Any:
    """``path`` through ``SafeUnpickler`` (Python 2 pickles as latin1, like detectron2's loaders), or
    ``pickle.load`` when trusted. Raises ``UntrustedFileError`` for a refused one; other failures
    (truncated, not a pickle) raise as ``pickle.load`` would."""
    with open(path, "rb") as f:
        if is_trusted(path):
            return pickle.load(f, encoding="latin1")
        try:
            return SafeUnpickler(f, encoding="latin1", allow=allow).load()
        except RefusedGlobal as e:
            raise refusal(path, str(e), kind) from None


def safe_pickle_load(path: str, kind: str = "weights file") -> Any:
    """``load_pickle`` with every failure a one-line ``DetpreError`` naming ``path``."""
    try:
        return load_pickle(path, kind)
    except DetpreError:
        raise
    except Exception as e:  # truncated, not a pickle
        raise DetpreError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None


_TORCH_NUMPY = []


def _allow_numpy_in_torch():
    """numpy arrays and scalars for ``weights_only`` (once, process-wide: the ``safe_globals`` context
    is not thread-safe, and these types build nothing but arrays)."""
    if _TORCH_NUMPY:
        return
    import numpy as np
    import torch

    mult = _core("multiarray")
    _TORCH_NUMPY.extend([np.ndarray, np.dtype, mult._reconstruct, mult.scalar,
                         (mult._reconstruct, "numpy.core.multiarray._reconstruct"),
                         (mult.scalar, "numpy.core.multiarray.scalar")])
    # a dtype is built (its state set) as an instance of its class: bool, int, float, complex, str, bytes
    _TORCH_NUMPY.extend(sorted({type(np.dtype(c)) for c in "?bhilqBHILQefdgFDGUS"}, key=str))
    torch.serialization.add_safe_globals(_TORCH_NUMPY)


_TORCH_GLOBAL = re.compile(r"(?:GLOBAL|Unsupported class) ([\w.]+)")


def load_torch(path: str, kind: str = "checkpoint", map_location="cpu") -> Any:
    """``torch.load`` of ``path``: ``weights_only=True`` with numpy arrays allowed, or fully when
    trusted. A refused file raises ``UntrustedFileError``; a file torch cannot parse raises
    ``pickle.UnpicklingError`` with torch's reason alone (never its advice to drop ``weights_only``)."""
    import torch

    if is_trusted(path):
        return torch.load(path, map_location=map_location, weights_only=False)
    _allow_numpy_in_torch()
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol: the refusal below says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        found = _TORCH_GLOBAL.search(text)
        if found:
            raise refusal(path, f"it asks for {found.group(1)}", kind,
                          holds="tensors, numpy arrays, numbers, strings, containers") from None
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        reason = next((ln for ln in reversed(lines) if "weights_only" not in ln and "torch.load" not in ln
                       and not ln.endswith("error:")), "not a pickle")
        raise pickle.UnpicklingError(f"torch.load cannot parse it: {reason}") from None
