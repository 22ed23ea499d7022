"""Proposal quality: recall of ground-truth boxes at IoU thresholds and mean best IoU."""
import numpy as np

__all__ = ["box_iou", "proposal_recall"]


def box_iou(a, b):
    """(len(a), len(b)) IoU of XYXY boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def proposal_recall(gt_boxes, proposals, thresholds=(0.5, 0.7), budget=None):
    """Recall over all ground-truth boxes of all images.

    Args:
        gt_boxes, proposals: lists (one entry per image) of (N, 4) XYXY boxes; proposals best
            first, only the first ``budget`` are used.
    Returns:
        dict: ``recall@t`` per threshold, ``mean_best_iou`` (each GT box's best IoU, averaged)
        and ``num_gt``.
    """
    best = []
    for gt, props in zip(gt_boxes, proposals):
        gt = np.asarray(gt, np.float64).reshape(-1, 4)
        props = np.asarray(props, np.float64).reshape(-1, 4)[:budget]
        if len(gt) == 0:
            continue
        best.append(box_iou(gt, props).max(axis=1) if len(props) else np.zeros(len(gt)))
    best = np.concatenate(best) if best else np.zeros(0)
    out = {f"recall@{t:g}": float((best >= t).mean()) if len(best) else float("nan")
           for t in thresholds}
    out["mean_best_iou"] = float(best.mean()) if len(best) else float("nan")
    out["num_gt"] = int(len(best))
    return out
