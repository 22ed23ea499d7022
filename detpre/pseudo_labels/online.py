"""
Online pseudo-labels (Unbiased Teacher, Liu et al., ICLR 2021): the EMA teacher labels each
unlabeled batch as training goes, on the weak view of every image; the kept boxes (score >= the
threshold of their class) become the ground truth of the student's strong view of that image.

- ``OnlinePseudoLabeler``: teacher detections on the weak views -> student inputs (the strong
  images with ``instances`` = pseudo-boxes moved through the strong view's geometry, clipped,
  degenerate ones dropped) + what the step's health signals need.
- ``PseudoLabelHealth``: per iteration, precision-free signals of the pseudo-labels into the event
  storage (metrics.json / TensorBoard): boxes per image, share of images without a box, teacher
  detections per image, score quantiles (and a histogram for TensorBoard), share of the most
  frequent class; and a warning naming the threshold key when the teacher keeps no box for
  ``warn_iters`` consecutive iterations (the student then learns "background everywhere").
"""
import contextlib
import logging

import numpy as np
import torch
from detectron2.structures import Boxes, Instances
from detectron2.utils import comm

from .generate import teacher_mode

__all__ = ["detection_heads_only", "OnlinePseudoLabeler", "PseudoLabelHealth", "threshold_description"]

logger = logging.getLogger(__name__)

# the RoI heads' optional branches that pseudo-boxes cannot train (no pseudo masks / keypoints)
_BRANCHES = ("mask_on", "keypoint_on")


@contextlib.contextmanager
def detection_heads_only(model):
    """Run ``model`` (a detectron2 detector, unwrapped) with the RoI heads' mask and keypoint
    branches switched off (``StandardROIHeads.mask_on`` / ``keypoint_on``, the same attributes in
    detectron2 v0.6 and main): the teacher skips predicting masks it does not hand on, the
    student's unlabeled pass computes box losses only. A detector without them is unchanged."""
    heads = getattr(model, "roi_heads", None)
    saved = {a: getattr(heads, a) for a in _BRANCHES if heads is not None and hasattr(heads, a)}
    try:
        for a in saved:
            setattr(heads, a, False)
        yield model
    finally:
        for a, v in saved.items():
            setattr(heads, a, v)


def threshold_description(score_threshold, class_thresholds):
    """How the config sets the threshold, for messages: the key(s) and value(s)."""
    if class_thresholds:
        return f"MODEL.SELF_TRAINING.CLASS_THRESHOLDS={list(class_thresholds)}"
    return f"MODEL.SELF_TRAINING.SCORE_THRESHOLD={score_threshold}"


class OnlinePseudoLabeler:
    """
    ``thresholds``: per-class score thresholds (contiguous class order, ``resolve_thresholds``).
    Each unlabeled item holds ``weak_image`` (the teacher's view), ``image`` (the student's view)
    and ``strong_transform`` (the geometry from the weak view to the strong one; photometric
    views have none that moves a box).
    """

    def __init__(self, thresholds):
        self.thresholds = torch.as_tensor(np.asarray(thresholds, dtype=np.float32))

    @torch.no_grad()
    def predict(self, teacher, unlabeled):
        """The teacher's detections (``Instances`` on the CPU, weak-view coordinates)."""
        inputs = [{"image": d["weak_image"], "height": int(d["weak_image"].shape[-2]),
                   "width": int(d["weak_image"].shape[-1])} for d in unlabeled]
        with teacher_mode(teacher), detection_heads_only(teacher):
            outs = teacher(inputs)
        return [o["instances"].to("cpu") for o in outs]

    def __call__(self, teacher, unlabeled):
        """``(student_inputs, stats)``; ``stats``: scores of all teacher detections, classes of
        the kept boxes, number of kept boxes per image."""
        detections = self.predict(teacher, unlabeled)
        return self.label(unlabeled, detections)

    def label(self, unlabeled, detections):
        inputs, kept_per_image, kept_classes, all_scores = [], [], [], []
        for d, det in zip(unlabeled, detections):
            scores, classes = det.scores.float(), det.pred_classes.long()
            all_scores.append(scores)
            keep = scores >= self.thresholds.to(scores.device)[classes]
            boxes = det.pred_boxes.tensor[keep].float().numpy()  # (fp32 also under autocast)
            cls = classes[keep]
            h, w = (int(s) for s in d["image"].shape[-2:])
            tfm = d.get("strong_transform")
            if tfm is not None and len(boxes):
                boxes = np.asarray(tfm.apply_box(boxes), dtype=np.float32).reshape(-1, 4)
            gt = Boxes(torch.as_tensor(boxes).reshape(-1, 4))
            gt.clip((h, w))
            ok = gt.nonempty()
            inst = Instances((h, w))
            inst.gt_boxes, inst.gt_classes = gt[ok], cls[ok]
            inputs.append({"image": d["image"], "instances": inst, "height": h, "width": w})
            kept_per_image.append(int(ok.sum()))
            kept_classes.append(cls[ok])
        stats = {"kept_per_image": kept_per_image,
                 "scores": torch.cat(all_scores) if all_scores else torch.zeros(0),
                 "kept_classes": torch.cat(kept_classes) if kept_classes else torch.zeros(0, dtype=torch.long)}
        return inputs, stats


