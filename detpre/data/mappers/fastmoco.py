"""
``TwoViewMapper``: two augmented views of one image, for two-view contrastive methods
(MoCo v3, Fast-MoCo, BYOL-style). Each view is a random resized crop followed by a photometric
pipeline, ``INPUT.TWO_VIEW.AUGMENT``: "byol", BYOL's asymmetric one (view 1: blur always; view 2:
rare blur, solarization) as MoCo v3's ResNet recipe, or "mocov2", MoCo v2's symmetric one
(Fast-MoCo's official recipe). All randomness comes from ``np.random`` (detpre's loaders seed it per sample).
"""
import copy

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from detpre.data.image_io import read_image
from detpre.data.transforms import TWO_VIEW_RECIPES, build_view_augmentations
from detpre.data.transforms.resized_crop import RandomResizedCrop
from detpre.registry import MAPPER_REGISTRY

__all__ = ["TwoViewMapper"]


@MAPPER_REGISTRY.register()
class TwoViewMapper:
    """
    Dataset dict -> the same dict without annotations, plus ``"views"``: a list of two uint8
    CHW tensors (``image_format`` channel order) of equal size.
    """

    @configurable
    def __init__(self, *, view1_augmentations, view2_augmentations, image_format="BGR"):
        self.views = (T.AugmentationList(view1_augmentations), T.AugmentationList(view2_augmentations))
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg, is_train=True):
        c = cfg.INPUT.TWO_VIEW
        fmt = cfg.INPUT.FORMAT
        if c.AUGMENT not in TWO_VIEW_RECIPES:
            raise ValueError(f"INPUT.TWO_VIEW.AUGMENT={c.AUGMENT!r}: use one of {sorted(TWO_VIEW_RECIPES)}")
        if is_train:
            crop = RandomResizedCrop(c.SIZE, tuple(c.SCALE), tuple(c.RATIO))
            views = [
                [crop] + build_view_augmentations(**v, image_format=fmt, sigma_scale=c.SIGMA_SCALE,
                                                  photometric=not c.GPU_AUGMENT)
                for v in TWO_VIEW_RECIPES[c.AUGMENT]
            ]
        else:
            # deterministic: the central square, resized; both views equal
            center = RandomResizedCrop(c.SIZE, scale=(1.0, 1.0), ratio=(1.0, 1.0))
            views = [[center], [center]]
        return {"view1_augmentations": views[0], "view2_augmentations": views[1], "image_format": fmt}

    def __call__(self, dataset_dict):
        d = copy.deepcopy(dataset_dict)
        image = read_image(d["file_name"], format=self.image_format)
        utils.check_image_size(d, image)
        views = []
        for augs in self.views:
            aug_input = T.AugInput(image)
            augs(aug_input)
            views.append(torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1))))
        d.pop("annotations", None)
        d.pop("sem_seg_file_name", None)
        d["views"] = views
        return d
