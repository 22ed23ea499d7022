"""
Montage layout: a ``size x size`` image split into a 2 x 2 grid at a point chosen from the
samples. Cell order is (top-left, top-right, bottom-left, bottom-right) and takes (smaller S,
W, T, larger S). The split point is the top-left sample's own size, kept within
``split_range * size``, so the top-right cell is wide, the bottom-left tall and the bottom-right
the largest. A sample is never resized: larger than its cell it is randomly cropped, smaller it
is placed at a random offset and the rest of the cell is filled with the mean pixel.
"""
import numpy as np

__all__ = ["split_point", "montage_cells", "fit_to_cell", "assemble_montage", "CELL_NAMES"]

CELL_NAMES = ("top_left", "top_right", "bottom_left", "bottom_right")


def split_point(tl_height, tl_width, size, split_range=(0.25, 0.5)):
    """(cy, cx): the top-left sample's height/width, clipped to ``split_range`` of ``size``."""
    lo, hi = split_range
    if not 0.0 < lo <= hi < 1.0:
        raise ValueError(f"split_range {split_range}: need 0 < lo <= hi < 1")
    lo_px, hi_px = max(1, int(round(lo * size))), min(size - 1, int(round(hi * size)))
    return int(np.clip(tl_height, lo_px, hi_px)), int(np.clip(tl_width, lo_px, hi_px))


def montage_cells(size, cy, cx):
    """The four cells as integer XYXY boxes in CELL_NAMES order; they tile the montage."""
    return np.array(
        [[0, 0, cx, cy], [cx, 0, size, cy], [0, cy, cx, size], [cx, cy, size, size]],
        dtype=np.int64,
    )


def fit_to_cell(crop, cell_h, cell_w, fill, rng=np.random):
    """
    ``crop`` (H x W x C) in a ``cell_h x cell_w`` canvas without resizing: random crop along a
    side that is too long, random offset and ``fill`` along one that is too short. Returns the
    canvas and the XYXY box of the sample's pixels inside it.
    """
    h, w = crop.shape[:2]
    # too long: keep a random window; too short: put it at a random offset
    sy = int(rng.randint(0, h - cell_h + 1)) if h > cell_h else 0
    sx = int(rng.randint(0, w - cell_w + 1)) if w > cell_w else 0
    part = crop[sy:sy + cell_h, sx:sx + cell_w]
    ph, pw = part.shape[:2]
    oy = int(rng.randint(0, cell_h - ph + 1))
    ox = int(rng.randint(0, cell_w - pw + 1))
    canvas = np.empty((cell_h, cell_w, crop.shape[2]), dtype=crop.dtype)
    canvas[...] = np.asarray(fill, dtype=crop.dtype)
    canvas[oy:oy + ph, ox:ox + pw] = part
    return canvas, np.array([ox, oy, ox + pw, oy + ph], dtype=np.int64)


def assemble_montage(crops, size, fill, split_range=(0.25, 0.5), rng=np.random):
    """
    ``crops`` = (smaller S, W, T, larger S) arrays H x W x C. Returns the montage
    (``size x size x C``), the cells (4 x 4 XYXY, the regions the labels belong to) and the
    boxes the samples' pixels occupy (4 x 4 XYXY, within their cells).
    """
    if len(crops) != 4:
        raise ValueError(f"a montage takes 4 samples, got {len(crops)}")
    cy, cx = split_point(crops[0].shape[0], crops[0].shape[1], size, split_range)
    cells = montage_cells(size, cy, cx)
    out = np.empty((size, size, crops[0].shape[2]), dtype=crops[0].dtype)
    content = np.zeros((4, 4), dtype=np.int64)
    for i, (crop, (x1, y1, x2, y2)) in enumerate(zip(crops, cells)):
        canvas, box = fit_to_cell(crop, y2 - y1, x2 - x1, fill, rng)
        out[y1:y2, x1:x2] = canvas
        content[i] = box + np.array([x1, y1, x1, y1])
    return out, cells, content
