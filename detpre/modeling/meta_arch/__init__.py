"""One meta-architecture per method, each registered in detectron2's META_ARCH_REGISTRY."""
from . import agnostic, fastmoco, jigsaw, soco, spcl  # noqa: F401  (register)
