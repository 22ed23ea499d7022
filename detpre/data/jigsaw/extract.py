"""
Sample extraction for montage pre-training ("Cheaper Pre-training Lunch", ECCV 2020).

Positives are ground-truth boxes whose top-left and bottom-right corners are moved outward at
random (context), at most to ``max_expand`` times the box side, clipped to the image, labeled
with their class. Negatives are random boxes that overlap no ground-truth box (IoU 0), labeled
background (= number of classes), one for every ``pos_neg_ratio`` positives. Boxes are integer
pixel boxes ``[x1, y1, x2, y2)``; the crops are cut on the fly by the mapper, only the boxes are
cached (json). Every sample falls in one aspect-ratio group (w / h): S in [0.5, 1.5], T (tall)
below 0.5, W (wide) above 1.5.
"""
import math

import numpy as np
from detectron2.structures import BoxMode

__all__ = ["aspect_group", "expand_box", "extract_samples", "GROUPS", "box_iou_any"]

GROUPS = ("S", "T", "W")
S_RANGE = (0.5, 1.5)


def aspect_group(width, height):
    """'S' for w/h in [0.5, 1.5], 'T' (tall) below, 'W' (wide) above."""
    r = float(width) / float(height)
    if r < S_RANGE[0]:
        return "T"
    if r > S_RANGE[1]:
        return "W"
    return "S"


def _int_box(box):
    """A float XYXY box rounded outward to integer pixel bounds."""
    x1, y1, x2, y2 = box
    return [int(math.floor(x1)), int(math.floor(y1)), int(math.ceil(x2)), int(math.ceil(y2))]


def expand_box(box, image_w, image_h, rng, max_expand=2.0):
    """
    Integer ``box`` (XYXY) with each side moved outward by a uniform share in
    ``[0, (max_expand - 1) / 2]`` of the box side, so the result contains ``box``, is at most
    ``max_expand`` times as wide and as high, and stays inside the image.
    """
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    u = rng.uniform(0.0, (max_expand - 1.0) / 2.0, size=4)
    dl, dt = int(u[0] * w), int(u[1] * h)
    dr, db = int(u[2] * w), int(u[3] * h)
    return [max(0, x1 - dl), max(0, y1 - dt), min(image_w, x2 + dr), min(image_h, y2 + db)]


def box_iou_any(box, boxes):
    """True if ``box`` overlaps (positive intersection area) any of ``boxes`` (N x 4 XYXY)."""
    if len(boxes) == 0:
        return False
    b = np.asarray(boxes, dtype=np.float64)
    iw = np.minimum(box[2], b[:, 2]) - np.maximum(box[0], b[:, 0])
    ih = np.minimum(box[3], b[:, 3]) - np.maximum(box[1], b[:, 1])
    return bool(np.any((iw > 0) & (ih > 0)))


def _gt_boxes(record):
    """(float XYXY boxes of every annotation, [(int box, class) of the non-crowd ones])."""
    boxes, labeled = [], []
    for ann in record.get("annotations", []):
        box = BoxMode.convert(list(ann["bbox"]), ann.get("bbox_mode", BoxMode.XYWH_ABS),
                              BoxMode.XYXY_ABS)
        boxes.append(box)
        if not ann.get("iscrowd", 0):
            labeled.append((box, int(ann["category_id"])))
    return boxes, labeled


def _random_negative(record, gt, size_pool, rng, tries):
    """A box of a size drawn from ``size_pool`` inside the image, overlapping no gt box."""
    W, H = int(record["width"]), int(record["height"])
    for _ in range(tries):
        w, h = size_pool[rng.integers(len(size_pool))]
        scale = min(1.0, W / w, H / h)  # shrink (keeping the shape) to fit the image
        w, h = max(1, int(w * scale)), max(1, int(h * scale))
        x1, y1 = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
        box = [x1, y1, x1 + w, y1 + h]
        if not box_iou_any(box, gt):
            return box
    return None


def extract_samples(dataset_dicts, num_classes, pos_neg_ratio=10.0, max_expand=2.0, min_size=4,
                    seed=0, negative_tries=20):
    """
    Returns ``{"images": [file_name, ...], "samples": [[image index, x1, y1, x2, y2, label]]}``
    for ``dataset_dicts`` (detectron2 format, contiguous ``category_id``). Background label is
    ``num_classes``. Deterministic in ``seed``. ``pos_neg_ratio <= 0`` disables negatives.
    """
    if max_expand < 1.0:
        raise ValueError(f"max_expand={max_expand}: must be >= 1 (1 = no context)")
    rng = np.random.default_rng(seed)
    images, samples, gts = [], [], []
    for idx, record in enumerate(dataset_dicts):
        for key in ("file_name", "height", "width"):
            if key not in record:
                raise ValueError(f"dataset dict {idx} has no {key!r}; jigsaw samples need "
                                 "file_name, height and width of every image")
        images.append(record["file_name"])
        boxes, labeled = _gt_boxes(record)
        gts.append(boxes)
        W, H = int(record["width"]), int(record["height"])
        for box, cls in labeled:
            if not 0 <= cls < num_classes:
                raise ValueError(f"{record['file_name']}: category_id {cls} outside "
                                 f"[0, {num_classes}); set MODEL.JIGSAW.NUM_CLASSES")
            ib = _int_box(box)
            ib = [max(0, ib[0]), max(0, ib[1]), min(W, ib[2]), min(H, ib[3])]
            if ib[2] - ib[0] < min_size or ib[3] - ib[1] < min_size:
                continue
            samples.append([idx, *expand_box(ib, W, H, rng, max_expand), cls])
    num_pos = len(samples)
    if pos_neg_ratio > 0 and num_pos > 0:
        sizes = [(s[3] - s[1], s[4] - s[2]) for s in samples]
        want = max(1, int(round(num_pos / pos_neg_ratio)))
        for _ in range(want * negative_tries):
            if len(samples) - num_pos >= want:
                break
            idx = int(rng.integers(len(dataset_dicts)))
            box = _random_negative(dataset_dicts[idx], gts[idx], sizes, rng, tries=5)
            if box is not None:
                samples.append([idx, *box, num_classes])
    return {"images": images, "samples": samples, "num_positives": num_pos,
            "num_negatives": len(samples) - num_pos}
