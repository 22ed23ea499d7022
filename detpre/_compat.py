"""
The one place where detpre adapts to the installed detectron2.

detpre runs on detectron2 v0.6 either as a full build or as the patched pure-Python wheel that
``scripts/build_detectron2_wheel.py`` makes (no compiled ops: its ``detectron2/_C.py`` is
detpre's placeholder). That wheel fixes v0.6's uses of APIs that numpy 2, Pillow >= 10 and
setuptools >= 81 removed in its sources, so nothing is patched at import time; this module only
reads which build is installed.
"""
import importlib

__all__ = ["HAS_COMPILED_OPS", "coco_evaluator_kwargs", "set_local_process_group",
           "reset_local_process_group"]


def _load_c():
    try:
        return importlib.import_module("detectron2._C")
    except ImportError:
        return None


HAS_COMPILED_OPS = _load_c() is not None and not getattr(_load_c(), "DETPRE_PLACEHOLDER", False)


def coco_evaluator_kwargs():
    """``COCOEvaluator`` needs ``use_fast_impl=False`` without the compiled fast COCOeval."""
    return {} if HAS_COMPILED_OPS else {"use_fast_impl": False}


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


_install_ddp_device_ids()
