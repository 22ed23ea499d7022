from .defaults import main, setup
from .trainer import Trainer

__all__ = ["Trainer", "main", "setup"]
