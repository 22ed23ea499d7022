"""
Geometric detectron2 ``Transform``s that keep polygons exact without shapely: an affine warp and
a crop-then-pad, both clipping polygons to the visible image (Sutherland-Hodgman), so boxes
recomputed from polygons frame only what is still in the picture.

Coordinates are detectron2's continuous ones (pixel ``i`` covers ``[i, i + 1)``).
"""
import cv2
import numpy as np
from detectron2.data import transforms as T

__all__ = ["clip_polygon", "AffineTransform", "CropPadTransform"]


def clip_polygon(poly, x0, y0, x1, y1):
    """Clip an Nx2 polygon to the box [x0, x1] x [y0, y1]; returns Mx2 (M may be 0)."""
    pts = [tuple(p) for p in np.asarray(poly, dtype=np.float64).reshape(-1, 2)]
    edges = ((0, x0, 1.0), (0, x1, -1.0), (1, y0, 1.0), (1, y1, -1.0))  # axis, bound, inside sign
    for axis, bound, sign in edges:
        if not pts:
            break
        out = []
        for i, cur in enumerate(pts):
            prev = pts[i - 1]
            cin, pin = sign * (cur[axis] - bound) >= 0, sign * (prev[axis] - bound) >= 0
            if cin != pin:
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                out.append(tuple(p + t * (c - p) for p, c in zip(prev, cur)))
            if cin:
                out.append(cur)
        pts = out
    return np.asarray(pts, dtype=np.float64).reshape(-1, 2)


def _clip_all(polygons, w, h):
    out = []
    for p in polygons:
        c = clip_polygon(p, 0, 0, w, h)
        if len(c) >= 3:
            out.append(c)
    return out


class AffineTransform(T.Transform):
    """
    ``x -> A x + b`` (``matrix`` = [A | b], 2x3, continuous coordinates), output ``h`` x ``w``;
    uncovered pixels take ``fill`` (masks take 0).
    """

    def __init__(self, matrix, h, w, fill=128):
        super().__init__()
        matrix = np.asarray(matrix, dtype=np.float64).reshape(2, 3)
        self._set_attributes(locals())

    def _cv_matrix(self):
        # pixel centers sit at i + 0.5 in continuous coordinates
        a, b = self.matrix[:, :2], self.matrix[:, 2]
        return np.concatenate([a, (b + a @ [0.5, 0.5] - 0.5)[:, None]], axis=1)

    def _warp(self, img, interp, fill):
        return cv2.warpAffine(img, self._cv_matrix(), (self.w, self.h), flags=interp,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=fill)

    def apply_image(self, img):
        fill = (self.fill,) * (img.shape[2] if img.ndim == 3 else 1)
        out = self._warp(img, cv2.INTER_LINEAR, fill)
        return out.reshape(out.shape[:2] + img.shape[2:])

    def apply_segmentation(self, segmentation):
        dtype = segmentation.dtype
        src = segmentation.astype(np.uint8) if dtype is bool else segmentation
        out = self._warp(src, cv2.INTER_NEAREST, 0)
        return out.astype(dtype)

    def apply_coords(self, coords):
        coords = np.asarray(coords, dtype=np.float64)
        return coords @ self.matrix[:, :2].T + self.matrix[:, 2]

    def apply_polygons(self, polygons):
        return _clip_all([self.apply_coords(p) for p in polygons], self.w, self.h)


class CropPadTransform(T.Transform):
    """
    Take the window [x0, x0 + w) x [y0, y0 + h) of the input (inside it), then pad right/bottom
    to ``out_w`` x ``out_h`` with ``pad_value`` (masks with 0): scale jitter's crop-or-pad.
    """

    def __init__(self, x0, y0, w, h, out_w, out_h, pad_value=128):
        super().__init__()
        self._set_attributes(locals())

    def _crop_pad(self, img, value):
        crop = img[self.y0:self.y0 + self.h, self.x0:self.x0 + self.w]
        pad = [(0, self.out_h - crop.shape[0]), (0, self.out_w - crop.shape[1])]
        pad += [(0, 0)] * (img.ndim - 2)
        return np.pad(crop, pad, mode="constant", constant_values=value)

    def apply_image(self, img):
        return self._crop_pad(img, self.pad_value)

    def apply_segmentation(self, segmentation):
        return self._crop_pad(segmentation, 0)

    def apply_coords(self, coords):
        return np.asarray(coords, dtype=np.float64) - [self.x0, self.y0]

    def apply_box(self, box):
        # the padded area holds no object: clip to the crop window
        box = super().apply_box(box)
        return np.clip(box, 0, [self.w, self.h, self.w, self.h])

    def apply_polygons(self, polygons):
        return _clip_all([self.apply_coords(p) for p in polygons], self.w, self.h)
