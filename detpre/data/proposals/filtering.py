"""
SoCo's proposal filter (``ratio3size0308`` in SoCo's ``selective_search/filters.py``).

SoCo keeps a box when both sides are at least ``min_side`` pixels, its aspect ratio w/h lies
in [1/r, r], and ``sqrt(w*h) / sqrt(W*H)`` -- the square root of the box-to-image AREA ratio,
not per-side ratios -- lies in [min_size_ratio, max_size_ratio]. detpre applies it to boxes in
ORIGINAL image coordinates (SoCo ran selective search on the original images); the area ratio
does not change under the 224x224 resize, the aspect ratio and the side length do.
Then duplicates go and at most ``max_proposals`` of the best-ranked boxes stay.
"""
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from .backends import dedupe_boxes

__all__ = ["ProposalFilter"]


@dataclass(frozen=True)
class ProposalFilter:
    """Each rule is off when its value is None. Defaults are SoCo's released filter; SoCo
    samples up to 32 of the kept boxes per view (``--max_props``), so 100 leaves room."""

    max_aspect_ratio: Optional[float] = 3.0
    min_size_ratio: Optional[float] = 0.3
    max_size_ratio: Optional[float] = 0.8
    min_side: Optional[float] = 32.0
    max_proposals: Optional[int] = 100

    def keep_mask(self, boxes, height, width):
        """Boolean mask of the boxes (N, 4 XYXY) that pass the geometric rules."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        keep = (w > 0) & (h > 0)
        if self.min_side is not None:
            keep &= (w >= self.min_side) & (h >= self.min_side)
        if self.max_aspect_ratio is not None:
            r = float(self.max_aspect_ratio)
            ratio = w / np.where(h > 0, h, 1)
            keep &= (ratio >= 1.0 / r) & (ratio <= r)
        rel = np.sqrt(np.clip(w * h, 0, None) / float(height * width))
        if self.min_size_ratio is not None:
            keep &= rel >= self.min_size_ratio
        if self.max_size_ratio is not None:
            keep &= rel <= self.max_size_ratio
        return keep

    def __call__(self, boxes, height, width):
        """Filtered, de-duplicated, capped boxes (order kept: best first)."""
        boxes = np.asarray(boxes).reshape(-1, 4)
        boxes = dedupe_boxes(boxes[self.keep_mask(boxes, height, width)])
        if self.max_proposals is not None:
            boxes = boxes[: int(self.max_proposals)]
        return boxes

    def params(self):
        return asdict(self)

    @classmethod
    def disabled(cls, max_proposals=None):
        """No geometric rule; only de-duplication and the cap."""
        return cls(None, None, None, None, max_proposals)
