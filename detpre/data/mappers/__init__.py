"""
Dataset mappers, one file per method, registered in ``MAPPER_REGISTRY`` and picked by
``DATALOADER.MAPPER``. Importing this package registers them.
"""
from detpre.registry import MAPPER_REGISTRY

from . import fastmoco, jigsaw, reid, self_training, soco  # noqa: F401  (register)
from .build import build_mapper

__all__ = ["MAPPER_REGISTRY", "build_mapper"]
