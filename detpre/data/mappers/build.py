from detectron2.data import DatasetMapper

from detpre.method import declared_mapper
from detpre.registry import MAPPER_REGISTRY


def build_mapper(cfg, is_train=True):
    """The mapper ``DATALOADER.MAPPER`` names or the meta-architecture requires, or detectron2's
    ``DatasetMapper`` when neither names one."""
    name = declared_mapper(cfg)
    if not name:
        return DatasetMapper(cfg, is_train)
    if name not in MAPPER_REGISTRY:
        raise KeyError(
            f"DATALOADER.MAPPER={name!r} is not a registered detpre mapper; "
            f"registered: {sorted(k for k, _ in MAPPER_REGISTRY)}"
        )
    return MAPPER_REGISTRY.get(name)(cfg, is_train)
