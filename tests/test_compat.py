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


@pytest.mark.skipif(not getattr(compat._load_c(), "DETPRE_PLACEHOLDER", False),
                    reason="this detectron2 has its own detectron2._C (compiled ops)")
def test_placeholder_is_detected_and_picks_slow_coco_eval():
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


@pytest.mark.skipif(not compat.DETPRE_BUILD, reason="the installed detectron2 is not detpre's "
                    "build (scripts/build_detectron2_wheel.py): its patch set is not there to check")
def test_installed_detectron2_is_the_patched_wheel():
    """The wheel's patch set: no removed NumPy alias, Image.LINEAR, pkg_resources or
    np.array(copy=False) is left."""
    import inspect

    import numpy as np
    from detectron2.data.transforms import transform
    from detectron2.layers import mask_ops
    from detectron2.model_zoo import model_zoo
    from detectron2.structures import masks

    assert "pkg_resources" not in inspect.getsource(model_zoo)
    assert "copy=False" not in inspect.getsource(mask_ops)
    assert model_zoo.get_config_file("Base-RCNN-FPN.yaml").endswith("Base-RCNN-FPN.yaml")
    assert inspect.signature(transform.ExtentTransform).parameters["interp"].default == 2  # BILINEAR
    bm = masks.polygons_to_bitmask([np.array([0, 0, 4, 0, 4, 4, 0, 4], dtype=float)], 6, 6)
    assert bm.dtype == bool and bm.sum() > 0
    assert masks.BitMasks(torch.zeros(1, 2, 2, dtype=torch.bool)).nonempty().dtype == torch.bool


def _storage_scalars(fn):
    from detectron2.utils.events import EventStorage

    with EventStorage(start_iter=7) as storage:
        fn()
        return {k: v[0] for k, v in storage.latest().items()}


@pytest.mark.parametrize("shape", ["v0.6", "main"])
def test_write_metrics_takes_either_detectron2_signature(monkeypatch, shape):
    """v0.6: write_metrics(loss_dict, data_time, prefix); main: (loss_dict, data_time, cur_iter,
    prefix). Each stand-in records its arguments as the real one would receive them."""
    from detectron2.engine import SimpleTrainer

    calls = []
    if shape == "v0.6":
        def fake(loss_dict, data_time, prefix=""):
            calls.append((dict(loss_dict), data_time, None, prefix))
    else:
        def fake(loss_dict, data_time, cur_iter, prefix=""):
            calls.append((dict(loss_dict), data_time, cur_iter, prefix))
    monkeypatch.setattr(SimpleTrainer, "write_metrics", staticmethod(fake))
    compat.write_metrics({"loss": torch.tensor(1.5)}, 0.25, 7, prefix="st_")
    assert calls == [({"loss": torch.tensor(1.5)}, 0.25, None if shape == "v0.6" else 7, "st_")]


def test_write_metrics_reaches_the_event_storage():
    """The installed detectron2's real write_metrics, whichever shape it has."""
    scalars = _storage_scalars(lambda: compat.write_metrics(
        {"loss_a": torch.tensor(1.0), "loss_b": torch.tensor(2.0)}, 0.5, 7))
    assert scalars["total_loss"] == pytest.approx(3.0)
    assert scalars["loss_a"] == pytest.approx(1.0) and scalars["data_time"] == pytest.approx(0.5)


class _V06Step:
    """v0.6's SimpleTrainer keeps its iterator in a plain attribute."""

    def __init__(self, loader):
        self._data_loader_iter = iter(loader)


class _MainStep:
    """main's SimpleTrainer: a lazily made iterator behind a read-only property."""

    def __init__(self, loader):
        self.data_loader, self._data_loader_iter_obj = loader, None

    @property
    def _data_loader_iter(self):
        if self._data_loader_iter_obj is None:
            self._data_loader_iter_obj = iter(self.data_loader)
        return self._data_loader_iter_obj


@pytest.mark.parametrize("step_cls", [_V06Step, _MainStep], ids=["v0.6", "main"])
def test_replace_data_loader_iter_takes_either_shape(step_cls):
    step = step_cls([1, 2, 3])
    assert next(step._data_loader_iter) == 1
    old = compat.replace_data_loader_iter(step, iter([7, 8]))
    assert next(old) == 2  # the one it drew from, handed back (to be closed)
    assert next(step._data_loader_iter) == 7 and next(step._data_loader_iter) == 8


def test_replace_data_loader_iter_on_the_installed_simple_trainer():
    from detectron2.engine import SimpleTrainer

    model = torch.nn.Linear(1, 1)
    step = SimpleTrainer(model, [1, 2], torch.optim.SGD(model.parameters(), lr=0.1))
    compat.replace_data_loader_iter(step, iter(["a"]))
    assert next(step._data_loader_iter) == "a"
