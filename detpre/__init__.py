"""
detpre: detection-aligned pretraining for detectron2.

Importing it registers every component (meta-architectures, mappers, hooks, trainers,
evaluators) in detectron2's and detpre's registries. It changes no global state otherwise.
"""
from . import (
    _compat,  # noqa: F401  (first: which detectron2 build is installed)
    evaluation,  # noqa: F401,E402
)
from .config import add_detpre_config, get_detpre_cfg

# registering modules
from .data import mappers  # noqa: F401,E402
from .engine import collapse, hooks, online_teacher, plateau, self_training_hooks, spcl_hooks  # noqa: F401,E402
from .modeling import losses, meta_arch  # noqa: F401,E402

__all__ = ["add_detpre_config", "get_detpre_cfg"]
__version__ = "0.1.0"
