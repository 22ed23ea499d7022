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

from .image_bootstrap import load_results, read_results

__all__ = ["STATS", "coco_stats", "ap_breakdown"]

# COCOeval.stats positions (x 100) reported, by name
STATS = {"AP": 0, "AP50": 1, "AP75": 2, "APs": 3, "APm": 4, "APl": 5, "AR100": 8}


def coco_stats(coco_gt, results: list, iou_type: str = "bbox", use_cats: bool = True) -> Dict[str, float]:
    """COCOeval's summary of ``results`` (COCO result dicts) on ``coco_gt``, as ``STATS`` x 100;
    ``use_cats=False`` pools every category into one (a box of the wrong class still matches). NaN
    for a size with no ground truth."""
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco_gt, load_results(coco_gt, results, iou_type), iou_type)
        ev.params.useCats = int(use_cats)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # -1: no ground truth of that size
    return {k: 100.0 * float(ev.stats[i]) if ev.stats[i] >= 0 else math.nan for k, i in STATS.items()}


def ap_breakdown(coco_gt, results_json: str, iou_type: str = "bbox") -> Dict[str, float]:
    """``coco_stats`` of a detectron2 ``coco_instances_results.json`` on ``coco_gt`` (a
    ``load_coco``), with and without the classes (keys ``"AP"``... and ``"agnostic AP"``...)."""
    results = read_results(results_json)
    if results is None:
        raise ValueError(f"{results_json}: not a COCO results file (a list of detections); re-run the "
                         "evaluation (tools/train_net.py --eval-only)")
    out = coco_stats(coco_gt, results, iou_type)
    out.update({f"agnostic {k}": v for k, v in coco_stats(coco_gt, results, iou_type, use_cats=False).items()})
    return out
