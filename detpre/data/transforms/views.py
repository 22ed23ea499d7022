"""
Photometric view augmentations of BYOL / MoCo v3 / SoCo as detectron2 ``Augmentation``s.

Each ``Random*`` augmentation draws its parameters and returns a deterministic ``Transform``
(detectron2's split), so geometric and photometric steps compose in one ``AugmentationList``,
boxes go through ``apply_box`` untouched by the photometric ones, and a test can replay a view.
Images are uint8 HxWx3 in ``image_format`` ("BGR" as detectron2 reads them, or "RGB").
"""
import cv2
import numpy as np
from detectron2.data import transforms as T

__all__ = [
    "ColorJitterTransform", "GrayscaleTransform", "GaussianBlurTransform", "SolarizeTransform",
    "RandomColorJitter", "RandomGrayscale", "RandomGaussianBlur", "RandomSolarize",
    "build_view_augmentations", "BYOL_VIEW1", "BYOL_VIEW2", "MOCOV2_VIEW", "TWO_VIEW_RECIPES",
]

# BYOL's two asymmetric views (Grill et al. 2020, Table 6); MoCo v3 and SoCo use the same.
BYOL_VIEW1 = dict(flip=0.5, color=0.8, gray=0.2, blur=1.0, solarize=0.0)
BYOL_VIEW2 = dict(flip=0.5, color=0.8, gray=0.2, blur=0.1, solarize=0.2)
# MoCo v2's symmetric view (Chen et al. 2020; Fast-MoCo's official recipe): stronger saturation
# jitter, blur at p 0.5, no solarization; both views the same.
MOCOV2_VIEW = dict(flip=0.5, color=0.8, gray=0.2, blur=0.5, solarize=0.0,
                   color_strength=(0.4, 0.4, 0.4, 0.1))
# INPUT.TWO_VIEW.AUGMENT -> (view 1, view 2)
TWO_VIEW_RECIPES = {"byol": (BYOL_VIEW1, BYOL_VIEW2), "mocov2": (MOCOV2_VIEW, MOCOV2_VIEW)}
_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # RGB weights


def _to_rgb(img, fmt):
    return img[:, :, ::-1] if fmt == "BGR" else img


class _Photometric(T.Transform):
    """Pixels change, geometry does not."""

    def apply_coords(self, coords):
        return coords

    def apply_segmentation(self, segmentation):
        return segmentation


class ColorJitterTransform(_Photometric):
    """torchvision's ColorJitter with fixed factors and order (0 brightness, 1 contrast,
    2 saturation, 3 hue); ``hue`` is a shift in [-0.5, 0.5] of a full turn."""

    def __init__(self, brightness, contrast, saturation, hue, order=(0, 1, 2, 3), image_format="BGR"):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        rgb = np.ascontiguousarray(_to_rgb(img, self.image_format)).astype(np.float32)
        for op in self.order:
            if op == 0:
                rgb = rgb * self.brightness
            elif op == 1:
                mean = float((np.clip(rgb, 0, 255) @ _GRAY).mean())
                rgb = (rgb - mean) * self.contrast + mean
            elif op == 2:
                gray = (np.clip(rgb, 0, 255) @ _GRAY)[..., None]
                rgb = (rgb - gray) * self.saturation + gray
            elif op == 3 and self.hue != 0:
                hsv = cv2.cvtColor(np.clip(rgb, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV_FULL)
                hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(self.hue * 256))) % 256
                rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL).astype(np.float32)
            rgb = np.clip(rgb, 0, 255)
        out = rgb.round().astype(np.uint8)
        return np.ascontiguousarray(_to_rgb(out, self.image_format))


class GrayscaleTransform(_Photometric):
    def __init__(self, image_format="BGR"):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        gray = (_to_rgb(img, self.image_format).astype(np.float32) @ _GRAY).round()
        return np.repeat(np.clip(gray, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


class GaussianBlurTransform(_Photometric):
    def __init__(self, sigma):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        return cv2.GaussianBlur(img, (0, 0), sigmaX=self.sigma, borderType=cv2.BORDER_REFLECT_101)


class SolarizeTransform(_Photometric):
    def __init__(self, threshold=128):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        return np.where(img >= self.threshold, 255 - img, img).astype(np.uint8)


class RandomColorJitter(T.Augmentation):
    """With probability ``prob``, jitter brightness/contrast/saturation/hue in random order."""

    def __init__(self, prob=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, image_format="BGR"):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        if self._rand_range() >= self.prob:
            return T.NoOpTransform()
        f = lambda s: float(np.random.uniform(max(0.0, 1 - s), 1 + s))  # noqa: E731
        return ColorJitterTransform(
            f(self.brightness), f(self.contrast), f(self.saturation),
            float(np.random.uniform(-self.hue, self.hue)),
            tuple(int(i) for i in np.random.permutation(4)), self.image_format,
        )


class RandomGrayscale(T.Augmentation):
    def __init__(self, prob=0.2, image_format="BGR"):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        if self._rand_range() >= self.prob:
            return T.NoOpTransform()
        return GrayscaleTransform(self.image_format)


class RandomGaussianBlur(T.Augmentation):
    """BYOL: sigma uniform in [0.1, 2.0] (at 224 px; ``sigma_scale`` rescales for other sizes)."""

    def __init__(self, prob=1.0, sigma=(0.1, 2.0), sigma_scale=1.0):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        if self._rand_range() >= self.prob:
            return T.NoOpTransform()
        return GaussianBlurTransform(float(np.random.uniform(*self.sigma)) * self.sigma_scale)


class RandomSolarize(T.Augmentation):
    def __init__(self, prob=0.2, threshold=128):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        if self._rand_range() >= self.prob:
            return T.NoOpTransform()
        return SolarizeTransform(self.threshold)


def build_view_augmentations(flip, color, gray, blur, solarize, image_format="BGR", sigma_scale=1.0,
                             color_strength=(0.4, 0.4, 0.2, 0.1), photometric=True):
    """
    A BYOL-style view pipeline (probabilities as in ``BYOL_VIEW1``/``BYOL_VIEW2``): horizontal flip,
    colour jitter, grayscale, Gaussian blur, solarization. Geometric crops/resizes are the
    caller's (they differ per method) and go before these in the same ``AugmentationList``.
    ``photometric=False``: the flip only (the rest runs batched on the GPU, batched_views.py).
    """
    b, c, s, h = color_strength
    augs = []
    if flip > 0:
        augs.append(T.RandomFlip(prob=flip, horizontal=True, vertical=False))
    if not photometric:
        return augs
    augs += [
        RandomColorJitter(color, b, c, s, h, image_format),
        RandomGrayscale(gray, image_format),
        RandomGaussianBlur(blur, sigma_scale=sigma_scale),
        RandomSolarize(solarize),
    ]
    return augs
