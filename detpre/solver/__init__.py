from .build import build_optimizer
from .lars import LARS
from .lr_scheduler import build_lr_scheduler

__all__ = ["build_optimizer", "build_lr_scheduler", "LARS"]
