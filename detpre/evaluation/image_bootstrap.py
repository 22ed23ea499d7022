"""
COCO AP of a resampled set of evaluation images, for intervals that cover which `val` images were
drawn as well as the seeds.

A paired t-interval over seeds misses the evaluation set's own sampling: every init is scored on the
same images, so whatever they happen to favour is shared by all seeds and looks like signal (the
demo's 50-image `val` moved a difference by ~1.5 box AP; docs/findings/transfer.md, section 6). COCO AP is not
a mean over images, so resampling needs COCOeval's per-image matches, computed once per model:
weighting each image's detections and ground truth by how often a resample drew it gives exactly the
AP of a data set with those images repeated (tested against COCOeval on such a data set), with no
re-matching per resample. Exact up to the order of detections of one image with equal scores, which
pycocotools itself takes from the input order.
"""
import contextlib
import io
import math
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = ["ImageMatches", "load_coco", "load_results", "read_results", "load_matches", "resample_counts",
           "image_bootstrap_difference"]


class ImageMatches:
    """
    One model's COCOeval matches on one data set (area "all", the last maxDets): per category, its
    detections in descending score order (pycocotools' mergesort order) with their image index and
    TP / FP per IoU threshold, and per image the number of non-ignored ground-truth objects.
    """

    def __init__(self, categories: List[Dict[str, np.ndarray]], num_images: int, rec_thrs: np.ndarray):
        self.categories, self.num_images, self.rec_thrs = categories, int(num_images), rec_thrs

    @classmethod
    def from_coco(cls, coco_gt, results: list, iou_type: str = "bbox",
                  img_ids: Optional[Sequence[int]] = None) -> "ImageMatches":
        """Match ``results`` (COCO result dicts) to ``coco_gt`` (a ``pycocotools.coco.COCO``) as
        detectron2's COCOEvaluator does: for "segm" the boxes are dropped, so areas come from masks.
        Only the area range and detection limit of COCO's AP are matched."""
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(coco_gt, load_results(coco_gt, results, iou_type), iou_type)
            if img_ids is not None:
                ev.params.imgIds = sorted(int(i) for i in img_ids)
            ev.params.areaRng, ev.params.areaRngLbl = ev.params.areaRng[:1], ev.params.areaRngLbl[:1]  # "all"
            ev.params.maxDets = ev.params.maxDets[-1:]  # AP's 100
            ev.evaluate()
        p = ev.params
        img_ids, max_det = list(p.imgIds), p.maxDets[-1]
        categories = []
        for k in range(len(p.catIds)):
            # evalImgs is ordered category x area range ("all" only) x image
            entries = [(i, ev.evalImgs[k * len(img_ids) + i]) for i in range(len(img_ids))]
            entries = [(i, e) for i, e in entries if e is not None]
            if not entries:
                categories.append(None)  # no ground truth and no detection: COCO skips it
                continue
            scores = np.concatenate([e["dtScores"][:max_det] for _, e in entries])
            order = np.argsort(-scores, kind="mergesort")
            image = np.concatenate([np.full(len(e["dtScores"][:max_det]), i) for i, e in entries])[order]
            dtm = np.concatenate([e["dtMatches"][:, :max_det] for _, e in entries], axis=1)[:, order]
            dt_ig = np.concatenate([e["dtIgnore"][:, :max_det] for _, e in entries], axis=1)[:, order]
            num_gt = np.zeros(len(img_ids))
            for i, e in entries:
                num_gt[i] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
            categories.append({"image": image.astype(np.int64), "tp": np.logical_and(dtm, ~dt_ig),
                               "fp": np.logical_and(~dtm.astype(bool), ~dt_ig), "num_gt": num_gt})
        return cls(categories, len(img_ids), np.asarray(p.recThrs))

    def ap(self, counts: Optional[np.ndarray] = None) -> float:
        """AP (x100, detectron2's scale) of the data set where image ``i`` appears ``counts[i]``
        times (all ones: COCOeval's own AP)."""
        w = np.ones(self.num_images) if counts is None else np.asarray(counts, np.float64)
        per_category = []
        for c in self.categories:
            if c is None:
                continue
            npig = float(w @ c["num_gt"])
            if npig == 0:
                continue  # absent from this resample: COCO leaves the category out of the mean
            wd = w[c["image"]]
            tp = np.cumsum(c["tp"] * wd, axis=1)
            fp = np.cumsum(c["fp"] * wd, axis=1)
            rc = tp / npig
            pr = tp / (fp + tp + np.spacing(1))
            pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # interpolated precision
            q = np.zeros((tp.shape[0], len(self.rec_thrs)))
            for t in range(tp.shape[0]):
                idx = np.searchsorted(rc[t], self.rec_thrs, side="left")
                ok = idx < rc.shape[1]
                q[t, ok] = pr[t, idx[ok]]
            per_category.append(q.mean())
        return 100.0 * float(np.mean(per_category)) if per_category else math.nan


