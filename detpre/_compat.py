"""
The one place where detpre adapts to the installed detectron2.

detpre runs on two detectron2s: v0.6 (its last release, 2021), as the patched pure-Python wheel
that ``scripts/build_detectron2_wheel.py`` makes or as a full build, and a build of detectron2's
git main, which is what detectron2's install page now asks for. Where their APIs differ, detpre
calls the function here, which takes either shape. Two functions of detectron2 are wrapped at
import, here only: ``create_ddp_model`` (CPU and Slurm device ids) and ``read_image`` (16-bit
images). docs/DESIGN.md lists what detpre needs of a detectron2.
"""
import importlib
import importlib.util
import inspect

__all__ = ["HAS_COMPILED_OPS", "DETPRE_BUILD", "coco_evaluator_kwargs", "write_metrics",
           "replace_data_loader_iter", "set_local_process_group", "reset_local_process_group"]


def _load_c():
    try:
        return importlib.import_module("detectron2._C")
    except ImportError:
        return None


HAS_COMPILED_OPS = _load_c() is not None and not getattr(_load_c(), "DETPRE_PLACEHOLDER", False)


# detpre's wheel carries ``detectron2/_detpre_build.py`` (its patch list); any other detectron2
# (an official v0.6 build, a build of main) does not.
DETPRE_BUILD = importlib.util.find_spec("detectron2._detpre_build") is not None


def coco_evaluator_kwargs():
    """``COCOEvaluator`` needs ``use_fast_impl=False`` without the compiled fast COCOeval."""
    return {} if HAS_COMPILED_OPS else {"use_fast_impl": False}


def write_metrics(loss_dict, data_time, iteration, prefix=""):
    """detectron2's ``SimpleTrainer.write_metrics`` (losses, data time -> the event storage).
    v0.6: ``(loss_dict, data_time, prefix="")``; main (2023-): ``(loss_dict, data_time,
    cur_iter, prefix="")``, which also records each rank's ``rank_data_time``."""
    from detectron2.engine import SimpleTrainer

    if "cur_iter" in inspect.signature(SimpleTrainer.write_metrics).parameters:
        SimpleTrainer.write_metrics(loss_dict, data_time, iteration, prefix)
    else:
        SimpleTrainer.write_metrics(loss_dict, data_time, prefix)


def replace_data_loader_iter(step, new_iter):
    """Make a ``SimpleTrainer`` draw its next batches from ``new_iter``; returns the iterator it
    drew from (None if it had none yet). v0.6 keeps the iterator in the attribute
    ``_data_loader_iter`` (made in ``__init__``); main makes it lazily behind a read-only property
    of that name, over ``_data_loader_iter_obj``."""
    if isinstance(getattr(type(step), "_data_loader_iter", None), property):
        old, step._data_loader_iter_obj = getattr(step, "_data_loader_iter_obj", None), new_iter
    else:
        old, step._data_loader_iter = getattr(step, "_data_loader_iter", None), new_iter
    return old


# ---------------------------------------------------------------------------------------------
# Distributed training on CPU and under torchrun/Slurm (issue #17).
#
# detectron2 v0.6 assumes one spawned process per GPU: ``launch``'s worker asserts CUDA and
# uses NCCL, and ``create_ddp_model`` (called by ``DefaultTrainer``) passes
# ``device_ids=[local rank]``, which DistributedDataParallel rejects for a CPU model. The code
# below is the only place where detpre reaches into detectron2 for that (``create_ddp_model`` is
# wrapped once, at import); with CUDA and detectron2's own launch it does what detectron2 does.
# ---------------------------------------------------------------------------------------------
def _ddp_device_ids(model):
    """``device_ids`` for DistributedDataParallel: None for a CPU model, else the model's GPU
    (detectron2 assumes GPU = local rank, untrue when Slurm shows each task only its own GPU)."""
    import torch

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return None if device.type != "cuda" else [device.index if device.index is not None
                                              else torch.cuda.current_device()]


def _install_ddp_device_ids():
    """Make ``detectron2.engine.defaults.create_ddp_model`` (what ``DefaultTrainer`` calls)
    choose ``device_ids`` from the model's device when the caller gives none."""
    import detectron2.engine.defaults as d2_defaults

    original = d2_defaults.create_ddp_model
    if getattr(original, "detpre_device_aware", False):
        return

    def create_ddp_model(model, *, fp16_compression=False, **kwargs):
        if "device_ids" not in kwargs:
            kwargs["device_ids"] = _ddp_device_ids(model)
        return original(model, fp16_compression=fp16_compression, **kwargs)

    create_ddp_model.detpre_device_aware = True
    create_ddp_model.__doc__ = original.__doc__
    d2_defaults.create_ddp_model = create_ddp_model


def set_local_process_group(machine_ranks, machine):
    """
    detectron2's per-machine process group (``comm._LOCAL_PROCESS_GROUP``, which
    ``comm.get_local_rank/get_local_size`` read), created as v0.6's ``launch`` worker creates it:
    every process calls ``new_group`` for every machine, in the same order, and keeps its own.
    ``machine_ranks``: the global ranks of each machine; ``machine``: this process's index.
    """
    import torch.distributed as dist
    from detectron2.utils import comm

    if comm._LOCAL_PROCESS_GROUP is not None:
        raise RuntimeError("detectron2's local process group already exists")
    for i, ranks in enumerate(machine_ranks):
        group = dist.new_group(list(ranks))
        if i == machine:
            comm._LOCAL_PROCESS_GROUP = group


def reset_local_process_group():
    from detectron2.utils import comm

    comm._LOCAL_PROCESS_GROUP = None
    comm._get_global_gloo_group.cache_clear()


def _install_wide_image_reader():
    """detectron2's ``read_image`` clips 16-bit grayscale images at 255 (they read near-white):
    its own mappers (``DatasetMapper``, used to fine-tune and evaluate) get detpre's reader for
    images read in a colour format, which scales them to 8 bits (``detpre.data.image_io``) and
    calls detectron2's for the rest. Reads as "L" or raw (``None``: label maps) are unchanged."""
    from detectron2.data import detection_utils

    original = detection_utils.read_image
    if getattr(original, "detpre_wide_images", False):
        return

    def read_image(file_name, format=None):
        if format in (None, "L"):  # raw values (label maps, depth): detectron2's, unchanged
            return original(file_name, format=format)
        from detpre.data.image_io import read_image as read_any_depth

        return read_any_depth(file_name, format, d2_read_image=original)

    read_image.detpre_wide_images = True
    read_image.__doc__ = original.__doc__
    detection_utils.read_image = read_image


_install_ddp_device_ids()
_install_wide_image_reader()
