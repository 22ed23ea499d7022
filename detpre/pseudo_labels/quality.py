"""
How good are a teacher's pseudo-labels? Against the unlabeled set's ground truth, where one exists
(the demo writes it; see ``detpre.data.datasets.demo_gen``): precision and recall of the boxes kept
at the score threshold (IoU >= 0.5, same class, greedy by score), their curve over thresholds, and
the teacher's COCO box AP on the unlabeled images. Evaluation only: nothing here feeds training.

Greedy matching in descending score order decides each box before any lower-scored one, so the
matching of the boxes above a threshold is the prefix of the matching of all boxes: one matching
of the teacher's detections (down to its test threshold) gives every point of the curve.
"""
import contextlib
import io
import json
import math
import os
from collections import defaultdict

import numpy as np

from detpre.errors import DetpreError

__all__ = ["box_iou_xywh", "greedy_match", "precision_recall", "precision_recall_curve",
           "pseudo_label_quality", "teacher_box_ap", "CURVE_THRESHOLDS"]

CURVE_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 ... 0.95


def box_iou_xywh(a, b):
    """IoU matrix of boxes ``a`` (N x 4) and ``b`` (M x 4), both COCO [x, y, w, h]."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    ax1, ay1, bx1, by1 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax1[:, None], bx1[None]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(ay1[:, None], by1[None]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def greedy_match(detections, groundtruth, iou_threshold=0.5):
    """
    ``detections``: ``[(image, category, [x, y, w, h], score)]``; ``groundtruth``: ``[(image,
    category, [x, y, w, h])]``. In descending score order each detection takes the unmatched
    ground-truth box of its image and class with the highest IoU >= ``iou_threshold``. Returns
    ``(scores, is_true_positive)`` sorted by descending score, and the number of ground-truth boxes.
    """
    gt = defaultdict(list)
    for image, cat, box in groundtruth:
        gt[(image, cat)].append(box)
    gt = {k: np.asarray(v, np.float64) for k, v in gt.items()}
    taken = {k: np.zeros(len(v), bool) for k, v in gt.items()}
    order = sorted(range(len(detections)), key=lambda i: -float(detections[i][3]))  # stable
    scores, tp = np.empty(len(order)), np.zeros(len(order), bool)
    for j, i in enumerate(order):
        image, cat, box, score = detections[i]
        scores[j] = float(score)
        key = (image, cat)
        if key not in gt:
            continue
        iou = np.where(taken[key], -1.0, box_iou_xywh([box], gt[key])[0])
        best = int(np.argmax(iou))
        if iou[best] >= iou_threshold:
            taken[key][best], tp[j] = True, True
    return scores, tp, len(groundtruth)


def precision_recall(scores, tp, n_gt, threshold):
    """Precision and recall of the detections scoring >= ``threshold`` (a matching's prefix; or
    an array, one threshold per detection); precision is NaN when none is kept, recall NaN
    without ground truth."""
    keep = np.asarray(scores) >= threshold
    n, hits = int(keep.sum()), int(np.asarray(tp)[keep].sum())
    return {"threshold": float(threshold) if np.ndim(threshold) == 0 else None, "kept": n,
            "true_positives": hits, "groundtruth": int(n_gt),
            "precision": hits / n if n else math.nan, "recall": hits / n_gt if n_gt else math.nan}


def precision_recall_curve(scores, tp, n_gt, thresholds=CURVE_THRESHOLDS):
    """``{"threshold": [...], "precision": [...], "recall": [...]}`` over ``thresholds``."""
    pts = [precision_recall(scores, tp, n_gt, t) for t in thresholds]
    return {k: [p[k] for p in pts] for k in ("threshold", "precision", "recall")}


def _load(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DetpreError(f"cannot read the {what} {path} ({e}); regenerate it or pass another file") from None


def _aligned(detections_json, groundtruth_json):
    """Both jsons, and each detection image's ground-truth image id (matched by file name)."""
    det, gt = _load(detections_json, "teacher detections"), _load(groundtruth_json, "ground truth")
    by_name = {i["file_name"]: i["id"] for i in gt["images"]}
    by_base = {os.path.basename(i["file_name"]): i["id"] for i in gt["images"]}
    image_of = {}
    for im in det["images"]:
        gid = by_name.get(im["file_name"], by_base.get(os.path.basename(im["file_name"])))
        if gid is None:
            raise DetpreError(f"{detections_json}: image {im['file_name']!r} is not in the ground truth "
                              f"{groundtruth_json}; evaluate against the ground truth of the labeled images")
        image_of[im["id"]] = gid
    return det, gt, image_of


def pseudo_label_quality(detections_json, groundtruth_json, threshold, iou_threshold=0.5,
                         thresholds=CURVE_THRESHOLDS):
    """
    Pseudo-label precision / recall at ``threshold`` (a float, or ``{category_id: threshold}``)
    and their curve over ``thresholds``, from the teacher's detections json (a pseudo-label json
    written with a low threshold) and the ground truth of its images (crowd boxes left out).
    Curve points below the detections' own threshold are left out (boxes there were dropped).
    ``class_agnostic``: the same at the threshold with classes ignored (boxes that find an object).
    """
    det, gt, image_of = _aligned(detections_json, groundtruth_json)
    images = set(image_of.values())
    gts = [(a["image_id"], a["category_id"], a["bbox"]) for a in gt["annotations"]
           if a["image_id"] in images and not a.get("iscrowd", 0)]
    dets = [(image_of[a["image_id"]], a["category_id"], a["bbox"], a["score"]) for a in det["annotations"]]
    scores, tp, n_gt = greedy_match(dets, gts, iou_threshold)
    # the same boxes with every class one: how many find an object, whatever its class
    _, tp_agnostic, _ = greedy_match([(i, 0, b, sc) for i, _, b, sc in dets], [(i, 0, b) for i, _, b in gts],
                                     iou_threshold)
    if isinstance(threshold, dict):  # per class: each detection against its class's threshold
        cats = [d[1] for d in sorted(dets, key=lambda d: -float(d[3]))]  # greedy_match's (stable) order
        at_value = np.asarray([threshold[c] for c in cats], np.float64)
    else:
        at_value = threshold
    at = precision_recall(scores, tp, n_gt, at_value)
    agnostic = precision_recall(scores, tp_agnostic, n_gt, at_value)
    at["class_agnostic"] = {k: agnostic[k] for k in ("true_positives", "precision", "recall")}
    if isinstance(threshold, dict):
        at["threshold"] = {str(k): float(v) for k, v in threshold.items()}
    floor = min(det.get("info", {}).get("score_thresholds") or [0.0])
    curve = precision_recall_curve(scores, tp, n_gt, [t for t in thresholds if t >= floor - 1e-9])
    return {**at, "iou_threshold": iou_threshold, "images": len(images), "curve": curve}


def teacher_box_ap(detections_json, groundtruth_json):
    """COCO box AP / AP50 (percent, as detectron2 reports them) of the teacher's detections on
    the images they cover; 0 when it detected nothing."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    det, gt, image_of = _aligned(detections_json, groundtruth_json)
    results = [{"image_id": image_of[a["image_id"]], "category_id": a["category_id"], "bbox": a["bbox"],
                "score": a["score"]} for a in det["annotations"]]
    if not results:
        return {"AP": 0.0, "AP50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(results), "bbox")
        ev.params.imgIds = sorted(set(image_of.values()))
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": float(ev.stats[0]) * 100, "AP50": float(ev.stats[1]) * 100}
