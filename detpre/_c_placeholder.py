"""
Stand-in for ``detectron2._C`` in a pure-Python detectron2 build.

``scripts/build_detectron2_wheel.py`` installs this file as ``detectron2/_C.py``, because
``detectron2.layers`` and ``detectron2.evaluation`` import ``_C`` at module level. detpre needs
none of the compiled ops (rotated boxes, deformable conv, fast COCO eval); using one raises
a clear error instead of a segfault or an obscure ``undefined symbol``.
"""

DETPRE_PLACEHOLDER = True


class CompiledOpMissing(AttributeError, NotImplementedError):
    """Raised for any compiled op; an AttributeError so ``hasattr``/``getattr`` keep working."""


def get_compiler_version():
    return "none (pure-Python detectron2 build, compiled ops not in this build)"


def get_cuda_version():
    return "none (pure-Python detectron2 build)"


def has_cuda():
    return False


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise CompiledOpMissing(
        f"detectron2 compiled op '_C.{name}' is not in this build: this detectron2 is the "
        "pure-Python wheel built by detpre (rotated boxes, deformable conv and the fast COCO "
        "evaluator are unavailable). Use COCOEvaluator(use_fast_impl=False), or install a "
        "detectron2 compiled for your torch/CUDA to use this op."
    )
