"""
Checkpoints, in one place below ``engine/``: what a run writes and reads (``checkpointer``: atomic
saves, safe loads, ``--resume``), whether a run is finished (``files``), and the export of a
detpre pretraining checkpoint as a detectron2 model-zoo file (``export``).
"""
from .checkpointer import MAX_MISSING_SHARE, READABLE_FORMATS, DetpreCheckpointer, weights_coverage
from .export import (
    DETECTOR_PREFIXES,
    coverage_report,
    detector_config,
    export_checked,
    export_weights,
    load_detpre_checkpoint,
    save_model_zoo_file,
    stored_config,
)
from .files import checkpoint_candidates, checkpoint_problem, is_finished, read_checkpoint

__all__ = [
    "DetpreCheckpointer", "weights_coverage", "READABLE_FORMATS", "MAX_MISSING_SHARE",
    "DETECTOR_PREFIXES", "load_detpre_checkpoint", "export_weights", "save_model_zoo_file", "coverage_report",
    "stored_config", "detector_config", "export_checked",
    "read_checkpoint", "checkpoint_problem", "is_finished", "checkpoint_candidates",
]
