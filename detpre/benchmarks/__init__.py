"""
Benchmarks: library functions that measure and return rows (dicts / tuples); the scripts in
``tools/benchmark_*.py`` print them. Training-step benchmarks run the config's real trainer
through one ``StepTimer``.
"""
from .step_timer import DATA, STEP, StepTimer
from .table import markdown_table

__all__ = ["StepTimer", "DATA", "STEP", "markdown_table"]
