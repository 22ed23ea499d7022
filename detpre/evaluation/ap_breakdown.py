"""
Box AP taken apart, to see where a difference between two inits comes from: the same detections
scored with their classes (COCO AP) and as one class (class-agnostic), by IoU threshold and object
size. Class-agnostic scoring ignores the label but not the duplicates: detectron2's R-CNN writes one
box per class above its score threshold, so an object found under two labels gives one match and
one false positive there (AR100 is not lowered by them).
"""
import contextlib
import io
import math
from typing import Dict

from .image_bootstrap import empty_results, load_coco

__all__ = ["STATS", "coco_stats", "ap_breakdown"]

# COCOeval.stats positions (x 100) reported, by name
STATS = {"AP": 0, "AP50": 1, "AP75": 2, "APs": 3, "APm": 4, "APl": 5, "AR100": 8}


def coco_stats(coco_gt, results: list, iou_type: str = "bbox", use_cats: bool = True) -> Dict[str, float]:
    """COCOeval's summary of ``results`` (COCO result dicts) on ``coco_gt``, as ``STATS`` x 100;
    ``use_cats=False`` pools every category into one (a box of the wrong class still matches). NaN
    for a size with no ground truth."""
    from pycocotools.cocoeval import COCOeval

    # shallow copies: loadRes writes ids and areas into the dicts, and the list is scored twice
    results = [{k: v for k, v in r.items() if not (iou_type == "segm" and k == "bbox")} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results) if results else empty_results(coco_gt)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.useCats = int(use_cats)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # -1: no ground truth of that size
    return {k: 100.0 * float(ev.stats[i]) if ev.stats[i] >= 0 else math.nan for k, i in STATS.items()}


def ap_breakdown(gt_json: str, results_json: str, iou_type: str = "bbox") -> Dict[str, float]:
    """``coco_stats`` of a detectron2 ``coco_instances_results.json``, with and without the classes
    (keys ``"AP"``... and ``"agnostic AP"``...)."""
    from detpre.utils.io import read_json

    results = read_json(results_json)
    if not isinstance(results, list):
        raise ValueError(f"{results_json}: not a COCO results file (a list of detections); re-run the "
                         "evaluation (tools/train_net.py --eval-only)")
    coco_gt = load_coco(gt_json)
    out = coco_stats(coco_gt, results, iou_type)
    out.update({f"agnostic {k}": v for k, v in coco_stats(coco_gt, results, iou_type, use_cats=False).items()})
    return out
