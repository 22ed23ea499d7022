"""Draw a sample's views side by side with its proposals, one colour per proposal index."""

import numpy as np
from detectron2.utils.colormap import colormap
from PIL import Image, ImageDraw

from detpre.utils.io import atomic_open

__all__ = ["draw_views", "save_png"]


def draw_views(views, view_boxes, image_format="RGB", height=224, gap=8):
    """
    ``views``: CHW uint8 tensors/arrays in ``image_format``; ``view_boxes``: one (K, 4) XYXY array
    per view. Each view is scaled to ``height`` px (so V3 is shown as large as V1) and proposal k
    is drawn in the same colour in every view. Returns an HxWx3 RGB uint8 array.
    """
    colors = [tuple(int(c) for c in rgb) for rgb in colormap(rgb=True, maximum=255)]
    tiles = []
    for img, boxes in zip(views, view_boxes):
        a = np.asarray(img).transpose(1, 2, 0)
        if image_format == "BGR":
            a = a[:, :, ::-1]
        scale = height / a.shape[0]
        tile = Image.fromarray(np.ascontiguousarray(a)).resize((round(a.shape[1] * scale), height), Image.BILINEAR)
        draw = ImageDraw.Draw(tile)
        for k, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, dtype=np.float64) * scale):
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colors[k % len(colors)], width=2)
            draw.text((x0 + 3, y0 + 2), str(k), fill=colors[k % len(colors)])
        tiles.append(np.asarray(tile))
    width = sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    x = 0
    for t in tiles:
        canvas[:, x:x + t.shape[1]] = t
        x += t.shape[1] + gap
    return canvas


def save_png(array, path):
    """Write ``array`` as a PNG through a temporary name + rename."""
    with atomic_open(path, "wb") as f:
        Image.fromarray(array).save(f, format="PNG")
