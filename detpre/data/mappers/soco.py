"""
``SoCoMapper``: SoCo's views of one image and K proposals in each.

V1 is the whole image resized to VIEW_SIZE; V2 a random crop (area fraction CROP_SCALE of the
image) resized to VIEW_SIZE. Which crops V3 (SMALL_VIEW_SIZE) and SoCo*'s V4 (EXTRA_VIEW_SIZE)
are, ``INPUT.SOCO.VIEWS``:

- "official" (SoCo's code, ``contrast/data/dataset.py``): the last view (V3, or SoCo*'s V4) is a
  random crop of its own with K proposals of its own; SoCo*'s V3 is V2's crop. The loss pairs V1
  with each view, and V1 holds one box set per proposal set (jittered separately): the pair
  (V1, V2) and the pair (V1, own crop) see different objects.
- "paper": V3 is V2's crop, V4 another random crop, and every view shows the same K proposals.

The crops are taken from the original pixels (the same region as cropping V1, without
resampling twice). A proposal is kept when at least MIN_VISIBLE of its area lies inside every
crop of its set; it is clipped to the region those views share, so index k shows the same image
content in V1 and every view of its set. V1's boxes may then be jittered. Each view gets its
own BYOL augmentations (V1: BYOL's view 1; the others: BYOL's view 2, as SoCo's code) with its
own random flip, applied to the boxes too. With CUTOUT_PROB > 0, V2 and V3 then get SoCo's box
cutout (its code's ``RandomCutoutInBbox``): a square erased inside each box with that probability,
filled with the pixel mean (0 after normalization, as the official code fills the normalized
tensor). All randomness comes from ``np.random``.
"""
import copy
import math

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from detpre.data.image_io import read_image
from detpre.data.transforms import BYOL_VIEW1, BYOL_VIEW2, build_view_augmentations
from detpre.data.transforms.resized_crop import sample_crop
from detpre.registry import MAPPER_REGISTRY

__all__ = ["SoCoMapper", "random_boxes", "jitter_boxes", "select_proposals",
           "cutout_in_boxes"]


def random_boxes(h, w, num, size_range=(0.3, 0.8), max_aspect=3.0):
    """``num`` random boxes (XYXY) inside an ``h`` x ``w`` image: sqrt(area) a fraction
    U(size_range) of sqrt(h * w), aspect ratio in [1/max_aspect, max_aspect] (clipped to fit)."""
    side = np.random.uniform(*size_range, size=num) * math.sqrt(h * w)
    ar = np.exp(np.random.uniform(-math.log(max_aspect), math.log(max_aspect), size=num))
    bw = np.minimum(side * np.sqrt(ar), w)
    bh = np.minimum(side / np.sqrt(ar), h)
    x0 = np.random.uniform(0, 1, size=num) * (w - bw)
    y0 = np.random.uniform(0, 1, size=num) * (h - bh)
    return np.stack([x0, y0, x0 + bw, y0 + bh], axis=1).astype(np.float32)


def jitter_boxes(boxes, prob, ratio, h, w):
    """With probability ``prob`` per box: x0, y0 += U(-r, r) * (w, h); w, h *= 1 + U(-r, r);
    clipped to the ``h`` x ``w`` image (a box that would vanish is left as it was)."""
    out = boxes.copy()
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        if np.random.uniform() >= prob:
            continue
        jx, jy, jw, jh = np.random.uniform(-ratio, ratio, size=4)
        bw, bh = x1 - x0, y1 - y0
        nx0, ny0 = x0 + jx * bw, y0 + jy * bh
        nx1, ny1 = nx0 + bw * (1 + jw), ny0 + bh * (1 + jh)
        nb = np.array([max(nx0, 0), max(ny0, 0), min(nx1, w), min(ny1, h)], dtype=np.float32)
        if nb[2] - nb[0] >= 1 and nb[3] - nb[1] >= 1:
            out[i] = nb
    return out


def cutout_in_boxes(image, boxes, prob, ratio, fill):
    """
    SoCo's box cutout, in place on ``image`` (H x W x C): for each box (XYXY, view pixels), with
    probability ``prob``, a square of area U(ratio) x (w + 1)(h + 1) around an integer point
    drawn uniformly in the box, its side ``s = round(sqrt(area))`` covering ``c - s // 2`` to
    ``c + s // 2`` inclusive (clipped to the image), is set to ``fill``. Returns the erased
    squares (x0, y0, x1, y1 exclusive).
    """
    H, W = image.shape[:2]
    erased = []
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64):
        if np.random.uniform() >= prob:
            continue
        area = np.random.uniform(*ratio) * (x1 - x0 + 1) * (y1 - y0 + 1)
        half = int(round(math.sqrt(area))) // 2
        cx = int(np.random.randint(int(x0), int(x1) + 1))
        cy = int(np.random.randint(int(y0), int(y1) + 1))
        a, b = max(cx - half, 0), min(cx + half, W - 1) + 1
        c, d = max(cy - half, 0), min(cy + half, H - 1) + 1
        image[c:d, a:b] = fill
        erased.append((a, c, b, d))
    return erased


