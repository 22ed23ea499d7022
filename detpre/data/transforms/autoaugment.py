"""
AutoAugment (detection policy v0 of Zoph et al., "Learning Data Augmentation Strategies for
Object Detection", 2019) and RandAugment as detectron2 ``Augmentation``s.

Every op is a deterministic detectron2 ``Transform`` (drawn by the augmentation), so boxes,
polygons and bitmasks go through the same geometry as the pixels: geometric ops are affine maps
(``AffineTransform``), colour ops leave coordinates alone. The policy's "*_Only_BBoxes" ops
(which move pixels inside each box only) are applied to the whole image here, so instance masks
stay exact; magnitudes are relative to the image size, not absolute pixels.
"""
import math

import cv2
import numpy as np
from detectron2.data import transforms as T

from .geometry import AffineTransform
from .views import ColorJitterTransform, SolarizeTransform, _Photometric

__all__ = [
    "EqualizeTransform", "AutoContrastTransform", "PosterizeTransform", "SharpnessTransform",
    "CutoutTransform", "make_op", "OPS", "POLICY_V0", "RANDAUGMENT_OPS", "AutoAugment",
    "RandAugment",
]

MAX_LEVEL = 10.0
MAX_TRANSLATE = 0.4  # of the image side (250 px of ~640 in the TF policy)
MAX_SHEAR = 0.3
MAX_ROTATE = 30.0  # degrees
MAX_CUTOUT = 0.3  # side of the cut square, of the shorter image side
FILL = 128


class EqualizeTransform(_Photometric):
    def apply_image(self, img):
        return np.stack([cv2.equalizeHist(np.ascontiguousarray(img[..., c]))
                         for c in range(img.shape[2])], axis=2)


class AutoContrastTransform(_Photometric):
    """Stretch each channel to 0..255 (flat channels are left alone)."""

    def apply_image(self, img):
        out = img.astype(np.float32)
        lo = out.min(axis=(0, 1), keepdims=True)
        hi = out.max(axis=(0, 1), keepdims=True)
        scale = np.where(hi > lo, 255.0 / np.maximum(hi - lo, 1e-6), 1.0)
        out = np.where(hi > lo, (out - lo) * scale, out)
        return np.clip(out.round(), 0, 255).astype(np.uint8)


class PosterizeTransform(_Photometric):
    def __init__(self, bits):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        mask = np.uint8((0xFF << (8 - int(self.bits))) & 0xFF)
        return img & mask


class SharpnessTransform(_Photometric):
    """PIL's ImageEnhance.Sharpness: blend with the 3x3 smoothed image (border kept)."""

    _KERNEL = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13.0

    def __init__(self, factor):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        src = img.astype(np.float32)
        blur = cv2.filter2D(src, -1, self._KERNEL, borderType=cv2.BORDER_REPLICATE)
        blur[0, :], blur[-1, :], blur[:, 0], blur[:, -1] = src[0, :], src[-1, :], src[:, 0], src[:, -1]
        out = blur + self.factor * (src - blur)
        return np.clip(out.round(), 0, 255).astype(np.uint8)


class CutoutTransform(_Photometric):
    """Fill the box [x0, x1) x [y0, y1) with a constant; annotations are unchanged (as in the policy)."""

    def __init__(self, x0, y0, x1, y1, fill=FILL):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        out = img.copy()
        out[self.y0:self.y1, self.x0:self.x1] = self.fill
        return out


def _signed(v):
    return v if np.random.rand() < 0.5 else -v


def _enhance_factor(level):
    return level / MAX_LEVEL * 1.8 + 0.1


def _affine_about_center(h, w, a):
    """2x3 map ``x -> a @ (x - c) + c`` about the image center ``c`` (continuous coordinates)."""
    c = np.array([w / 2.0, h / 2.0])
    a = np.asarray(a, dtype=np.float64)
    return np.concatenate([a, (c - a @ c)[:, None]], axis=1)