def _gather(stats):
    """All processes' stats (the same on every process)."""
    if comm.get_world_size() == 1:
        return stats
    parts = comm.all_gather({k: v.cpu() if torch.is_tensor(v) else v for k, v in stats.items()})
    return {"kept_per_image": [n for p in parts for n in p["kept_per_image"]],
            "scores": torch.cat([p["scores"] for p in parts]),
            "kept_classes": torch.cat([p["kept_classes"] for p in parts])}


class PseudoLabelHealth:
    """Health signals of the online pseudo-labels and the empty-teacher warning; checkpointable
    (the count of consecutive empty iterations survives ``--resume``)."""

    QUANTILES = (0.1, 0.5, 0.9)

    def __init__(self, warn_iters, threshold_key, histogram_bins=20):
        self.warn_iters, self.threshold_key = int(warn_iters), threshold_key
        self.histogram_bins = int(histogram_bins)
        self.empty_streak = 0

    def record(self, stats, iteration, storage=None):
        """Put this iteration's signals into ``storage`` (main process) and update the streak;
        returns the scalars put (every process computes them: the streak agrees everywhere)."""
        stats = _gather(stats)
        kept = np.asarray(stats["kept_per_image"], dtype=np.float64)
        scores, classes = stats["scores"].float(), stats["kept_classes"]
        n_img = max(len(kept), 1)
        out = {
            "pseudo/boxes": float(kept.sum()),
            "pseudo/boxes_per_image": float(kept.sum()) / n_img,
            "pseudo/empty_image_share": float((kept == 0).sum()) / n_img,
            "pseudo/teacher_detections_per_image": float(len(scores)) / n_img,
        }
        if len(scores):
            q = torch.quantile(scores, torch.tensor(self.QUANTILES))
            for p, v in zip(self.QUANTILES, q.tolist()):
                out[f"pseudo/score_p{int(round(p * 100))}"] = v
            out["pseudo/score_max"] = float(scores.max())
        if len(classes):
            out["pseudo/top_class_share"] = float(torch.bincount(classes).max()) / len(classes)
        self.empty_streak = self.empty_streak + 1 if kept.sum() == 0 else 0
        if comm.is_main_process() and storage is not None:
            storage.put_scalars(**out)
            storage.put_scalar("pseudo/empty_streak", self.empty_streak, smoothing_hint=False)
            if len(scores):
                storage.put_histogram("pseudo/teacher_scores", scores, bins=self.histogram_bins)
        if self.warn_iters > 0 and self.empty_streak and self.empty_streak % self.warn_iters == 0:
            self._warn(iteration, out)
        return out

    def _warn(self, iteration, out):
        if not comm.is_main_process():
            return
        best = (f"its highest detection score in the last iteration was {out['pseudo/score_max']:.3f}"
                if "pseudo/score_max" in out else "it detected nothing at all in the last iteration")
        logger.warning(
            "online self-training: the teacher has kept no pseudo-box at %s for %d consecutive iterations "
            "(iterations %d-%d; %s): the student is being trained to see only background in the unlabeled "
            "images. Lower that threshold, lengthen MODEL.SELF_TRAINING.BURN_IN_ITERS, or check the "
            "teacher (teacher/bbox/AP); this warning repeats every MODEL.SELF_TRAINING.EMPTY_WARN_ITERS=%d "
            "empty iterations", self.threshold_key, self.empty_streak, iteration - self.empty_streak + 1,
            iteration, best, self.warn_iters)

    def state_dict(self):
        return {"empty_streak": self.empty_streak}

    def load_state_dict(self, state):
        self.empty_streak = int(state.get("empty_streak", 0))
