from detectron2.data import DatasetMapper

from detpre.registry import MAPPER_REGISTRY


def build_mapper(cfg, is_train=True):
    """The mapper ``DATALOADER.MAPPER`` names, or detectron2's ``DatasetMapper`` for ""."""
    name = cfg.DATALOADER.MAPPER
    if not name:
        return DatasetMapper(cfg, is_train)
    if name not in MAPPER_REGISTRY:
        raise KeyError(
            f"DATALOADER.MAPPER={name!r} is not a registered detpre mapper; "
            f"registered: {sorted(k for k, _ in MAPPER_REGISTRY)}"
        )
    return MAPPER_REGISTRY.get(name)(cfg, is_train)
