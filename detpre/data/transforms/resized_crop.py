"""
The one random-resized-crop sampler of detpre (Inception / torchvision rule), used by every
mapper: ``sample_crop`` draws the box, ``RandomResizedCrop`` is it as a detectron2
``Augmentation`` (detectron2 v0.6 has none). Draws come from ``np.random``, so detpre's seeded
loaders replay them.

``CROP_SAMPLER_VERSION`` changes whenever the boxes drawn for a given ``np.random`` state change
(a run resumed across such a change continues with other crops than it started with).
Version 2 (detpre 0.1): one sampler instead of three; the SoCo mapper's crops now draw the
position top-first like the others (its seeded views differ from version 1), the re-ID crop
falls back to torchvision's central crop instead of the whole image.
"""
import math

import numpy as np
from detectron2.data import transforms as T
from PIL import Image

__all__ = ["sample_crop", "RandomResizedCrop", "CROP_SAMPLER_VERSION"]

CROP_SAMPLER_VERSION = 2


def sample_crop(h, w, scale, ratio=(3.0 / 4.0, 4.0 / 3.0), max_attempts=10):
    """
    A random crop ``(x0, y0, x1, y1)`` (integers) of an ``h`` x ``w`` image: area ~ U(scale) of
    the image, log aspect ratio (w / h) ~ U(log ratio), position uniform (top, then left); after
    ``max_attempts`` draws that do not fit, the central crop with the aspect ratio clamped into
    ``ratio`` (torchvision's fallback).
    """
    if not (0 < scale[0] <= scale[1]) or not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"random resized crop: bad scale {tuple(scale)} or ratio {tuple(ratio)}")
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(max_attempts):
        area = h * w * np.random.uniform(*scale)
        ar = math.exp(np.random.uniform(*log_ratio))
        cw, ch = int(round(math.sqrt(area * ar))), int(round(math.sqrt(area / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            y0 = int(np.random.randint(0, h - ch + 1))
            x0 = int(np.random.randint(0, w - cw + 1))
            return x0, y0, x0 + cw, y0 + ch
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, min(h, int(round(w / ratio[0])))
    elif in_ratio > ratio[1]:
        cw, ch = min(w, int(round(h * ratio[1]))), h
    else:
        cw, ch = w, h
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    return x0, y0, x0 + cw, y0 + ch


class RandomResizedCrop(T.Augmentation):
    """``sample_crop``'s box, resized to ``size`` x ``size``."""

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0), interp=Image.BILINEAR):
        super().__init__()
        if not (0 < scale[0] <= scale[1] <= 1.0) or not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"RandomResizedCrop: bad scale {scale} or ratio {ratio}")
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        x0, y0, x1, y1 = sample_crop(h, w, self.scale, self.ratio)
        return T.TransformList([
            T.CropTransform(x0, y0, x1 - x0, y1 - y0),
            T.ResizeTransform(y1 - y0, x1 - x0, self.size, self.size, self.interp),
        ])
