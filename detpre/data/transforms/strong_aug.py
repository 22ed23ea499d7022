"""
The student's strong augmentation of "Rethinking Pre-training and Self-training" (Zoph et al.,
NeurIPS 2020), as detectron2 ``Augmentation`` lists, so boxes, polygons and bitmasks follow
the pixels:

- ``S1``: horizontal flip + scale jitter 0.8-1.2 (resize by a random factor, crop/pad to a square)
- ``S2``: S1 + AutoAugment (detection policy v0)
- ``S3``: flip + scale jitter 0.5-2.0 + AutoAugment
- ``S4``: flip + scale jitter 0.5-2.0 + RandAugment
"""
import numpy as np
from detectron2.data import transforms as T

from .autoaugment import AutoAugment, RandAugment
from .geometry import CropPadTransform

__all__ = ["RandomCropPad", "scale_jitter", "build_strong_augmentation", "LEVELS"]

LEVELS = ("S1", "S2", "S3", "S4")
_JITTER = {"S1": (0.8, 1.2), "S2": (0.8, 1.2), "S3": (0.5, 2.0), "S4": (0.5, 2.0)}


class RandomCropPad(T.Augmentation):
    """A random ``size`` (h, w) window of a larger image, a smaller one padded right/bottom
    (detectron2's ``FixedSizeCrop``, with polygons clipped to the window)."""

    def __init__(self, size, pad_value=128):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        oh, ow = self.size
        y0 = int(round(max(h - oh, 0) * np.random.uniform(0.0, 1.0)))
        x0 = int(round(max(w - ow, 0) * np.random.uniform(0.0, 1.0)))
        return CropPadTransform(x0, y0, min(ow, w - x0), min(oh, h - y0), ow, oh, self.pad_value)


def scale_jitter(min_scale, max_scale, size, pad_value=128):
    """Resize so the image fits ``size`` x ``size`` times a random factor, then crop/pad to it."""
    return [T.ResizeScale(min_scale, max_scale, size, size), RandomCropPad((size, size), pad_value)]


def build_strong_augmentation(level, image_size, image_format="BGR", randaug_n=2, randaug_m=9):
    """The augmentation list of ``level`` (one of ``LEVELS``) with crops of ``image_size`` px."""
    level = str(level).upper()
    if level not in LEVELS:
        raise ValueError(f"INPUT.SELF_TRAINING.AUGMENT={level!r}: use one of {LEVELS} or 'none'")
    if image_size <= 0:
        raise ValueError(f"INPUT.SELF_TRAINING.IMAGE_SIZE={image_size}: must be positive")
    augs = [T.RandomFlip(prob=0.5, horizontal=True, vertical=False)]
    augs += scale_jitter(*_JITTER[level], int(image_size))
    if level in ("S2", "S3"):
        augs.append(AutoAugment(image_format=image_format))
    elif level == "S4":
        augs.append(RandAugment(randaug_n, randaug_m, image_format=image_format))
    return augs
