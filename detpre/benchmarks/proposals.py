"""
``benchmark_backends``: speed (images/s on one core) and quality (recall of the ground-truth
boxes at the same proposal budget) of several selective-search backends on the same images.
A benchmark, not a test: run it through ``tools/benchmark_proposals.py``.
"""
import time

import numpy as np
from detectron2.structures import BoxMode

from detpre.data.proposals.backends import build_backend
from detpre.data.proposals.generate import read_rgb, resize_for_proposals
from detpre.data.proposals.metrics import proposal_recall

__all__ = ["benchmark_backends", "gt_boxes_of"]


def gt_boxes_of(record):
    """(N, 4) XYXY_ABS ground-truth boxes of a dataset dict (crowd boxes excluded)."""
    boxes = [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS)
             for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
    return np.asarray(boxes, np.float64).reshape(-1, 4)


def benchmark_backends(records, backends, budget=300, proposal_size=224):
    """One row per backend: name, images/s per core, proposals/img, recall@0.5/0.7, mean best IoU.

    Runs in this process (one core); only the backend call is timed, on images already read
    and resized. ``backends`` maps a row name to (backend name, kwargs).
    """
    images, gts = [], []
    for r in records:
        image = read_rgb(r["file_name"])
        images.append((resize_for_proposals(image, proposal_size), image.shape[:2]))
        gts.append(gt_boxes_of(r))
    rows = []
    for row_name, (name, kwargs) in backends.items():
        try:
            backend = build_backend(name, **kwargs)
        except ImportError as e:
            rows.append(dict(backend=row_name, note=str(e).split(" (")[0]))
            continue
        backend(images[0][0])  # warm-up (imports, caches)
        props, counts, seconds = [], [], 0.0
        for small, (h, w) in images:
            t0 = time.perf_counter()
            boxes = backend(small)
            seconds += time.perf_counter() - t0
            boxes = boxes[:budget].astype(np.float64)
            sh, sw = small.shape[:2]
            props.append(boxes * np.array([w / sw, h / sh, w / sw, h / sh]))
            counts.append(len(boxes))
        q = proposal_recall(gts, props, budget=budget)
        rows.append(dict(backend=row_name, images_per_s=len(images) / seconds,
                         proposals=float(np.mean(counts)), **q))
    return rows
