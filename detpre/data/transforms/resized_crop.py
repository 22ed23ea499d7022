"""
``RandomResizedCrop`` (Inception / torchvision style) as a detectron2 ``Augmentation``: a crop of
random area and aspect ratio, resized to a fixed square. detectron2 v0.6 has none. Parameters
come from ``np.random`` so detpre's seeded loaders replay them.
"""
import math

import numpy as np
from detectron2.data import transforms as T
from PIL import Image

__all__ = ["RandomResizedCrop"]


class RandomResizedCrop(T.Augmentation):
    """Crop area ~ U(scale) of the image, log aspect ratio ~ U(log ratio); resize to ``size``."""

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0), interp=Image.BILINEAR):
        super().__init__()
        if not (0 < scale[0] <= scale[1] <= 1.0) or not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"RandomResizedCrop: bad scale {scale} or ratio {ratio}")
        self._init(locals())

    def _box(self, h, w):
        area = h * w
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * np.random.uniform(*self.scale)
            ar = math.exp(np.random.uniform(*log_ratio))
            cw = int(round(math.sqrt(target * ar)))
            ch = int(round(math.sqrt(target / ar)))
            if 0 < cw <= w and 0 < ch <= h:
                return int(np.random.randint(0, h - ch + 1)), int(np.random.randint(0, w - cw + 1)), ch, cw
        # fallback: the central crop with the aspect ratio clamped into range
        in_ratio = w / h
        if in_ratio < self.ratio[0]:
            cw, ch = w, int(round(w / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            ch, cw = h, int(round(h * self.ratio[1]))
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def get_transform(self, image):
        h, w = image.shape[:2]
        y0, x0, ch, cw = self._box(h, w)
        return T.TransformList([
            T.CropTransform(x0, y0, cw, ch),
            T.ResizeTransform(ch, cw, self.size, self.size, self.interp),
        ])
