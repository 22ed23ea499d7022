"""
A method is declared in one place, its meta-architecture class: ``required_mapper`` (the train
mapper's name in ``MAPPER_REGISTRY``) and ``required_hooks`` (names in ``HOOK_REGISTRY``), each
a class attribute or a classmethod of ``cfg``. The loader and the trainer read them here, so a
method's config needs only ``MODEL.META_ARCHITECTURE``; ``DATALOADER.MAPPER`` / ``DETPRE.HOOKS``
remain for detectron2 meta-architectures (which declare nothing) and for extra hooks.
"""
from detectron2.modeling import META_ARCH_REGISTRY

from detpre.errors import DetpreError

__all__ = ["declared_mapper", "declared_hooks"]


def _declaration(cfg, attr, default):
    try:
        arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    except KeyError:  # build_model reports an unknown meta-architecture
        return default
    value = getattr(arch, attr, default)
    return value(cfg) if callable(value) else value


def declared_mapper(cfg):
    """The train mapper's name: ``DATALOADER.MAPPER``, or "" there the one the meta-architecture
    requires ("" = detectron2's ``DatasetMapper``). Naming another mapper than required fails."""
    required = _declaration(cfg, "required_mapper", "")
    name = cfg.DATALOADER.MAPPER
    if required and name and name != required:
        raise DetpreError(
            f"MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE} needs the mapper {required!r} "
            f"but DATALOADER.MAPPER is {name!r}; set DATALOADER.MAPPER to {required!r} or remove it")
    return name or required


def declared_hooks(cfg):
    """``DETPRE.HOOKS`` followed by the hooks the meta-architecture requires that it lacks."""
    hooks = list(cfg.DETPRE.HOOKS)
    return hooks + [h for h in _declaration(cfg, "required_hooks", ()) if h not in hooks]
