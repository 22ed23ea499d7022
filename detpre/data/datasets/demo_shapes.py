"""
Objects and backgrounds of the demo data set: shape masks, fill textures, photo backgrounds.

Everything takes a ``numpy.random.Generator`` so that one seed fixes every pixel.
"""
import functools

import cv2
import numpy as np

__all__ = ["CATEGORIES", "TEXTURES", "draw_shape", "texture", "random_background"]

# (id, name); ids start at 1 like COCO's.
CATEGORIES = [(1, "ellipse"), (2, "rectangle"), (3, "triangle"), (4, "star"), (5, "ring")]
TEXTURES = ("solid", "stripes", "checker", "dots", "gradient")

# scikit-image photos that ship inside the package (no pooch download); grey ones get tinted.
_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "grass", "gravel", "brick",
           "coins", "moon", "hubble_deep_field", "immunohistochemistry")


@functools.lru_cache(maxsize=1)
def _photos():
    """The background photos as RGB uint8, at most 512 px per side (loaded once)."""
    import skimage.data

    out = []
    for name in _PHOTOS:
        try:
            img = getattr(skimage.data, name)()
        except Exception:  # a build of scikit-image without this file: use the others
            continue
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        img = np.ascontiguousarray(img[:, :, :3])
        scale = 512.0 / max(img.shape[:2])
        if scale < 1:
            img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        out.append(img)
    if not out:
        raise RuntimeError("scikit-image ships none of its sample photos; reinstall scikit-image")
    return out


def random_background(rng, height, width):
    """A crop of a sample photo, resized, maybe flipped, with shifted hue/brightness (uint8 RGB)."""
    photos = _photos()
    src = photos[rng.integers(len(photos))]
    sh, sw = src.shape[:2]
    # crop with the output's aspect ratio, covering 35%-100% of the photo's shorter side
    frac = rng.uniform(0.35, 1.0)
    ch = int(min(sh, sw * height / width) * frac)
    cw = int(ch * width / height)
    y0 = int(rng.integers(0, sh - ch + 1))
    x0 = int(rng.integers(0, sw - cw + 1))
    img = cv2.resize(src[y0:y0 + ch, x0:x0 + cw], (width, height), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if rng.random() < 0.3:
        img = img[::-1]
    hsv = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2HSV).astype(np.int32)
    hsv[..., 0] = (hsv[..., 0] + int(rng.integers(0, 180))) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.6, 1.3) + rng.integers(0, 60), 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] * rng.uniform(0.7, 1.2) + rng.integers(-20, 21), 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def _polygon_mask(height, width, pts):
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask


def draw_shape(rng, name, height, width, cx, cy, size):
    """
    Full (unoccluded) uint8 mask of a shape ``name`` centred at (cx, cy) whose longer extent is
    about ``size`` px, randomly rotated and stretched.
    """
    angle = rng.uniform(0, 2 * np.pi)
    aspect = rng.uniform(0.5, 1.0)
    a, b = size / 2.0, size / 2.0 * aspect  # half extents
    mask = np.zeros((height, width), np.uint8)
    center = (int(round(cx)), int(round(cy)))
    if name in ("ellipse", "ring"):
        axes = (max(int(round(a)), 1), max(int(round(b)), 1))
        cv2.ellipse(mask, center, axes, np.degrees(angle), 0, 360, 1, -1)
        if name == "ring":
            r = rng.uniform(0.45, 0.7)
            inner = (max(int(round(a * r)), 1), max(int(round(b * r)), 1))
            cv2.ellipse(mask, center, inner, np.degrees(angle), 0, 360, 0, -1)
        return mask
    if name == "rectangle":
        pts = cv2.boxPoints(((cx, cy), (2 * a, 2 * b), np.degrees(angle)))
        return _polygon_mask(height, width, pts)
    if name == "triangle":
        t = angle + np.array([0.0, 2.0, 4.0]) * np.pi / 3 + rng.uniform(-0.35, 0.35, 3)
        r = a * rng.uniform(0.8, 1.0, 3)
    elif name == "star":
        k = int(rng.integers(5, 8))
        t = angle + np.arange(2 * k) * np.pi / k
        r = np.where(np.arange(2 * k) % 2 == 0, a, a * rng.uniform(0.4, 0.55))
    else:
        raise ValueError(f"unknown demo shape {name!r}")
    pts = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)
    return _polygon_mask(height, width, pts)


def _random_color(rng):
    hsv = np.array([[[rng.integers(0, 180), rng.integers(120, 256), rng.integers(90, 256)]]],
                   np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def texture(rng, height, width, kind):
    """A ``height x width x 3`` float32 fill pattern of two random colours."""
    c1, c2 = _random_color(rng), _random_color(rng)
    if kind == "solid":
        return np.broadcast_to(c1, (height, width, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    period = rng.uniform(4, 12)
    if kind == "stripes":
        w = (np.floor(u / period) % 2).astype(np.float32)
    elif kind == "checker":
        w = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    elif kind == "dots":
        du = (u % period) - period / 2
        dv = (v % period) - period / 2
        w = (du * du + dv * dv < (period * 0.3) ** 2).astype(np.float32)
    elif kind == "gradient":
        span = max(float(u.max() - u.min()), 1.0)
        w = (u - u.min()) / span
    else:
        raise ValueError(f"unknown demo texture {kind!r}")
    return c1 * (1 - w[..., None]) + c2 * w[..., None]
