"""Effective dimension (participation ratio) of features: by hand, invariants, and what
evaluate_backbone reports, with the backbone left as it was."""
import math

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone

from detpre.config import get_detpre_cfg
from detpre.evaluation.backbone_probe import build_probe_backbone
from detpre.evaluation.feature_dimension import feature_dimension, participation_ratio


def test_participation_ratio_by_hand():
    # zero-mean, orthogonal channels: covariance diag(2/3, 8/3) -> (10/3)^2 / (4/9 + 64/9) = 100/68
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    assert participation_ratio(x) == pytest.approx(100 / 68)
    # one signal in every channel: 1, whatever its scale per channel
    a = torch.randn(50, 1)
    assert participation_ratio(torch.cat([a, 3 * a, -a], dim=1)) == pytest.approx(1.0)
    # C equal independent-ish channels: close to C; a constant offset changes nothing
    z = torch.linalg.qr(torch.randn(200, 8))[0]
    z = z - z.mean(0)
    assert participation_ratio(z + 5.0) == pytest.approx(participation_ratio(z))
    assert 7.0 < participation_ratio(z) <= 8.0
    assert math.isnan(participation_ratio(torch.ones(10, 4)))
    # (N, C, H, W): the channels' covariance over every image and location
    maps = torch.randn(3, 4, 5, 6)
    flat = maps.permute(0, 2, 3, 1).reshape(-1, 4)
    assert participation_ratio(maps) == pytest.approx(participation_ratio(flat))


class _Collapsed(Backbone):
    """A backbone whose "res4" carries one map in all its channels, "res5" independent noise."""

    def forward(self, x):
        one = x.mean(1, keepdim=True)
        return {"res4": one * torch.arange(1.0, 9.0).view(1, 8, 1, 1),
                "res5": torch.randn(x.shape[0], 8, x.shape[2], x.shape[3], generator=torch.Generator().manual_seed(0))}

    def output_shape(self):
        return {"res4": ShapeSpec(channels=8, stride=16), "res5": ShapeSpec(channels=8, stride=32)}


def test_a_collapsed_stage_reads_one():
    imgs = torch.randint(0, 255, (5, 3, 8, 8), dtype=torch.uint8)
    d = feature_dimension(_Collapsed(), imgs, [100.0] * 3, [50.0] * 3, stages=("res4", "res5"), batch_size=2)
    assert d["res4"] == pytest.approx(1.0) and d["res5"] > 5.0


def test_resnet_left_as_it_was_and_batches_never_of_one():
    cfg = get_detpre_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4", "res5"]
    net = build_probe_backbone(cfg)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    imgs = torch.randint(0, 255, (5, 3, 32, 32), dtype=torch.uint8)  # res5 is 1 x 1
    d = feature_dimension(net, imgs, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, stages=("res4", "res5"), batch_size=4)
    assert set(d) == {"res4", "res5"} and all(1.0 <= v <= 512 for v in d.values())
    assert not net.training  # the probe's eval mode and running statistics are kept
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k])
