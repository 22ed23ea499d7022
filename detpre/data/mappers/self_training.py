"""
``StrongAugMapper``: detectron2's ``DatasetMapper`` with the self-training student's strong
augmentation (S1-S4). The geometry clips polygons to the visible image, so with masks the
boxes are recomputed from them and frame only what is left of each object after a crop.
"""
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils

from detpre.data.transforms.strong_aug import build_strong_augmentation
from detpre.registry import MAPPER_REGISTRY

__all__ = ["StrongAugMapper"]


@MAPPER_REGISTRY.register()
class StrongAugMapper(DatasetMapper):
    @configurable
    def __init__(self, is_train=True, *, boxes_from_masks=False, **kwargs):
        """``boxes_from_masks``: replace each box by its (clipped) mask's box after augmentation.
        Done here rather than with DatasetMapper's ``recompute_boxes``, which fails on images
        without annotations (pseudo-labeled images often have none)."""
        super().__init__(is_train, **kwargs)
        self.boxes_from_masks = boxes_from_masks

    @classmethod
    def from_config(cls, cfg, is_train=True, level=None):
        """``level``: S1-S4 or "none" (detectron2's resize + flip); default INPUT.SELF_TRAINING.AUGMENT."""
        ret = DatasetMapper.from_config(cfg, is_train)
        level = str(level or cfg.INPUT.SELF_TRAINING.AUGMENT)
        if is_train and level.lower() != "none":
            ret["augmentations"] = build_strong_augmentation(
                level, cfg.INPUT.SELF_TRAINING.IMAGE_SIZE, cfg.INPUT.FORMAT,
                cfg.INPUT.SELF_TRAINING.RANDAUG_N, cfg.INPUT.SELF_TRAINING.RANDAUG_M)
            ret["recompute_boxes"] = False
            ret["boxes_from_masks"] = bool(cfg.MODEL.MASK_ON)
        return ret

    def __call__(self, dataset_dict):
        out = super().__call__(dataset_dict)
        inst = out.get("instances")
        if self.boxes_from_masks and inst is not None and inst.has("gt_masks"):
            inst.gt_boxes = inst.gt_masks.get_bounding_boxes()
            out["instances"] = utils.filter_empty_instances(inst)
        return out
