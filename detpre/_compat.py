"""
The one place where detpre adapts to the installed detectron2.

detpre runs on detectron2 v0.6 either as a full build or as the patched pure-Python wheel that
``scripts/build_detectron2_wheel.py`` makes (no compiled ops: its ``detectron2/_C.py`` is
detpre's placeholder). That wheel fixes v0.6's uses of APIs that numpy 2, Pillow >= 10 and
setuptools >= 81 removed in its sources, so nothing is patched at import time; this module only
reads which build is installed.
"""
import importlib

__all__ = ["HAS_COMPILED_OPS", "coco_evaluator_kwargs"]


def _load_c():
    try:
        return importlib.import_module("detectron2._C")
    except ImportError:
        return None


HAS_COMPILED_OPS = _load_c() is not None and not getattr(_load_c(), "DETPRE_PLACEHOLDER", False)


def coco_evaluator_kwargs():
    """``COCOEvaluator`` needs ``use_fast_impl=False`` without the compiled fast COCOeval."""
    return {} if HAS_COMPILED_OPS else {"use_fast_impl": False}
