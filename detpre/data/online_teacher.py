"""
The train loader of online self-training (``MODEL.SELF_TRAINING.MODE: online``).

Every iteration yields an ``OnlineBatch``: a list of ``SOLVER.IMS_PER_BATCH`` labeled items from
detpre's usual train loader (the supervised run's stream, batch for batch), and ``unlabeled()``,
which draws ``PSEUDO_RATIO`` times as many images of ``UNLABELED_DATASET`` from a stream of their
own. ``unlabeled()`` is called from the burn-in on only, so the burn-in maps no unlabeled image; the
unlabeled stream's batch k is that of iteration ``BURN_IN_ITERS + k``, which ``set_start_iter``
(``--resume``) continues exactly (resumable sampler, per-sample seeded augmentation).

``WeakStrongMapper`` maps an unlabeled image twice, as Unbiased Teacher does: the weak view is
detectron2's train mapping (resize + flip, as the labeled images), for the teacher; the strong view
is made from the weak one, for the student, and carries the geometry between them
(``strong_transform``) so the teacher's boxes can be moved onto it. Ground truth, if the data set
has any, is dropped.
"""
import copy
import logging

import numpy as np
import torch
from detectron2.data import DatasetCatalog, DatasetFromList, DatasetMapper, get_detection_dataset_dicts
from detectron2.data import transforms as T

from detpre.data.build import ResumableLoader, build_train_loader
from detpre.data.checks import check_training_images
from detpre.data.samplers import ResumableTrainingSampler, SeededMapDataset
from detpre.data.transforms.autoaugment import CutoutTransform
from detpre.data.transforms.strong_aug import LEVELS, build_strong_augmentation
from detpre.data.transforms.views import RandomColorJitter, RandomGaussianBlur, RandomGrayscale
from detpre.errors import DetpreError

__all__ = ["OnlineBatch", "OnlineLoader", "WeakStrongMapper", "RandomErase", "build_online_strong_augmentation",
           "build_online_loader", "unlabeled_batch_size", "STRONG_AUGMENTS"]

logger = logging.getLogger(__name__)

STRONG_AUGMENTS = ("photometric", *LEVELS)
_UNLABELED_SEED_OFFSET = 9_311  # the unlabeled stream's seed differs from the labeled one's


class RandomErase(T.Augmentation):
    """torchvision's ``RandomErasing`` (Zhong et al.) as Unbiased Teacher applies it: with
    probability ``prob`` one rectangle of ``scale`` of the image area and aspect ``ratio`` is
    filled, here with one random colour (Unbiased Teacher: random noise). Boxes are unchanged."""

    def __init__(self, prob, scale=(0.02, 0.2), ratio=(0.3, 3.3)):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        if self._rand_range() >= self.prob:
            return T.NoOpTransform()
        h, w = image.shape[:2]
        for _ in range(10):
            area = h * w * np.random.uniform(*self.scale)
            aspect = np.exp(np.random.uniform(np.log(self.ratio[0]), np.log(self.ratio[1])))
            eh, ew = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
            if 0 < eh < h and 0 < ew < w:
                y0, x0 = np.random.randint(0, h - eh + 1), np.random.randint(0, w - ew + 1)
                fill = np.random.randint(0, 256, size=image.shape[2] if image.ndim == 3 else 1)
                return CutoutTransform(x0, y0, x0 + ew, y0 + eh, fill.astype(np.uint8))
        return T.NoOpTransform()


def build_online_strong_augmentation(level, cfg):
    """The student's view made from the weak one. "photometric": Unbiased Teacher's (colour
    jitter p=0.8, grayscale p=0.2, Gaussian blur p=0.5 with sigma 0.1-2.0 at an 800 px short side,
    scaled to INPUT.MIN_SIZE_TRAIN, three random erasings); "S1"-"S4": INPUT.SELF_TRAINING's
    strong augmentation (flip, scale jitter, AutoAugment / RandAugment)."""
    level = str(level)
    fmt = cfg.INPUT.FORMAT
    if level == "photometric":
        sigma_scale = min(1.0, max(cfg.INPUT.MIN_SIZE_TRAIN) / 800.0)
        return [
            RandomColorJitter(0.8, 0.4, 0.4, 0.4, 0.1, fmt),
            RandomGrayscale(0.2, fmt),
            RandomGaussianBlur(0.5, (0.1, 2.0), sigma_scale),
            RandomErase(0.7, (0.05, 0.2), (0.3, 3.3)),
            RandomErase(0.5, (0.02, 0.2), (0.1, 6.0)),
            RandomErase(0.3, (0.02, 0.2), (0.05, 8.0)),
        ]
    if level.upper() in LEVELS:
        sts = cfg.INPUT.SELF_TRAINING
        return build_strong_augmentation(level, sts.IMAGE_SIZE, fmt, sts.RANDAUG_N, sts.RANDAUG_M)
    raise DetpreError(f"MODEL.SELF_TRAINING.STRONG_AUGMENT={level!r}: use one of {list(STRONG_AUGMENTS)}")


