"""
The teacher side of self-training: build a detectron2 detector from a config + weights (logging
which weights), and label a list of images with it (optionally with TTA) into a COCO json.
"""
import hashlib
import logging
import os

from detectron2.data import DatasetMapper
from detectron2.modeling import build_model

from .coco import categories_from_metadata, resolve_thresholds
from .generate import generate_pseudo_labels
from .tta import build_tta_model

__all__ = ["teacher_config", "build_teacher", "num_classes_of", "label_images"]

logger = logging.getLogger(__name__)


def num_classes_of(cfg):
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        return cfg.MODEL.RETINANET.NUM_CLASSES
    return cfg.MODEL.ROI_HEADS.NUM_CLASSES


def teacher_config(cfg, min_threshold):
    """``cfg`` with test-time score filters no higher than ``min_threshold`` (nothing that the
    pseudo-label threshold keeps is dropped inside the model)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = min(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST, min_threshold)
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = min(cfg.MODEL.RETINANET.SCORE_THRESH_TEST, min_threshold)
    cfg.freeze()
    return cfg


def build_teacher(cfg, weights):
    """A detector built from ``cfg`` with ``weights`` loaded, in eval mode."""
    if not weights:
        raise ValueError("no teacher weights: pass --weights (or MODEL.WEIGHTS) of a trained detector")
    if "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"teacher weights not found: {weights}")
    from detpre.checkpoint import DetpreCheckpointer

    model = build_model(cfg)
    DetpreCheckpointer(model, weights_strict=cfg.MODEL.WEIGHTS_STRICT).load(weights)
    logger.info("Teacher weights: %s", weights)
    return model.eval()


def _weights_id(weights):
    if not weights or not os.path.isfile(weights):
        return weights or ""
    st = os.stat(weights)
    return hashlib.sha1(f"{os.path.abspath(weights)}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]


def label_images(cfg, dicts, output, *, model=None, weights=None, score_threshold=None,
                 class_thresholds=None, batch_size=None, chunk_size=None, tta=False,
                 tta_min_sizes=None, tta_flip=True, num_workers=0, progress=True, max_chunks=None,
                 class_source=None):
    """
    Pseudo-label ``dicts`` into the COCO json ``output`` with the teacher ``model`` (or one built
    from ``cfg`` + ``weights``). Thresholds default to MODEL.SELF_TRAINING.SCORE_THRESHOLD /
    CLASS_THRESHOLDS; categories come from ``class_source`` data sets (default DATASETS.TRAIN).
    """
    st = cfg.MODEL.SELF_TRAINING
    k = num_classes_of(cfg)
    thresholds = resolve_thresholds(st.SCORE_THRESHOLD if score_threshold is None else score_threshold,
                                    st.CLASS_THRESHOLDS if class_thresholds is None else class_thresholds, k)
    cfg = teacher_config(cfg, float(thresholds.min()))
    weights = weights if weights is not None else cfg.MODEL.WEIGHTS
    if model is None:
        model = build_teacher(cfg, weights)
    if tta:
        sizes = tuple(tta_min_sizes or cfg.TEST.AUG.MIN_SIZES)
        model = build_tta_model(cfg, model, sizes, cfg.TEST.AUG.MAX_SIZE, tta_flip)
        mapper = DatasetMapper(cfg, is_train=False, augmentations=[])
    else:
        mapper = DatasetMapper(cfg, is_train=False)
    info = {"teacher_weights": weights or "", "teacher_weights_id": _weights_id(weights),
            "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
            "tta": ({"min_sizes": list(tta_min_sizes or cfg.TEST.AUG.MIN_SIZES), "flip": bool(tta_flip)}
                    if tta else None)}
    categories = categories_from_metadata(class_source or cfg.DATASETS.TRAIN, k)
    return generate_pseudo_labels(
        model, dicts, output, mapper=mapper, categories=categories, thresholds=thresholds,
        batch_size=batch_size or st.LABEL_BATCH_SIZE, chunk_size=chunk_size, num_workers=num_workers,
        with_masks=cfg.MODEL.MASK_ON, info=info, progress=progress, max_chunks=max_chunks)
