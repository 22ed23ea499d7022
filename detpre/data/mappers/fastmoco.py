"""
``TwoViewMapper``: two augmented views of one image, for two-view contrastive methods
(MoCo v3, Fast-MoCo, BYOL-style). Each view is a random resized crop followed by BYOL's
asymmetric photometric pipeline (view 1: blur always; view 2: rare blur, solarization), as MoCo
v3's ResNet recipe. All randomness comes from ``np.random`` (detpre's loaders seed it per sample).
"""
import copy

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from detpre.data.transforms import BYOL_VIEW1, BYOL_VIEW2, build_view_augmentations
from detpre.data.transforms.resized_crop import RandomResizedCrop
from detpre.data.image_io import read_image
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
        if is_train:
            crop = RandomResizedCrop(c.SIZE, tuple(c.SCALE), tuple(c.RATIO))
            views = [
                [crop] + build_view_augmentations(**v, image_format=fmt, sigma_scale=c.SIGMA_SCALE)
                for v in (BYOL_VIEW1, BYOL_VIEW2)
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
