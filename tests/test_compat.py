import importlib
import sys
import types

import pytest
import torch

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


def test_compat_changes_nothing_when_c_missing(restore_c):
    """No import-time shim any more: without ``_C`` detpre only reports "no compiled ops"."""
    sys.modules["detectron2._C"] = None  # makes `import detectron2._C` raise ImportError
    importlib.reload(compat)
    assert sys.modules["detectron2._C"] is None
    assert compat.HAS_COMPILED_OPS is False


def test_installed_detectron2_is_the_patched_wheel():
    """The wheel's patch set: no removed NumPy alias, Image.LINEAR or pkg_resources is left."""
    import inspect

    import numpy as np
    from detectron2.data.transforms import transform
    from detectron2.model_zoo import model_zoo
    from detectron2.structures import masks

    assert "pkg_resources" not in inspect.getsource(model_zoo)
    assert model_zoo.get_config_file("Base-RCNN-FPN.yaml").endswith("Base-RCNN-FPN.yaml")
    assert inspect.signature(transform.ExtentTransform).parameters["interp"].default == 2  # BILINEAR
    bm = masks.polygons_to_bitmask([np.array([0, 0, 4, 0, 4, 4, 0, 4], dtype=float)], 6, 6)
    assert bm.dtype == bool and bm.sum() > 0
    assert masks.BitMasks(torch.zeros(1, 2, 2, dtype=torch.bool)).nonempty().dtype == torch.bool