def make_op(name, level, h, w, image_format="BGR"):
    """The ``Transform`` of op ``name`` at ``level`` (0..10) for an ``h`` x ``w`` image; random
    parts (sign, cutout position) are drawn from ``np.random``."""
    m = float(level) / MAX_LEVEL
    if name == "Identity":
        return T.NoOpTransform()
    if name in ("TranslateX", "TranslateY"):
        d = _signed(m * MAX_TRANSLATE) * (w if name == "TranslateX" else h)
        t = [d, 0.0] if name == "TranslateX" else [0.0, d]
        return AffineTransform(np.array([[1.0, 0.0, t[0]], [0.0, 1.0, t[1]]]), h, w, FILL)
    if name in ("ShearX", "ShearY"):
        s = _signed(m * MAX_SHEAR)
        a = [[1.0, s], [0.0, 1.0]] if name == "ShearX" else [[1.0, 0.0], [s, 1.0]]
        return AffineTransform(_affine_about_center(h, w, a), h, w, FILL)
    if name == "Rotate":
        t = math.radians(_signed(m * MAX_ROTATE))
        a = [[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]]  # counter-clockwise on screen
        return AffineTransform(_affine_about_center(h, w, a), h, w, FILL)
    if name == "Equalize":
        return EqualizeTransform()
    if name == "AutoContrast":
        return AutoContrastTransform()
    if name == "Posterize":
        return PosterizeTransform(8 - int(m * 4))
    if name == "Solarize":
        return SolarizeTransform(int(round(256 - m * 256)))
    if name == "Sharpness":
        return SharpnessTransform(_enhance_factor(level))
    if name == "Brightness":
        return ColorJitterTransform(_enhance_factor(level), 1, 1, 0, (0,), image_format)
    if name == "Contrast":
        return ColorJitterTransform(1, _enhance_factor(level), 1, 0, (1,), image_format)
    if name == "Color":
        return ColorJitterTransform(1, 1, _enhance_factor(level), 0, (2,), image_format)
    if name == "Cutout":
        side = int(round(m * MAX_CUTOUT * min(h, w)))
        if side <= 0:
            return T.NoOpTransform()
        cy, cx = np.random.randint(0, h), np.random.randint(0, w)
        return CutoutTransform(max(cx - side // 2, 0), max(cy - side // 2, 0),
                               min(cx + (side + 1) // 2, w), min(cy + (side + 1) // 2, h))
    raise KeyError(f"unknown augmentation op {name!r}; known: {OPS}")


OPS = ("Identity", "TranslateX", "TranslateY", "ShearX", "ShearY", "Rotate", "Equalize",
       "AutoContrast", "Posterize", "Solarize", "Sharpness", "Brightness", "Contrast", "Color",
       "Cutout")

# Detection policy v0: five sub-policies of (op, probability, level); one is drawn per image.
POLICY_V0 = (
    (("TranslateX", 0.6, 4), ("Equalize", 0.8, 10)),
    (("TranslateY", 0.2, 2), ("Cutout", 0.8, 8)),
    (("Sharpness", 0.0, 8), ("ShearX", 0.4, 0)),
    (("ShearY", 1.0, 2), ("TranslateY", 0.6, 6)),
    (("Rotate", 0.6, 10), ("Color", 1.0, 6)),
)

# RandAugment's op list (Cubuk et al. 2020) plus Cutout.
RANDAUGMENT_OPS = ("Identity", "AutoContrast", "Equalize", "Rotate", "Solarize", "Color",
                   "Posterize", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
                   "TranslateX", "TranslateY", "Cutout")


class AutoAugment(T.Augmentation):
    """Draw one sub-policy uniformly, apply each of its ops with its probability."""

    def __init__(self, policy=POLICY_V0, image_format="BGR"):
        super().__init__()
        for sub in policy:
            for op, _, _ in sub:
                if op not in OPS:
                    raise KeyError(f"AutoAugment policy op {op!r} unknown; known: {OPS}")
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        sub = self.policy[np.random.randint(len(self.policy))]
        ts = []
        for op, prob, level in sub:
            if np.random.rand() < prob:
                ts.append(make_op(op, level, h, w, self.image_format))
        return T.TransformList(ts)


class RandAugment(T.Augmentation):
    """``num_ops`` ops drawn uniformly (with replacement), all at magnitude ``magnitude``."""

    def __init__(self, num_ops=2, magnitude=9, ops=RANDAUGMENT_OPS, image_format="BGR"):
        super().__init__()
        if not 0 <= magnitude <= MAX_LEVEL:
            raise ValueError(f"RandAugment magnitude {magnitude}: must be in [0, {MAX_LEVEL}]")
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        names = [self.ops[i] for i in np.random.randint(len(self.ops), size=int(self.num_ops))]
        return T.TransformList([make_op(n, self.magnitude, h, w, self.image_format) for n in names])
