"""
``CollapseWatch``: a pretraining backbone's effective dimension while it trains, and a warning
when it collapses.

A pretraining that collapses its ResNet's features onto a few directions exports a worse start
than random init, and its loss does not show it (SoCo's demo recipe ends at res4 2.3 against
58.6 at its start, 3.1 against random init's 84.6 on aerial photographs: docs/collapse.md). Before
every ``period``-th step (and the first one) and after the last step, this hook measures the
participation ratio of one ResNet stage (``DETPRE.COLLAPSE.FEATURE``, res4) with the probe of
``tools/eval_backbone.py`` (``detpre.evaluation.feature_dimension``: BN in training mode, on a copy
of the backbone) on a fixed set of training images, and puts to the EventStorage (metrics.json,
TensorBoard):

- ``collapse/<feature>_dim``: the effective dimension (0 when the features are constant);
- ``collapse/<feature>_dim_ratio``: it over the first measurement of the run;
- ``collapse/collapsed``: 1 while the ratio is below ``DETPRE.COLLAPSE.THRESHOLD``, else 0.

The first time the ratio falls below the threshold it logs a warning naming the config keys to
lower for the run's meta-architecture and optimizer, with their values; once the ratio is back
above 1.5x the threshold, a new drop warns again. docs/collapse.md has the measured trajectories.

Images: ``NUM_IMAGES`` of ``DATASETS.TRAIN`` evenly spaced over it (not its first ones: a data set
ordered by source or scene would give one scene), read once with the test-time resize (shorter
side ``INPUT.MIN_SIZE_TEST``, as a detector fine-tuned from the backbone sees images) and
center-cropped to one shared size, so that one batch holds them all.

Only the main process measures (the copy's synchronized BN is local BN, so the others need not
wait in it); the model itself, its train mode and its BN running statistics are left as they
are, and no random number is drawn, so a run trains to the same weights with the hook or without.
The first measurement is hook state in the checkpoint: ``--resume`` compares with the run's
start, not with the already trained backbone it resumes from.
"""
import logging
import math
import sys
import time

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.engine import HookBase
from detectron2.utils import comm

from detpre.data.image_io import UnreadableImage, read_image
from detpre.errors import DetpreError
from detpre.evaluation.feature_dimension import feature_dimension
from detpre.registry import HOOK_REGISTRY

from .hooks import unwrap_model

__all__ = ["CollapseWatch", "read_watch_images", "collapse_advice", "watched_resnet", "auto_period"]

logger = logging.getLogger(__name__)

# (meta-architecture, optimizer) -> (LR, at this many images per batch, whose linear-scaling rule):
# the recipes the configs under configs/ reproduce
LR_RULES = {
    ("SoCo", "LARS"): (1.0, 256, "SoCo's"),
    ("FastMoCo", "LARS"): (0.6, 256, "MoCo v3's"),
    ("FastMoCo", "SGD"): (0.1, 512, "Fast-MoCo's"),
    ("JigsawPretrain", "SGD"): (0.1, 256, "the montage recipe's"),
    ("ClassAgnosticRCNN", "SGD"): (0.02, 16, "detectron2's"),
}
# what the demo data showed (docs/collapse.md)
EVIDENCE = {
    "SoCo": "on the demo data LARS BASE_LR 1.0 ended at res4 2.3 of 58.6, 0.25 at 13.8",
    "JigsawPretrain": "on the demo data BASE_LR 0.05 collapsed res4 to 1.5 of 49, 0.01 ended at 8.6 of 49.8",
}
REARM = 1.5  # a new drop warns again once the ratio was back above REARM x THRESHOLD
WRITE_PERIOD = 20  # DefaultTrainer's PeriodicWriter: metrics.json keeps one value per key per write


def auto_period(max_iter):
    """``DETPRE.COLLAPSE.PERIOD`` 0: about twenty measurements per run, at a multiple of the
    writers' period (so that each reaches metrics.json and TensorBoard)."""
    return WRITE_PERIOD * max(1, math.floor(max_iter / 20 / WRITE_PERIOD + 0.5))


def collapse_advice(cfg) -> str:
    """The config keys that make a pretraining collapse less, with their values, for ``cfg``'s
    meta-architecture and optimizer: one sentence for the warning."""
    s, arch = cfg.SOLVER, cfg.MODEL.META_ARCHITECTURE
    opt, lr = s.OPTIMIZER.upper(), s.BASE_LR
    rule = LR_RULES.get((arch, opt))
    if rule:
        base, batch, who = rule
        at = base * s.IMS_PER_BATCH / batch
        parts = [f"lower SOLVER.BASE_LR (now {lr:g}, {lr / at:.3g}x {who} linear-scaling rule "
                 f"{base:g} x SOLVER.IMS_PER_BATCH / {batch} = {at:.3g})"]
    else:
        parts = [f"lower SOLVER.BASE_LR (now {lr:g})"]
    if opt == "LARS":
        f = s.LARS.NON_ADAPTED_LR_FACTOR
        parts.append(f"raise SOLVER.LARS.NON_ADAPTED_LR_FACTOR (now {f:g}) by as much, so that biases and "
                     f"BN keep their LR (BASE_LR x factor = {lr * f:.3g})")
        parts.append(f"or lower SOLVER.LARS.ETA (now {s.LARS.ETA:g}), the trust coefficient every "
                     "adapted weight's step is proportional to")
    parts.append(f"a longer SOLVER.WARMUP_ITERS (now {s.WARMUP_ITERS}) reaches that LR later")
    text = "; ".join(parts)
    if arch in EVIDENCE:
        text += f" ({EVIDENCE[arch]})"
    return text


