"""
``ClassAgnosticRCNN``: box pretraining. detectron2's R-CNN trained on a detection data set's own
boxes with every label replaced by one class, "object".

Why: at a short fine-tuning budget what a detector lacks is localization, not features that
separate classes (docs/findings/transfer.md section 11). An RPN and a box head that already find and fit
boxes are a start no feature-level pretraining gives: the class-specific layers (the box
predictor, the mask head) are the only ones the fine-tuning has to learn from scratch.
``tools/convert_pretrained.py --detector rpn_box_head`` exports ResNet, FPN, RPN and box head.

Labels are dropped in ``forward``, so any registered detection data set trains it unchanged.
"""
import torch
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import Instances

from detpre.method import DemoEntry

__all__ = ["ClassAgnosticRCNN"]


@META_ARCH_REGISTRY.register()
class ClassAgnosticRCNN(GeneralizedRCNN):
    """GeneralizedRCNN with one class ("object") and no mask or keypoint head: the box predictor
    and the mask head are class-specific, so they are neither trained nor exported."""

    config_groups = ()  # detectron2's R-CNN keys
    # all an R-CNN has that does not depend on its classes: ResNet, FPN, RPN and box head
    export_detector = "rpn_box_head"
    trains_on_labels = True  # the data set's own boxes (detpre.method.trains_on_judged_labels)
    demo = {"agnostic": DemoEntry(
        "configs/demo/agnostic_R18_FPN_tiny.yaml", 0.55,
        note="agnostic = box pretraining: the same R-CNN trained first on train's own boxes with labels dropped "
             "(configs/demo/agnostic_R18_FPN_tiny.yaml); its control row is random init given those extra "
             "iterations as ordinary fine-tuning (docs/methods/box_pretraining.md).")}

    @classmethod
    def from_config(cls, cfg):
        wrong = [f"{k} {v}" for k, v, ok in (
            ("MODEL.ROI_HEADS.NUM_CLASSES", cfg.MODEL.ROI_HEADS.NUM_CLASSES, 1),
            ("MODEL.MASK_ON", cfg.MODEL.MASK_ON, False),
            ("MODEL.KEYPOINT_ON", cfg.MODEL.KEYPOINT_ON, False)) if v != ok]
        if wrong:
            raise ValueError(f"ClassAgnosticRCNN trains one class and boxes only, but the config has "
                             f"{', '.join(wrong)}; set MODEL.ROI_HEADS.NUM_CLASSES 1, MODEL.MASK_ON False "
                             "and MODEL.KEYPOINT_ON False")
        return super().from_config(cfg)

    def forward(self, batched_inputs):
        if self.training:
            batched_inputs = [_agnostic(x) for x in batched_inputs]
        return super().forward(batched_inputs)


def _agnostic(x):
    """A copy of a mapped input whose instances all have class 0 (the caller's dict is kept)."""
    if "instances" not in x:
        return x
    old = x["instances"]
    inst = Instances(old.image_size, **old.get_fields())  # own field dict: the input stays as it was
    if inst.has("gt_classes"):
        inst.gt_classes = torch.zeros_like(inst.gt_classes)
    return {**x, "instances": inst}
