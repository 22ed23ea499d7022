"""
What every detpre meta-architecture shares with detectron2's detectors: a ResNet named as in FPN
detectors (``backbone.bottom_up.*``) and the pixel normalization of ``GeneralizedRCNN``.
"""
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import build_resnet_backbone
from torch import nn

__all__ = ["BottomUpContainer", "build_bottom_up", "PixelNormalizeMixin"]


class BottomUpContainer(nn.Module):
    """Holds a ResNet at ``bottom_up`` so its keys are ``backbone.bottom_up.*``, as in FPN detectors:
    exporting a ResNet-only method to Mask R-CNN/RetinaNet then needs no renaming."""

    def __init__(self, bottom_up):
        super().__init__()
        self.bottom_up = bottom_up

    def forward(self, x):
        return self.bottom_up(x)

    def output_shape(self):
        return self.bottom_up.output_shape()


def build_bottom_up(cfg, out_feature):
    """detectron2's ResNet from ``MODEL.RESNETS``, cut after ``out_feature`` (e.g. "res5") so that
    every parameter it has gets a gradient (DDP runs without find_unused_parameters)."""
    c = cfg.clone()
    c.defrost()
    c.MODEL.RESNETS.OUT_FEATURES = [out_feature]
    return build_resnet_backbone(c, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))


class PixelNormalizeMixin:
    """``GeneralizedRCNN``'s ``(x - PIXEL_MEAN) / PIXEL_STD`` on the model's device."""

    def register_pixel_stats(self, pixel_mean, pixel_std):
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def device(self):
        return self.pixel_mean.device

    def normalize(self, x):
        return (x.to(self.device, non_blocking=True).float() - self.pixel_mean) / self.pixel_std