def select_proposals(proposals, region, num, min_visible, min_side):
    """
    The proposals usable in every view: ``region`` (x0, y0, x1, y1) is what all views share;
    a proposal qualifies when at least ``min_visible`` of its area is inside it and its clipped
    box is at least ``min_side`` = (x, y) original-image pixels wide and high. Returns the
    clipped boxes of ``num`` qualifying proposals (random, repeated when fewer qualify; ``None``
    when none does) and how many qualified.
    """
    p = proposals
    clipped = np.stack([np.maximum(p[:, 0], region[0]), np.maximum(p[:, 1], region[1]),
                        np.minimum(p[:, 2], region[2]), np.minimum(p[:, 3], region[3])], axis=1)
    cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    area = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1])
    ok = (cw >= min_side[0]) & (ch >= min_side[1]) & \
        (np.clip(cw, 0, None) * np.clip(ch, 0, None) >= min_visible * area)
    idx = np.flatnonzero(ok)
    if len(idx) == 0:
        return None, 0
    if len(idx) >= num:
        pick = np.random.choice(idx, num, replace=False)
    else:
        pick = np.concatenate([np.random.permutation(idx), np.random.choice(idx, num - len(idx))])
    return clipped[pick].astype(np.float32), len(idx)


@MAPPER_REGISTRY.register()
class SoCoMapper:
    """
    Dataset dict (with ``proposal_boxes`` from a detectron2 proposal file) -> the dict without
    annotations/proposals, plus ``"views"`` (uint8 CHW tensors in ``image_format``: V1, V2, V3
    [, V4]) and ``"view_boxes"`` (one (K, 4) float32 XYXY tensor per view, proposal k = row k;
    V1's are those of V2's set). With a view of its own proposals ("official"), also
    ``"pair_boxes"``: {view index: V1's (K, 4) boxes of that view's proposals}.
    """

    @configurable
    def __init__(self, *, view_size=224, small_view_size=112, extra_view_size=0, crop_scale=(0.5, 1.0),
                 crop_ratio=(3.0 / 4.0, 4.0 / 3.0), num_proposals=4, min_visible=0.5, min_box_size=8,
                 max_tries=10, jitter_prob=0.5, jitter_ratio=0.1, random_proposals=32,
                 view_augmentations=None, image_format="BGR", cutout_prob=0.0,
                 cutout_ratio=(0.1, 0.3), cutout_fill=(0, 0, 0), views="official"):
        """``view_augmentations``: one list of detectron2 augmentations per view (after the
        crop/resize); default BYOL's view 1 for V1 and view 2 for the others. ``views``:
        "official" or "paper" (``INPUT.SOCO.VIEWS``)."""
        if num_proposals < 1 or not 0 < min_visible <= 1 or max_tries < 1:
            raise ValueError("INPUT.SOCO: NUM_PROPOSALS >= 1, 0 < MIN_VISIBLE <= 1, MAX_TRIES >= 1 required")
        if views not in ("official", "paper"):
            raise ValueError(f"INPUT.SOCO.VIEWS={views!r}: use 'official' or 'paper'")
        self.sizes = [view_size, view_size, small_view_size] + ([extra_view_size] if extra_view_size else [])
        n = len(self.sizes)
        # per view: its crop (0 = the whole image, 1 = V2's, 2 = a crop of its own) and its
        # proposal set (0 = V2's, 1 = its own)
        if views == "paper":
            self.crop_ids, self.set_ids = [0, 1, 1, 2][:n], [0] * n
        else:
            self.crop_ids, self.set_ids = [0] + [1] * (n - 2) + [2], [0] * (n - 1) + [1]
        self.views = views
        self.crop_scale, self.crop_ratio = tuple(crop_scale), tuple(crop_ratio)
        self.num_proposals, self.min_visible, self.min_box_size = num_proposals, min_visible, min_box_size
        self.max_tries, self.random_proposals = max_tries, random_proposals
        self.jitter_prob, self.jitter_ratio = jitter_prob, jitter_ratio
        self.image_format = image_format
        if not 0 <= cutout_prob <= 1 or not 0 <= cutout_ratio[0] <= cutout_ratio[1]:
            raise ValueError("INPUT.SOCO: CUTOUT_PROB in [0, 1] and 0 <= CUTOUT_RATIO[0] <= [1]")
        self.cutout_prob, self.cutout_ratio = float(cutout_prob), tuple(cutout_ratio)
        self.cutout_fill = np.clip(np.round(np.asarray(cutout_fill, dtype=np.float64)), 0, 255).astype(np.uint8)
        if view_augmentations is None:
            view_augmentations = [build_view_augmentations(**(BYOL_VIEW1 if v == 0 else BYOL_VIEW2),
                                                           image_format=image_format)
                                  for v in range(len(self.sizes))]
        if len(view_augmentations) != len(self.sizes):
            raise ValueError(f"{len(view_augmentations)} augmentation lists for {len(self.sizes)} views")
        self.view_augs = [T.AugmentationList(a) for a in view_augmentations]

    @classmethod
    def from_config(cls, cfg, is_train=True):
        c = cfg.INPUT.SOCO
        if not cfg.MODEL.LOAD_PROPOSALS or not cfg.DATASETS.PROPOSAL_FILES_TRAIN:
            raise ValueError(
                "SoCoMapper needs proposals: set MODEL.LOAD_PROPOSALS True and "
                "DATASETS.PROPOSAL_FILES_TRAIN to files made by tools/generate_proposals.py "
                "(one per DATASETS.TRAIN entry).")
        fmt = cfg.INPUT.FORMAT
        n = 4 if c.EXTRA_VIEW_SIZE else 3
        if c.GPU_AUGMENT and c.CUTOUT_PROB > 0:
            raise ValueError("INPUT.SOCO.GPU_AUGMENT with CUTOUT_PROB > 0: the cutout fill would be "
                             "colour-jittered on the GPU (on CPU it comes after); use one of them")
        augs = [build_view_augmentations(**(BYOL_VIEW1 if v == 0 else BYOL_VIEW2), image_format=fmt,
                                         sigma_scale=c.SIGMA_SCALE, photometric=not c.GPU_AUGMENT)
                for v in range(n)]
        return {
            "view_size": c.VIEW_SIZE, "small_view_size": c.SMALL_VIEW_SIZE,
            "extra_view_size": c.EXTRA_VIEW_SIZE, "crop_scale": c.CROP_SCALE, "crop_ratio": c.CROP_RATIO,
            "num_proposals": c.NUM_PROPOSALS, "min_visible": c.MIN_VISIBLE, "min_box_size": c.MIN_BOX_SIZE,
            "max_tries": c.MAX_TRIES, "jitter_prob": c.JITTER_PROB, "jitter_ratio": c.JITTER_RATIO,
            "random_proposals": c.RANDOM_PROPOSALS, "view_augmentations": augs, "image_format": fmt,
            "cutout_prob": c.CUTOUT_PROB, "cutout_ratio": c.CUTOUT_RATIO,
            # PIXEL_MEAN is in INPUT.FORMAT's channel order, as the views are
            "cutout_fill": cfg.MODEL.PIXEL_MEAN, "views": c.VIEWS,
        }

    def proposals(self, d, h, w):
        """The image's proposals as (N, 4) XYXY_ABS in original pixels, degenerate ones dropped;
        ``random_proposals`` random boxes when it has none."""
        if "proposal_boxes" not in d:
            raise KeyError(f"{d.get('file_name')}: no 'proposal_boxes'; SoCo needs MODEL.LOAD_PROPOSALS "
                           "and DATASETS.PROPOSAL_FILES_TRAIN (tools/generate_proposals.py)")
        boxes = np.asarray(d["proposal_boxes"], dtype=np.float32).reshape(-1, 4)
        mode = d.get("proposal_bbox_mode", BoxMode.XYXY_ABS)
        if len(boxes) and mode != BoxMode.XYXY_ABS:
            boxes = np.asarray(BoxMode.convert(boxes, mode, BoxMode.XYXY_ABS), dtype=np.float32)
        if len(boxes):
            boxes = np.clip(boxes, 0, [w, h, w, h])
            boxes = boxes[(boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)]
        if len(boxes) == 0:
            boxes = random_boxes(h, w, self.random_proposals)
        return boxes

    def set_geometry(self, proposals, h, w, views):
        """One proposal set: the crops of ``views`` (view indices, V1 = 0 among them; original
        pixels) and the K clipped boxes they all show."""
        ids = list(dict.fromkeys(self.crop_ids[v] for v in views if self.crop_ids[v]))  # in order
        sizes = [self.sizes[v] for v in views]
        best = (None, -1, None)
        for _ in range(self.max_tries):
            drawn = {0: (0, 0, w, h), **{i: sample_crop(h, w, self.crop_scale, self.crop_ratio) for i in ids}}
            crops = [drawn[self.crop_ids[v]] for v in views]
            region = (max(c[0] for c in crops), max(c[1] for c in crops),
                      min(c[2] for c in crops), min(c[3] for c in crops))
            if region[2] - region[0] < 1 or region[3] - region[1] < 1:
                continue
            # original pixels per view pixel, worst view: a box must be min_box_size in every view
            min_side = (self.min_box_size * max((c[2] - c[0]) / s for c, s in zip(crops, sizes)),
                        self.min_box_size * max((c[3] - c[1]) / s for c, s in zip(crops, sizes)))
            boxes, n = select_proposals(proposals, region, self.num_proposals, self.min_visible, min_side)
            if n > best[1]:
                best = (drawn, n, boxes if boxes is not None else region)
            if n >= self.num_proposals:
                break
        drawn, n, boxes = best
        if drawn is None:  # crops never overlapped (SoCo* with tiny crops): all are the first one
            drawn, n = {0: (0, 0, w, h), **{i: crops[1] for i in ids}}, 0
        crops = {self.crop_ids[v]: drawn[self.crop_ids[v]] for v in views}
        if n == 0:  # nothing qualifies: the shared region itself is the object (SoCo's fallback)
            r = (max(c[0] for c in crops.values()), max(c[1] for c in crops.values()),
                 min(c[2] for c in crops.values()), min(c[3] for c in crops.values()))
            boxes = np.tile(np.array(r, dtype=np.float32), (self.num_proposals, 1))
        return crops, boxes

    def geometry(self, proposals, h, w):
        """Per-view crops (original pixels; V1 = whole image) and the K clipped boxes of each
        proposal set (V2's first)."""
        crops, sets = {}, []
        for s in sorted(set(self.set_ids)):
            views = [0] + [v for v in range(1, len(self.sizes)) if self.set_ids[v] == s]
            c, boxes = self.set_geometry(proposals, h, w, views)
            crops.update(c)
            sets.append(boxes)
        return [crops[i] for i in self.crop_ids], sets

    def __call__(self, dataset_dict):
        d = copy.deepcopy(dataset_dict)
        image = read_image(d["file_name"], format=self.image_format)
        utils.check_image_size(d, image)
        h, w = image.shape[:2]
        crops, sets = self.geometry(self.proposals(d, h, w), h, w)
        K = self.num_proposals
        views, view_boxes, v1_sets = [], [], None
        for v, ((x0, y0, x1, y1), size) in enumerate(zip(crops, self.sizes)):
            if v == 0:  # V1 shows every set, each jittered on its own (SoCo's code)
                b = np.concatenate([jitter_boxes(s, self.jitter_prob, self.jitter_ratio, h, w) for s in sets])
            else:
                b = sets[self.set_ids[v]]
            geo = T.TransformList([T.CropTransform(x0, y0, x1 - x0, y1 - y0),
                                   T.ResizeTransform(y1 - y0, x1 - x0, size, size)])
            aug_input = T.AugInput(geo.apply_image(image), boxes=geo.apply_box(b))
            self.view_augs[v](aug_input)
            vb = np.clip(aug_input.boxes, 0, size).astype(np.float32)
            if v == 0:
                v1_sets = [torch.as_tensor(vb[i * K:(i + 1) * K]) for i in range(len(sets))]
                vb = vb[:K]
            img = aug_input.image
            if self.cutout_prob > 0 and v in (1, 2):  # V2, V3
                img = np.array(img)
                cutout_in_boxes(img, vb, self.cutout_prob, self.cutout_ratio, self.cutout_fill)
            views.append(torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1))))
            view_boxes.append(torch.as_tensor(vb))
        for k in ("annotations", "sem_seg_file_name", "proposal_boxes", "proposal_objectness_logits",
                  "proposal_bbox_mode"):
            d.pop(k, None)
        d["views"], d["view_boxes"] = views, view_boxes
        if len(sets) > 1:
            d["pair_boxes"] = {v: v1_sets[s] for v, s in enumerate(self.set_ids) if v and s}
        return d
