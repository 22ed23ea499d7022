"""
Self-training's pseudo-labels: a teacher detector labels unlabeled images into a COCO json that
registers like any other data set (``DATASETS.COCO``). See ``tools/generate_pseudo_labels.py``.
"""
from .coco import (
    categories_from_metadata,
    instances_to_annotations,
    mask_to_polygons,
    resolve_thresholds,
    write_compact_json,
)
from .filter import detections_floor, filter_pseudo_labels
from .generate import PseudoLabelInterrupted, generate_pseudo_labels, predict_batches, teacher_mode
from .quality import greedy_match, precision_recall, precision_recall_curve, pseudo_label_quality, teacher_box_ap
from .teacher import build_teacher, label_images, num_classes_of, teacher_config
from .tta import BoxTTA, build_tta_model
from .visualize import draw_pseudo_labels, visualize_pseudo_labels

__all__ = [k for k in dir() if not k.startswith("_")]
