"""Montage (jigsaw) pre-training data: sample extraction, its json cache, montage layout."""
from .extract import GROUPS, aspect_group, expand_box, extract_samples
from .montage import CELL_NAMES, assemble_montage, fit_to_cell, montage_cells, split_point
from .samples_file import (
    ensure_samples,
    extract_from_config,
    extraction_params,
    load_samples,
    num_classes_of,
    save_samples,
)

__all__ = [k for k in globals().keys() if not k.startswith("_")]
