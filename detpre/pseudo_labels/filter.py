"""
Pseudo-labels from a teacher's detections: label once at the detector's own test threshold (what
COCO AP and the threshold curve need), then keep the boxes at the pseudo-label thresholds. The
detector runs with the same test threshold either way (``teacher_config`` lowers it to the lowest
threshold asked), so the kept boxes are exactly those ``label_images`` writes at the thresholds.
"""
import json

import numpy as np

from detpre.errors import DetpreError

from .coco import write_compact_json

__all__ = ["detections_floor", "filter_pseudo_labels"]


def detections_floor(cfg, thresholds):
    """The score threshold to label at so that nothing ``thresholds`` keeps, nor anything the
    detector itself outputs at test time, is missing."""
    test = (cfg.MODEL.RETINANET.SCORE_THRESH_TEST if cfg.MODEL.META_ARCHITECTURE == "RetinaNet"
            else cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST)
    return float(min(test, float(np.min(thresholds))))


def filter_pseudo_labels(detections_json, output, thresholds):
    """Write to ``output`` the boxes of ``detections_json`` scoring >= the threshold of their class
    (``thresholds[c]`` for contiguous class ``c`` = the json's ``categories[c]``); ids renumbered."""
    with open(detections_json) as f:
        data = json.load(f)
    thresholds = np.asarray(thresholds, np.float64)
    floor = min(data["info"]["score_thresholds"])
    if len(thresholds) != len(data["categories"]) or thresholds.min() < floor - 1e-12:
        raise DetpreError(f"{detections_json} holds boxes down to score {floor} for {len(data['categories'])} "
                          f"classes; cannot keep thresholds {thresholds.tolist()}: label again at a lower threshold")
    by_cat = {c["id"]: t for c, t in zip(data["categories"], thresholds)}
    anns = [dict(a) for a in data["annotations"] if a["score"] >= by_cat[a["category_id"]]]
    for i, a in enumerate(anns):
        a["id"] = i + 1
    info = {**data["info"], "score_thresholds": thresholds.tolist(), "filtered_from": detections_json}
    write_compact_json({**data, "info": info, "annotations": anns}, output)
    return {"output": output, "images": len(data["images"]), "annotations": len(anns)}