def watched_resnet(model, feature):
    """The ResNet of a detpre or detectron2 model (``backbone.bottom_up``, or ``backbone`` itself)
    that has stage ``feature``."""
    backbone = getattr(unwrap_model(model), "backbone", None)
    if backbone is None:
        raise DetpreError("DETPRE.HOOKS has CollapseWatch but the model has no `backbone`; remove the "
                        "hook or set DETPRE.COLLAPSE.ENABLED False")
    net = getattr(backbone, "bottom_up", backbone)
    names = list(getattr(net, "stage_names", ())) or list(net.output_shape())
    if feature not in names:
        raise DetpreError(f"DETPRE.COLLAPSE.FEATURE={feature!r} is not a stage of the backbone "
                         f"({', '.join(names)})")
    return net


def read_watch_images(dataset_names, num_images, min_size, max_size=sys.maxsize, image_format="BGR"):
    """``num_images`` images of the registered ``dataset_names`` (concatenated), evenly spaced over
    them (an unreadable one is replaced by the next readable), shorter side resized to ``min_size``
    (longer side at most ``max_size``; 0: not resized), center-cropped to the smallest height and width among them:
    uint8 (K, 3, H, W) in ``image_format``."""
    dicts = [d for name in dataset_names for d in DatasetCatalog.get(name)]
    if not dicts or num_images < 1:
        raise DetpreError(f"CollapseWatch: no images to measure (DATASETS.TRAIN {tuple(dataset_names)}, "
                         f"DETPRE.COLLAPSE.NUM_IMAGES {num_images})")
    n, k = len(dicts), min(int(num_images), len(dicts))
    spaced = [i * n // k for i in range(k)]
    taken = set(spaced)
    candidates = spaced + [i for i in range(n) if i not in taken]
    resize = T.ResizeShortestEdge(int(min_size), int(max_size)) if min_size > 0 else None
    images, skipped = [], 0
    for i in candidates:
        if len(images) == k or skipped > 4 * k:
            break
        try:
            img = read_image(dicts[i]["file_name"], format=image_format)
        except UnreadableImage:
            skipped += 1
            continue
        images.append(resize.get_transform(img).apply_image(img) if resize else img)
    if not images:
        raise DetpreError(f"CollapseWatch: none of the {skipped} images tried of {tuple(dataset_names)} "
                         "could be read")
    h, w = min(im.shape[0] for im in images), min(im.shape[1] for im in images)
    crops = []
    for im in images:
        y, x = (im.shape[0] - h) // 2, (im.shape[1] - w) // 2
        crop = im[y:y + h, x:x + w]
        crops.append(np.repeat(crop[..., None], 3, 2) if crop.ndim == 2 else crop[..., :3])
    return torch.as_tensor(np.ascontiguousarray(np.stack(crops).transpose(0, 3, 1, 2)))


@HOOK_REGISTRY.register()
class CollapseWatch(HookBase):
    """See the module docstring. ``images``: uint8 (N, 3, H, W), or a callable returning them
    (called once, on the main process, before training)."""

    @configurable
    def __init__(self, *, images, pixel_mean, pixel_std, feature="res4", period=1, threshold=0.1,
                 advice="", enabled=True):
        if period <= 0:
            raise DetpreError(f"DETPRE.COLLAPSE.PERIOD={period}: must be positive (0: about 20 per run)")
        if not 0.0 < threshold < 1.0:
            raise DetpreError(f"DETPRE.COLLAPSE.THRESHOLD={threshold}: a fraction of the first "
                             "measurement, between 0 and 1")
        self.images, self.pixel_mean, self.pixel_std = images, list(pixel_mean), list(pixel_std)
        self.feature, self.period, self.threshold = feature, int(period), float(threshold)
        self.advice, self.enabled = advice, bool(enabled)
        self.start = self.start_iter = None  # the run's first measurement (checkpointed)
        self.warned = False
        self.history = []  # (iterations done, dimension) of this process's measurements
        self.seconds = 0.0  # spent measuring, in this process
        self._first = None  # the iteration this process started training at
        self._last_seconds = 0.0

    @classmethod
    def from_config(cls, cfg, trainer=None):
        c = cfg.DETPRE.COLLAPSE
        size = c.IMAGE_SIZE or cfg.INPUT.MIN_SIZE_TEST
        max_size = sys.maxsize if c.IMAGE_SIZE else cfg.INPUT.MAX_SIZE_TEST

        def images():
            return read_watch_images(tuple(cfg.DATASETS.TRAIN), c.NUM_IMAGES, size, max_size,
                                     cfg.INPUT.FORMAT)

        return {
            "images": images, "pixel_mean": cfg.MODEL.PIXEL_MEAN, "pixel_std": cfg.MODEL.PIXEL_STD,
            "feature": c.FEATURE, "period": c.PERIOD or auto_period(cfg.SOLVER.MAX_ITER),
            "threshold": c.THRESHOLD, "advice": collapse_advice(cfg), "enabled": c.ENABLED,
        }

    # ---- state: the start value survives --resume ----
    def state_dict(self):
        if self.start is None:
            return {}
        return {"start": float(self.start), "start_iter": int(self.start_iter), "warned": bool(self.warned)}

    def load_state_dict(self, state):
        self.start, self.start_iter = state.get("start"), state.get("start_iter")
        self.warned = bool(state.get("warned", False))

    # ---- measuring ----
    def _active(self):
        return self.enabled and comm.is_main_process()

    def measure(self):
        """The watched stage's effective dimension now (0 for constant features)."""
        t = time.perf_counter()
        net = watched_resnet(self.trainer.model, self.feature)
        dim = feature_dimension(net, self.images, self.pixel_mean, self.pixel_std, stages=(self.feature,),
                                batch_size=max(1, len(self.images)))[self.feature]
        self._last_seconds = time.perf_counter() - t
        self.seconds += self._last_seconds
        return 0.0 if math.isnan(dim) else dim

    def _record(self, done, dim):
        self.history.append((done, dim))
        scalars = {f"collapse/{self.feature}_dim": dim}
        if self.start and self.start > 0:
            ratio = dim / self.start
            collapsed = ratio < self.threshold
            scalars[f"collapse/{self.feature}_dim_ratio"] = ratio
            scalars["collapse/collapsed"] = float(collapsed)
            if collapsed and not self.warned:
                self.warned = True
                logger.warning(
                    "CollapseWatch: the backbone's %s effective dimension fell to %.1f after %d "
                    "iterations, %.2fx its %.1f at iteration %d (below DETPRE.COLLAPSE.THRESHOLD %g): "
                    "its features are collapsing onto a few directions, and its export would be a "
                    "worse start than random init. To keep them: %s. See docs/collapse.md.",
                    self.feature, dim, done, ratio, self.start, self.start_iter, self.threshold, self.advice)
            elif self.warned and ratio >= REARM * self.threshold:
                self.warned = False  # recovered: a new drop warns again
        self.trainer.storage.put_scalars(smoothing_hint=False, **scalars)
        logger.info("CollapseWatch: %s effective dimension %.2f after %d iterations%s (%.2f s)", self.feature,
                    dim, done, f", {dim / self.start:.2f}x the start" if self.start else "", self._last_seconds)

    def before_train(self):
        if not self._active():
            return
        watched_resnet(self.trainer.model, self.feature)  # a wrong FEATURE fails before any step
        if callable(self.images):
            self.images = self.images()
        self._first = self.trainer.iter

    def before_step(self):
        # the state after `iter` steps, put at iteration `iter`: with a period of at least the
        # writers' 20 iterations, every value reaches metrics.json (they write the latest one)
        it = self.trainer.iter
        if not self._active() or (it % self.period and it != self._first):
            return
        try:
            dim = self.measure()
        except Exception as e:
            if self.start is None:
                raise RuntimeError(
                    f"CollapseWatch could not measure the backbone ({type(e).__name__}: {e}); fewer or "
                    "smaller images (DETPRE.COLLAPSE.NUM_IMAGES, IMAGE_SIZE) or DETPRE.COLLAPSE.ENABLED "
                    "False") from e
            # a monitor must not end a long run (e.g. out of GPU memory once)
            logger.warning("CollapseWatch: could not measure after %d iterations (%s: %s)", it,
                           type(e).__name__, e)
            return
        if self.start is None:
            self.start, self.start_iter = dim, it
            if dim <= 0:
                logger.warning("CollapseWatch: the backbone's %s features are constant at iteration %d; "
                               "no ratio to watch", self.feature, it)
        elif it == self._first and it > 0:
            logger.info("CollapseWatch: resumed; comparing with the run's start, %.2f at iteration %d",
                        self.start, self.start_iter)
        self._record(it, dim)

    def after_step(self):
        done = self.trainer.iter + 1
        if self._active() and done == self.trainer.max_iter:  # what the run exports
            try:
                self._record(done, self.measure())
            except Exception as e:
                logger.warning("CollapseWatch: could not measure after the last iteration (%s: %s)",
                               type(e).__name__, e)
