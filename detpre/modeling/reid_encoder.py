"""
Pieces of a re-ID embedding network on a detectron2 ResNet: GeM pooling, the BN neck, and
domain-specific BN (DSBN: each BN layer keeps a second set of statistics and affines for the
source domain; the target/primary set keeps the BN's own parameter names, so exported weights
load into detectron2 detectors unchanged, with ``*.source.*`` keys left over).
"""
import contextlib

import torch.nn.functional as F
from torch import nn

__all__ = ["GeneralizedMeanPooling", "build_pooling", "BNNeck", "convert_dsbn", "dsbn_domain",
           "dsbn_source_parameters"]


class GeneralizedMeanPooling(nn.Module):
    """(mean over H, W of clamp(x, eps)^p)^(1/p): p = 1 average, p -> inf max pooling."""

    def __init__(self, p=3.0, eps=1e-6):
        super().__init__()
        self.p, self.eps = float(p), eps

    def forward(self, x):
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class AveragePooling(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


def build_pooling(kind, p=3.0):
    if kind == "avg":
        return AveragePooling()
    if kind == "gem":
        return GeneralizedMeanPooling(p)
    raise ValueError(f"MODEL.SPCL.POOLING={kind!r}: use 'avg' or 'gem'")


class BNNeck(nn.Module):
    """BatchNorm1d without a learned shift (SpCL's feat_bn), then L2 normalization."""

    def __init__(self, dim):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.bn.bias.requires_grad_(False)

    def forward(self, x):
        return F.normalize(self.bn(x), dim=1)


class _DSBNMixin:
    """``domain`` 0 uses ``self.source``; any other value (default) the BN's own parameters."""

    domain = 1

    def forward(self, x):
        if self.domain == 0:
            return self.source(x)
        return super().forward(x)


class DSBatchNorm1d(_DSBNMixin, nn.BatchNorm1d):
    pass


class DSBatchNorm2d(_DSBNMixin, nn.BatchNorm2d):
    pass


def _to_dsbn(bn):
    cls = DSBatchNorm1d if isinstance(bn, nn.BatchNorm1d) else DSBatchNorm2d
    new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    new.load_state_dict(bn.state_dict())
    new.source = type(bn)(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    new.source.load_state_dict(bn.state_dict())
    for p_new, p_src, p_old in zip(new.parameters(recurse=False), new.source.parameters(),
                                   bn.parameters()):
        p_new.requires_grad_(p_old.requires_grad)
        p_src.requires_grad_(p_old.requires_grad)
    return new


def convert_dsbn(module):
    """Replace every BatchNorm1d/2d in ``module`` (in place) by its domain-specific version.
    SyncBN variants become plain (per-process) DSBN."""
    for name, child in module.named_children():
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)) and not isinstance(child, _DSBNMixin):
            setattr(module, name, _to_dsbn(child))
        else:
            convert_dsbn(child)
    return module


@contextlib.contextmanager
def dsbn_domain(module, domain):
    """Within the block, every DSBN layer of ``module`` uses ``domain``'s BN (0 = source)."""
    layers = [m for m in module.modules() if isinstance(m, _DSBNMixin)]
    for m in layers:
        m.domain = domain
    try:
        yield
    finally:
        for m in layers:
            m.domain = 1


def dsbn_source_parameters(module):
    """Trainable parameters of the source-domain BNs (unused when a batch has no source image)."""
    return [p for m in module.modules() if isinstance(m, _DSBNMixin)
            for p in m.source.parameters() if p.requires_grad]


def set_last_stride(resnet, stride):
    """
    Give res5 of a detectron2 ``ResNet`` stride ``stride`` (1 or 2) in place, as SpCL's ResNet
    sets ``layer4[0].conv2.stride`` (and its shortcut's) to 1: the first block's strided
    convolutions get ``stride``; weights are unchanged, so ImageNet weights still load.
    """
    if stride not in (1, 2):
        raise ValueError(f"MODEL.SPCL.LAST_STRIDE={stride}: use 1 or 2")
    names = getattr(resnet, "stage_names", ())
    if "res5" not in names:
        if stride != 2:
            raise ValueError("MODEL.SPCL.LAST_STRIDE needs a ResNet with res5")
        return resnet
    block = getattr(resnet, "res5")[0]
    for m in block.modules():
        if isinstance(m, nn.Conv2d) and m.stride != (1, 1):
            m.stride = (stride, stride)
    old = resnet._out_feature_strides.get("res5")
    if old is not None:
        resnet._out_feature_strides["res5"] = old // getattr(block, "stride", 2) * stride
    block.stride = stride
    return resnet
