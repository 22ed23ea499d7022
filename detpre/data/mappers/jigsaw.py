"""
``JigsawMapper``: one 2 x 2 montage of extracted samples per training image, for
``JigsawPretrain``. The image in the stream gives one of its own samples (so an epoch covers
the data set); the other cells are drawn from the whole sample pool by aspect-ratio group.
"""
import logging
import os

import numpy as np
import torch
from detectron2.config import configurable

from detpre.data.image_io import read_image
from detpre.data.jigsaw import assemble_montage, ensure_samples, extraction_params
from detpre.registry import MAPPER_REGISTRY

__all__ = ["JigsawMapper"]

# cell order of assemble_montage: smaller S, W, T, larger S
_SLOT_GROUPS = ("S", "W", "T", "S")


@MAPPER_REGISTRY.register()
class JigsawMapper:
    """
    Returns ``{"image": uint8 CHW montage, "height", "width", "jigsaw_regions": float 4 x 4
    XYXY cells (``montage.CELL_NAMES`` order), "jigsaw_labels": int64 [4] (background = the
    number of classes), "jigsaw_content": 4 x 4 XYXY boxes of the samples' own pixels}``. All randomness comes from
    ``np.random`` so the resumable loader replays it.
    """

    @configurable
    def __init__(self, *, samples, size, fill, image_format="RGB", split_range=(0.25, 0.5)):
        self.size, self.fill = int(size), np.asarray(fill)
        self.image_format, self.split_range = image_format, tuple(split_range)
        self.images = list(samples["images"])
        self.boxes = np.asarray([s[1:5] for s in samples["samples"]], dtype=np.int64).reshape(-1, 4)
        self.labels = np.asarray([s[5] for s in samples["samples"]], dtype=np.int64)
        owner = np.asarray([s[0] for s in samples["samples"]], dtype=np.int64)
        groups = np.asarray(samples["groups"])
        if len(self.labels) == 0:
            raise ValueError("the jigsaw sample file has no samples: the training data sets have "
                             "no boxes of at least INPUT.JIGSAW.MIN_SIZE pixels")
        self.owner = owner
        self.image_index = {f: i for i, f in enumerate(self.images)}
        self.by_image = {i: np.flatnonzero(owner == i) for i in np.unique(owner)}
        # samples of images missing on disk are never drawn (skipped, as the data checks report)
        present = np.asarray([os.path.isfile(f) for f in self.images], dtype=bool)[owner]
        self.usable = np.flatnonzero(present)
        self.pools = {g: np.flatnonzero((groups == g) & present) for g in ("S", "T", "W")}
        self.groups = groups
        empty = [g for g, p in self.pools.items() if len(p) == 0]
        if empty:
            # the cell still gets a sample, padded/cropped to it, never resized
            logging.getLogger(__name__).warning(
                "jigsaw samples: no sample in group(s) %s (sizes %s); their cells take samples of "
                "any shape", empty, {g: len(p) for g, p in self.pools.items()})

    @classmethod
    def from_config(cls, cfg, is_train=True):
        samples = ensure_samples(cfg.DATASETS.JIGSAW_SAMPLES, extraction_params(cfg))
        return {
            "samples": samples,
            "size": cfg.INPUT.JIGSAW.SIZE,
            "fill": [int(round(v)) for v in cfg.MODEL.PIXEL_MEAN],  # INPUT.FORMAT order
            "image_format": cfg.INPUT.FORMAT,
            "split_range": tuple(cfg.INPUT.JIGSAW.SPLIT_RANGE),
        }

    def _draw(self, group):
        pool = self.pools[group] if len(self.pools[group]) else self.usable
        return int(pool[np.random.randint(len(pool))])

    def choose(self, file_name):
        """Sample indices for the cells (smaller S, W, T, larger S)."""
        if file_name not in self.image_index:
            raise KeyError(
                f"{file_name} is not in the jigsaw sample file: it was extracted from other data "
                "sets than DATASETS.TRAIN; re-run tools/extract_jigsaw_samples.py")
        slots = [None] * 4
        own = self.by_image.get(self.image_index[file_name], ())
        if len(own):
            s = int(own[np.random.randint(len(own))])
            slots[{"S": 0, "W": 1, "T": 2}[self.groups[s]]] = s
        for i, g in enumerate(_SLOT_GROUPS):
            if slots[i] is None:
                slots[i] = self._draw(g)
        area = lambda k: int(np.prod(self.boxes[k, 2:] - self.boxes[k, :2]))  # noqa: E731
        if area(slots[0]) > area(slots[3]):
            slots[0], slots[3] = slots[3], slots[0]
        return slots

    def _crop(self, k, cache):
        file_name = self.images[self.owner[k]]
        if file_name not in cache:
            cache[file_name] = read_image(file_name, format=self.image_format)
        image = cache[file_name]
        x1, y1, x2, y2 = self.boxes[k]
        if x2 > image.shape[1] or y2 > image.shape[0]:
            raise ValueError(
                f"{file_name}: jigsaw sample {self.boxes[k].tolist()} lies outside the image "
                f"({image.shape[1]}x{image.shape[0]}); the sample file is stale, re-run "
                "tools/extract_jigsaw_samples.py --overwrite")
        return image[y1:y2, x1:x2]

    def __call__(self, dataset_dict):
        slots = self.choose(dataset_dict["file_name"])
        cache = {}
        crops = [self._crop(k, cache) for k in slots]
        montage, cells, content = assemble_montage(crops, self.size, self.fill, self.split_range)
        return {
            "file_name": dataset_dict["file_name"],
            "image": torch.as_tensor(np.ascontiguousarray(montage.transpose(2, 0, 1))),
            "height": self.size,
            "width": self.size,
            "jigsaw_regions": torch.as_tensor(cells, dtype=torch.float32),
            "jigsaw_labels": torch.as_tensor(self.labels[slots], dtype=torch.int64),
            "jigsaw_content": torch.as_tensor(content, dtype=torch.float32),
        }
