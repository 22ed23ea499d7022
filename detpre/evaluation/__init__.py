"""Evaluators, registered by the ``evaluator_type`` a data set's metadata names."""
from . import reid  # noqa: F401  (registers "reid")
from .build import build_evaluator

__all__ = ["build_evaluator"]
