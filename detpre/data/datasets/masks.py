"""
Binary mask -> COCO polygons.

COCO polygons are unioned when rasterized, so a mask with holes (a ring, or an object with a
smaller one lying on top of it) cannot be written as its outer contours. Such a mask is cut into
vertical strips through each hole until every piece is hole-free; each piece's outer contour is
then one polygon.
"""
import cv2
import numpy as np

__all__ = ["mask_to_polygons", "mask_to_bbox"]

_MAX_CUT_ROUNDS = 8


def mask_to_bbox(mask):
    """COCO ``[x, y, w, h]`` of the pixels set in ``mask`` (pixel i covers [i, i + 1))."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]


def _hole_columns(hierarchy, contours):
    """One column inside each hole (the hole's widest column), or [] when there is none."""
    cols = []
    if hierarchy is None:
        return cols
    for contour, (_, _, _, parent) in zip(contours, hierarchy[0]):
        if parent < 0:
            continue
        xs = contour[:, 0, 0]
        # the hole's contour runs through the foreground pixels around it; its middle column
        # lies inside the hole whenever the hole is at least one pixel wide there.
        cols.append(int((int(xs.min()) + int(xs.max()) + 1) // 2))
    return cols


def _split_holes(mask):
    """Pieces of ``mask`` (uint8, 0/1) without holes; their union is ``mask``."""
    pieces, todo = [], [mask]
    for _ in range(_MAX_CUT_ROUNDS):
        next_todo = []
        for m in todo:
            contours, hierarchy = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
            cols = sorted(set(_hole_columns(hierarchy, contours)))
            if not cols:
                pieces.append(m)
                continue
            edges = [0] + cols + [m.shape[1]]
            for a, b in zip(edges[:-1], edges[1:]):
                if b > a and m[:, a:b].any():
                    strip = np.zeros_like(m)
                    strip[:, a:b] = m[:, a:b]
                    next_todo.append(strip)
        todo = next_todo
        if not todo:
            break
    return pieces + todo  # anything left after the last round keeps (at worst) a filled hole


def mask_to_polygons(mask):
    """
    COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` around ``mask``. Contours are traced on the
    mask upsampled 2x, so they run a quarter pixel inside the pixel edges rather than through
    the boundary pixels' centres: rasterized back, they lose far less of thin or small pieces.
    """
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    polygons = []
    for piece in _split_holes(mask):
        up = np.repeat(np.repeat(piece, 2, axis=0), 2, axis=1)
        contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for c in contours:
            if len(c) < 3:
                continue
            pts = (c[:, 0, :].astype(np.float64) + 0.5) / 2
            polygons.append([float(v) for v in pts.reshape(-1)])
    return polygons
