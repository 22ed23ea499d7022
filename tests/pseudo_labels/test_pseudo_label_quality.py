"""Pseudo-label quality: greedy class-aware matching, precision / recall, curve, COCO AP (hand-checked)."""
import json
import math

import numpy as np
import pytest

from detpre.pseudo_labels import greedy_match, precision_recall, precision_recall_curve, pseudo_label_quality
from detpre.pseudo_labels.quality import box_iou_xywh, teacher_box_ap

# image 1: A, B (class 1), C (class 2); image 2: D (class 1), never detected
GT = [(1, 1, [0, 0, 10, 10]), (1, 1, [20, 0, 10, 10]), (1, 2, [0, 20, 10, 10]), (2, 1, [0, 0, 20, 20])]
DETS = [
    (1, 1, [0, 0, 10, 10], 0.9),   # A: IoU 1 -> TP
    (1, 1, [1, 0, 10, 10], 0.8),   # A again (IoU 0.82, A taken), B: 0 -> FP (duplicate)
    (1, 2, [20, 0, 10, 10], 0.7),  # on B but class 2 -> FP (class-aware)
    (1, 1, [22, 0, 10, 10], 0.6),  # B: IoU 80/120 = 0.67 -> TP
    (1, 2, [0, 20, 10, 10], 0.3),  # C -> TP
    (1, 2, [0, 25, 10, 10], 0.2),  # C taken; IoU 50/150 anyway -> FP
]


def test_iou():
    assert box_iou_xywh([[0, 0, 10, 10]], [[1, 0, 10, 10], [22, 0, 10, 10]])[0] == pytest.approx([90 / 110, 0])
    assert box_iou_xywh([[20, 0, 10, 10]], [[22, 0, 10, 10]])[0, 0] == pytest.approx(80 / 120)


def test_precision_recall_by_hand():
    scores, tp, n_gt = greedy_match(DETS[::-1], GT)  # input order does not matter
    assert n_gt == 4 and scores.tolist() == [0.9, 0.8, 0.7, 0.6, 0.3, 0.2]
    assert tp.tolist() == [True, False, False, True, True, False]
    at = precision_recall(scores, tp, n_gt, 0.5)
    assert (at["kept"], at["true_positives"], at["precision"], at["recall"]) == (4, 2, 0.5, 0.5)
    at = precision_recall(scores, tp, n_gt, 0.25)
    assert (at["precision"], at["recall"]) == (pytest.approx(3 / 5), 0.75)
    none = precision_recall(scores, tp, n_gt, 0.95)
    assert math.isnan(none["precision"]) and none["recall"] == 0
    curve = precision_recall_curve(scores, tp, n_gt, [0.1, 0.5, 0.95])
    assert curve["recall"] == [0.75, 0.5, 0.0] and curve["precision"][:2] == [0.5, 0.5]


def test_greedy_goes_by_score_not_iou():
    """The higher-scored box takes the ground truth even when a lower-scored one overlaps it more."""
    scores, tp, _ = greedy_match([(1, 3, [2, 0, 10, 10], 0.9), (1, 3, [0, 0, 10, 10], 0.85)], [(1, 3, [0, 0, 10, 10])])
    assert tp.tolist() == [True, False]


def test_curve_point_equals_matching_only_the_boxes_above_it():
    """Greedy by score: the matching of the boxes >= t is the prefix of the full one."""
    rng = np.random.default_rng(0)
    gt = [(int(rng.integers(3)), int(rng.integers(2)), (rng.uniform(0, 40, 2).tolist() + [10, 10])) for _ in range(30)]
    dets = [(i, c, (np.asarray(b[:2]) + rng.normal(0, 3, 2)).tolist() + [10, 10], float(rng.uniform()))
            for i, c, b in gt for _ in range(2)]
    scores, tp, n_gt = greedy_match(dets, gt)
    for t in (0.2, 0.5, 0.8):
        s2, tp2, _ = greedy_match([d for d in dets if d[3] >= t], gt)
        assert precision_recall(scores, tp, n_gt, t) == precision_recall(s2, tp2, n_gt, t)


def _write(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)
    return str(path)


def _jsons(tmp_path, dets, floor=0.05):
    """A ground-truth json of GT and a detections json (other image ids, same file names)."""
    images = [{"id": i, "file_name": f"im{i}.jpg", "height": 50, "width": 50} for i in (1, 2)]
    cats = [{"id": c, "name": f"c{c}"} for c in (1, 2)]
    gt = {"images": images, "categories": cats,
          "annotations": [{"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3],
                           "iscrowd": 0} for k, (i, c, b) in enumerate(GT)]}
    det = {"info": {"score_thresholds": [floor, floor]}, "categories": cats,
           "images": [{"id": 10 + i, "file_name": f"im{i}.jpg", "height": 50, "width": 50} for i in (1, 2)],
           "annotations": [{"id": k + 1, "image_id": 10 + i, "category_id": c, "bbox": b, "score": s}
                           for k, (i, c, b, s) in enumerate(dets)]}
    return _write(tmp_path / "dets.json", det), _write(tmp_path / "gt.json", gt)


def test_quality_from_jsons(tmp_path):
    dets, gt = _jsons(tmp_path, DETS, floor=0.2)
    q = pseudo_label_quality(dets, gt, 0.5, thresholds=(0.1, 0.25, 0.5))
    assert (q["precision"], q["recall"], q["images"]) == (0.5, 0.5, 2)
    assert q["curve"]["threshold"] == [0.25, 0.5]  # none below the detections' own floor
    per_class = pseudo_label_quality(dets, gt, {1: 0.5, 2: 0.25})  # keeps all but the 0.2 box
    assert (per_class["kept"], per_class["true_positives"]) == (5, 3)


def test_class_agnostic_quality_counts_boxes_with_the_wrong_class(tmp_path):
    """Every ground-truth box found once, two with the other class: 2 of 4 right, 4 of 4 found."""
    swapped = [(i, (c if k % 2 else 3 - c), b, 0.9 - 0.1 * k) for k, (i, c, b) in enumerate(GT)]
    q = pseudo_label_quality(*_jsons(tmp_path, swapped), 0.5)
    assert len(GT) == 4 and (q["kept"], q["true_positives"]) == (4, 2)
    assert q["class_agnostic"] == {"true_positives": 4, "precision": 1.0, "recall": 1.0}


def test_teacher_box_ap(tmp_path):
    perfect = [(i, c, b, 1.0) for i, c, b in GT]
    assert teacher_box_ap(*_jsons(tmp_path, perfect))["AP"] == pytest.approx(100.0)
    assert teacher_box_ap(*_jsons(tmp_path, []))["AP"] == 0.0
    half = teacher_box_ap(*_jsons(tmp_path, DETS))
    assert 0 < half["AP"] < 100 and half["AP50"] > half["AP"] * 0.99


def test_unknown_image_is_a_clear_error(tmp_path):
    dets, gt = _jsons(tmp_path, DETS)
    data = json.load(open(dets))
    data["images"][0]["file_name"] = "elsewhere.jpg"
    _write(tmp_path / "dets.json", data)
    with pytest.raises(ValueError, match="not in the ground truth"):
        pseudo_label_quality(dets, gt, 0.5)
