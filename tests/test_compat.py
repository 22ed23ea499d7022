import importlib
import sys
import types

import pytest

import detpre._compat as compat
from detpre import _c_placeholder


@pytest.fixture
def restore_c():
    saved = sys.modules.get("detectron2._C")
    yield
    sys.modules["detectron2._C"] = saved
    importlib.reload(compat)


def test_placeholder_is_detected_and_picks_slow_coco_eval():
    # this environment installs the pure-Python wheel
    assert compat.HAS_COMPILED_OPS is False
    assert compat.coco_evaluator_kwargs() == {"use_fast_impl": False}


def test_placeholder_op_raises_clear_error_and_hasattr_works():
    with pytest.raises(NotImplementedError, match="not in this build"):
        _c_placeholder.nms_rotated
    assert not hasattr(_c_placeholder, "deform_conv_forward")
    assert "pure-Python" in _c_placeholder.get_compiler_version()


def test_compat_does_nothing_when_real_c_exists(restore_c):
    real = types.ModuleType("detectron2._C")
    real.nms_rotated = lambda *a: "compiled"
    sys.modules["detectron2._C"] = real
    importlib.reload(compat)
    assert sys.modules["detectron2._C"] is real
    assert compat.HAS_COMPILED_OPS is True
    assert compat.coco_evaluator_kwargs() == {}


def test_compat_installs_placeholder_when_c_missing(restore_c):
    sys.modules["detectron2._C"] = None  # makes `import detectron2._C` raise ImportError
    importlib.reload(compat)
    assert sys.modules["detectron2._C"] is _c_placeholder
    assert compat.HAS_COMPILED_OPS is False
    import detectron2.evaluation  # noqa: F401  (imports _C at module level)
