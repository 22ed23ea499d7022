"""
The one place where detpre adapts to the installed detectron2.

detpre runs on detectron2 v0.6 either as a full build or as the pure-Python wheel that
``scripts/build_detectron2_wheel.py`` makes (no compiled ops, ``detectron2/_C.py`` is a
placeholder). Nothing here changes detectron2's behaviour when a full build is installed.
"""
import importlib
import sys

__all__ = ["HAS_COMPILED_OPS", "ensure_detectron2_importable", "coco_evaluator_kwargs"]


def _load_c():
    try:
        return importlib.import_module("detectron2._C")
    except ImportError:
        return None


def ensure_detectron2_importable():
    """
    ``detectron2.layers``/``detectron2.evaluation`` import ``detectron2._C`` at module level.
    When a source tree without any ``_C`` is installed, register detpre's placeholder so that
    ``import detectron2.engine`` works; with a real or placeholder ``_C``, do nothing.
    """
    if _load_c() is None:
        from detpre import _c_placeholder

        sys.modules["detectron2._C"] = _c_placeholder
        import detectron2

        detectron2._C = _c_placeholder


ensure_detectron2_importable()
HAS_COMPILED_OPS = not getattr(_load_c(), "DETPRE_PLACEHOLDER", False)


def coco_evaluator_kwargs():
    """``COCOEvaluator`` needs ``use_fast_impl=False`` without the compiled fast COCOeval."""
    return {} if HAS_COMPILED_OPS else {"use_fast_impl": False}
