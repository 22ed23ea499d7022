"""
A method is declared in one place, its meta-architecture class. Every other part of detpre (the
loader, the trainer, the export, the job pipeline, the demo) reads the declaration here:

- ``required_mapper``: the train mapper's name in ``MAPPER_REGISTRY``;
- ``required_hooks``: names in ``HOOK_REGISTRY`` (a tuple, or a classmethod of ``cfg``);
- ``config_groups``: its config-key groups in ``add_detpre_config`` (``MODEL.SOCO``, ``INPUT.SOCO``);
- ``export_detector``: what ``tools/convert_pretrained.py`` exports by default (a
  ``detpre.checkpoint.DETECTOR_PREFIXES`` key);
- ``prerequisites``: what a job computes before training (``detpre.jobs.pipeline.PREREQUISITES``);
- ``trains_on_labels``: it learns from a detection set's annotations (boxes, object crops), so on
  the set fine-tuning is judged on it is compared with random init given the same total iterations;
- ``demo``: ``{name: DemoEntry}``, its rows in ``make demo`` / ``tools/demo.py --methods``.

A method's config then needs only ``MODEL.META_ARCHITECTURE``; ``DATALOADER.MAPPER`` /
``DETPRE.HOOKS`` remain for detectron2 meta-architectures (which declare nothing) and for extra
hooks. Adding a method is its meta-architecture file (with this declaration) and its configs.
"""
from collections import OrderedDict
from typing import NamedTuple

from detectron2.modeling import META_ARCH_REGISTRY

from detpre.errors import DetpreError

__all__ = ["DemoEntry", "declared", "declared_mapper", "declared_hooks", "trains_on_judged_labels",
           "detpre_methods", "demo_entries"]


class DemoEntry(NamedTuple):
    """A method's row in the demo: its config on the demo data, what its export gives the demo's
    Mask R-CNN ("" = the method's ``export_detector``), seconds per pretraining iteration on one
    core of the reference CPU (for the time printed before the demo starts), and a line printed
    under the table when its row needs reading with it."""

    config: str
    s_per_iter: float
    detector: str = ""
    note: str = ""


def _arch(name):
    try:
        return META_ARCH_REGISTRY.get(name)
    except KeyError:  # build_model reports an unknown meta-architecture
        return None


def declared(cfg_or_arch, attr, default=None):
    """A declaration of the method of a config (its ``MODEL.META_ARCHITECTURE``) or of a
    meta-architecture name; ``default`` for detectron2's own and unknown ones. A callable
    declaration is called with the config."""
    cfg = None if isinstance(cfg_or_arch, str) else cfg_or_arch
    arch = _arch(cfg_or_arch if cfg is None else cfg.MODEL.META_ARCHITECTURE)
    value = getattr(arch, attr, default)
    if callable(value) and not isinstance(value, type):
        if cfg is None:
            raise TypeError(f"{attr} of {cfg_or_arch} depends on the config: pass the config")
        return value(cfg)
    return value


def declared_mapper(cfg):
    """The train mapper's name: ``DATALOADER.MAPPER``, or "" there the one the meta-architecture
    requires ("" = detectron2's ``DatasetMapper``). Naming another mapper than required fails."""
    required = declared(cfg, "required_mapper", "")
    name = cfg.DATALOADER.MAPPER
    if required and name and name != required:
        raise DetpreError(
            f"MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE} needs the mapper {required!r} "
            f"but DATALOADER.MAPPER is {name!r}; set DATALOADER.MAPPER to {required!r} or remove it")
    return name or required


def declared_hooks(cfg):
    """``DETPRE.HOOKS`` followed by the hooks the meta-architecture requires that it lacks."""
    hooks = list(cfg.DETPRE.HOOKS)
    return hooks + [h for h in declared(cfg, "required_hooks", ()) if h not in hooks]


def trains_on_judged_labels(pretrain_cfg, finetune_cfg) -> bool:
    """True when ``pretrain_cfg``'s method learns from the annotations (``trains_on_labels``: boxes,
    object crops) of a data set ``finetune_cfg`` trains on: its gain over random init then mixes the
    pretraining with more iterations on the same labels, so it is compared with random init given
    the same total iterations too."""
    shared = set(pretrain_cfg.DATASETS.TRAIN) & set(finetune_cfg.DATASETS.TRAIN)
    return bool(shared) and bool(declared(pretrain_cfg, "trains_on_labels", False))


def detpre_methods():
    """``{meta-architecture name: class}`` of detpre's methods, in registration order."""
    return OrderedDict((name, cls) for name, cls in META_ARCH_REGISTRY
                       if getattr(cls, "__module__", "").startswith("detpre."))


def demo_entries():
    """``{demo name: (meta-architecture name, DemoEntry with its detector filled)}`` of every
    method, in registration order."""
    out = OrderedDict()
    for arch, cls in detpre_methods().items():
        for name, entry in getattr(cls, "demo", {}).items():
            if name in out:
                raise DetpreError(f"demo name {name!r} is declared by {out[name][0]} and {arch}")
            out[name] = (arch, entry._replace(detector=entry.detector or getattr(cls, "export_detector",
                                                                                   "mask_rcnn")))
    return out