def load_results(coco_gt, results: list, iou_type: str = "bbox"):
    """``coco_gt.loadRes(results)`` as detectron2's COCOEvaluator scores them (for "segm" the boxes are
    dropped, so areas come from masks), without its prints and leaving ``results`` untouched;
    an empty result set too (``loadRes([])`` fails)."""
    from pycocotools.coco import COCO

    # shallow copies: loadRes writes ids and areas into the dicts it is given
    results = [{k: v for k, v in r.items() if not (iou_type == "segm" and k == "bbox")} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            return coco_gt.loadRes(results)
        dt = COCO()
        dt.dataset = {"images": list(coco_gt.dataset["images"]),
                      "categories": list(coco_gt.dataset["categories"]), "annotations": []}
        dt.createIndex()
        return dt


def read_results(results_json: str) -> Optional[list]:
    """The detections of a detectron2 ``coco_instances_results.json``; None when the file is missing
    or unreadable (detectron2 writes it in place: a run killed during its evaluation leaves it cut
    short)."""
    from detpre.utils.io import read_json

    results = read_json(results_json)
    return results if isinstance(results, list) else None


def load_coco(gt_json: str):
    """``pycocotools.coco.COCO(gt_json)`` without its prints."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(gt_json)


def load_matches(coco_gt, results_json: str, iou_type: str = "bbox") -> Optional[ImageMatches]:
    """``ImageMatches`` of a detectron2 ``coco_instances_results.json`` against ``coco_gt`` (a
    ``load_coco``), over all its images. A model with no detection scores 0 here, where detectron2
    reports NaN ("No predictions from the model!"). None when ``read_results`` finds no file."""
    results = read_results(results_json)
    if results is None:
        return None
    return ImageMatches.from_coco(coco_gt, results, iou_type, img_ids=coco_gt.getImgIds())


def resample_counts(num_images: int, num_samples: int, seed: int = 0) -> np.ndarray:
    """(num_samples, num_images) draw counts of a bootstrap over images: each row sums to
    ``num_images``."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_images, np.full(num_images, 1.0 / num_images), size=num_samples)


def image_bootstrap_difference(a: Sequence[ImageMatches], b: Sequence[ImageMatches], num_samples: int = 400,
                               seed: int = 0) -> Dict[str, float]:
    """
    The mean over seeds of AP(a_s) - AP(b_s), paired by seed, and its two spreads: ``seed_std``,
    of the per-seed differences on the full set (training noise), and ``image_std``, the bootstrap
    spread of the seed-mean difference when the images are redrawn (one draw shared by every model).
    ``detpre.jobs.stats.image_interval`` turns them into an interval.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"image_bootstrap_difference: {len(a)} and {len(b)} runs; pair them by seed")
    n_img = a[0].num_images
    if any(m.num_images != n_img for m in [*a, *b]):
        raise ValueError("image_bootstrap_difference: every run must be scored on the same images")
    d = np.array([x.ap() - y.ap() for x, y in zip(a, b)])
    counts = resample_counts(n_img, num_samples, seed)
    boot = np.array([np.mean([x.ap(w) - y.ap(w) for x, y in zip(a, b)]) for w in counts])
    return {"mean": float(d.mean()), "seed_std": float(d.std(ddof=1)) if len(d) > 1 else math.nan,
            "image_std": float(boot.std(ddof=1)), "n": len(d), "num_images": n_img, "num_samples": int(num_samples)}
