from .build import build_optimizer
from .lars import LARS

__all__ = ["build_optimizer", "LARS"]
