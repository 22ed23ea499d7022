"""
Selective-search proposals for SoCo, computed once offline into detectron2's
precomputed-proposal format (``DATASETS.PROPOSAL_FILES_TRAIN`` + ``MODEL.LOAD_PROPOSALS``).
"""
from .backends import PROPOSAL_BACKENDS, build_backend, dedupe_boxes, register_backend
from .filtering import ProposalFilter
from .generate import compute_proposals, generate_proposals, shard_range
from .metrics import box_iou, proposal_recall
from .proposal_file import merge_proposal_files, read_proposal_file, write_proposal_file
from .selective_search import COLOR_SPACES, PRESETS, selective_search

__all__ = [k for k in globals().keys() if not k.startswith("_")]
