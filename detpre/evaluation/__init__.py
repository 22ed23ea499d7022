"""Evaluators, registered by the ``evaluator_type`` a data set's metadata names."""
from .build import build_evaluator

__all__ = ["build_evaluator"]