class WeakStrongMapper:
    """An unlabeled image -> ``{"weak_image", "image" (strong), "strong_transform", ...}``."""

    def __init__(self, cfg, strong=None):
        self.weak = DatasetMapper(cfg, is_train=True)
        self.strong = T.AugmentationList(build_online_strong_augmentation(
            strong or cfg.MODEL.SELF_TRAINING.STRONG_AUGMENT, cfg))

    def __call__(self, dataset_dict):
        d = copy.copy(dataset_dict)
        for key in ("annotations", "sem_seg_file_name", "pan_seg_file_name"):
            d.pop(key, None)  # unlabeled: whatever ground truth the data set has stays unseen
        out = self.weak(d)
        weak = out["image"]
        aug = T.AugInput(np.ascontiguousarray(weak.permute(1, 2, 0).numpy()))
        tfm = self.strong(aug)
        out["weak_image"] = weak
        out["image"] = torch.as_tensor(np.ascontiguousarray(aug.image.transpose(2, 0, 1)))
        out["strong_transform"] = tfm
        return out


class OnlineBatch(list):
    """The labeled items of an iteration (a list: what any detectron2 loader yields) and
    ``unlabeled()``, which draws the iteration's unlabeled items (once per iteration)."""

    def __init__(self, labeled, draw_unlabeled):
        super().__init__(labeled)
        self._draw = draw_unlabeled

    def unlabeled(self):
        return self._draw()


class OnlineLoader:
    def __init__(self, labeled, unlabeled, burn_in):
        self.labeled, self.unlabeled, self.burn_in = labeled, unlabeled, int(burn_in)
        self._unlabeled_iter = None

    def set_start_iter(self, start_iter):
        if hasattr(self.labeled, "set_start_iter"):
            self.labeled.set_start_iter(start_iter)
        self.unlabeled.set_start_iter(max(0, int(start_iter) - self.burn_in))
        self._unlabeled_iter = None

    def _next_unlabeled(self):
        if self._unlabeled_iter is None:
            self._unlabeled_iter = iter(self.unlabeled)
        return next(self._unlabeled_iter)

    def __iter__(self):
        for labeled in self.labeled:
            yield OnlineBatch(labeled, self._next_unlabeled)


def unlabeled_batch_size(cfg):
    """Unlabeled images per iteration over all processes: PSEUDO_RATIO x SOLVER.IMS_PER_BATCH."""
    ratio = cfg.MODEL.SELF_TRAINING.PSEUDO_RATIO
    if not ratio > 0:
        raise DetpreError(f"MODEL.SELF_TRAINING.PSEUDO_RATIO={ratio}: must be positive (unlabeled images "
                          "per labeled image)")
    return max(1, int(round(cfg.SOLVER.IMS_PER_BATCH * ratio)))


def unlabeled_dataset_dicts(cfg):
    name = cfg.MODEL.SELF_TRAINING.UNLABELED_DATASET
    if not name:
        raise DetpreError("MODEL.SELF_TRAINING.MODE online needs MODEL.SELF_TRAINING.UNLABELED_DATASET: "
                          "name the registered data set of unlabeled images (e.g. DATASETS.FOLDER)")
    if name not in DatasetCatalog.list():
        raise DetpreError(f"MODEL.SELF_TRAINING.UNLABELED_DATASET={name!r} is not a registered data set; "
                          "register it (e.g. DATASETS.FOLDER) or fix the name")
    dicts = get_detection_dataset_dicts([name], filter_empty=False)
    dicts, _ = check_training_images(dicts, cfg.DATALOADER.MAX_BAD_IMAGE_FRACTION,
                                     f"MODEL.SELF_TRAINING.UNLABELED_DATASET {name}")
    if not dicts:
        raise DetpreError(f"MODEL.SELF_TRAINING.UNLABELED_DATASET={name!r} has no readable image")
    return dicts


def build_online_loader(cfg, unlabeled_mapper=None):
    """The ``OnlineLoader`` of an online config (see the module's docstring)."""
    st = cfg.MODEL.SELF_TRAINING
    labeled = build_train_loader(cfg)
    if not hasattr(labeled, "set_start_iter"):
        logger.warning("online self-training: the labeled stream (DATALOADER.SAMPLER_TRAIN=%s) restarts on "
                       "--resume", cfg.DATALOADER.SAMPLER_TRAIN)
    dicts = unlabeled_dataset_dicts(cfg)
    seed = cfg.SEED + _UNLABELED_SEED_OFFSET if cfg.SEED >= 0 else None
    sampler = ResumableTrainingSampler(len(dicts), shuffle=True, seed=seed)
    mapper = unlabeled_mapper or WeakStrongMapper(cfg)
    dataset = SeededMapDataset(DatasetFromList(dicts, copy=False), mapper, sampler.seed)
    n = unlabeled_batch_size(cfg)
    unlabeled = ResumableLoader(dataset, sampler, n, cfg.DATALOADER.ASPECT_RATIO_GROUPING,
                                cfg.DATALOADER.NUM_WORKERS, cfg.DATALOADER.MAX_BAD_IMAGE_FRACTION)
    logger.info("online self-training loader: %d labeled + %d unlabeled images (%s, %d images, strong view "
                "%s) per iteration; unlabeled from iteration %d on", cfg.SOLVER.IMS_PER_BATCH, n,
                st.UNLABELED_DATASET, len(dicts), st.STRONG_AUGMENT, st.BURN_IN_ITERS)
    return OnlineLoader(labeled, unlabeled, st.BURN_IN_ITERS)
