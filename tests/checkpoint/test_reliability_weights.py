"""MODEL.WEIGHTS: missing file, a file that is not a checkpoint, a partial load of a pretrained part."""
import pickle

import pytest
import torch
from _reliability_data import tiny_cfg
from torch import nn

from detpre.checkpoint import DetpreCheckpointer
from detpre.engine.defaults import check_weights
from detpre.errors import DetpreError


class _Det(nn.Module):
    """The key layout of a detectron2 FPN detector: backbone.bottom_up, backbone.fpn_*, box head."""

    def __init__(self, fpn=8, head=8):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.bottom_up = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.backbone.fpn_lateral2 = nn.Conv2d(4, fpn, 1)
        self.backbone.fpn_output2 = nn.Conv2d(fpn, fpn, 3)
        self.roi_heads = nn.Module()
        self.roi_heads.box_head = nn.Linear(fpn, head)


def _save(model, path, keep=lambda k: True):
    torch.save({"model": {k: v for k, v in model.state_dict().items() if keep(k)}}, path)
    return str(path)


def test_missing_weights_file_is_named_before_anything_is_built(tmp_path):
    cfg = tiny_cfg("mask_rcnn_R18_FPN_tiny.yaml", tmp_path / "out", "MODEL.WEIGHTS", str(tmp_path / "nope.pkl"))
    with pytest.raises(DetpreError, match="MODEL.WEIGHTS=.*nope.pkl: no such file"):
        check_weights(cfg, resume=False)
    with pytest.raises(DetpreError, match="nope.pkl: no such checkpoint file"):
        DetpreCheckpointer(_Det()).load(str(tmp_path / "nope.pkl"))


def test_a_file_that_is_not_a_checkpoint_names_the_file_and_the_formats(tmp_path):
    foreign = tmp_path / "foreign.pkl"
    foreign.write_bytes(pickle.dumps({"hello": "world"}))
    with pytest.raises(DetpreError, match=r"foreign.pkl is not a checkpoint: entry 'hello'.*detpre reads: \.pth"):
        DetpreCheckpointer(_Det()).load(str(foreign))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a zip nor a pickle")
    with pytest.raises(DetpreError, match=r"garbage.pth is not a checkpoint detpre can read.*\.pkl"):
        DetpreCheckpointer(_Det()).load(str(garbage))


def test_partial_load_of_a_pretrained_part_is_an_error_unless_not_strict(tmp_path):
    other = _save(_Det(fpn=16, head=16), tmp_path / "other.pth")  # FPN and box head of other shapes
    with pytest.raises(DetpreError, match=r"other.pth: .*FPN: 4 of 4 weights not loaded.*MODEL.WEIGHTS_STRICT False"):
        DetpreCheckpointer(_Det()).load(other)
    model = _Det()
    before = model.backbone.fpn_lateral2.weight.clone()
    DetpreCheckpointer(model, weights_strict=False).load(other)  # warns, trains anyway
    assert torch.equal(model.backbone.fpn_lateral2.weight, before)
    # a backbone-only file (ImageNet-style) holds no FPN / box head: nothing to complain about
    src = _Det()
    only_backbone = _save(src, tmp_path / "backbone.pth", lambda k: k.startswith("backbone.bottom_up."))
    model = _Det()
    DetpreCheckpointer(model).load(only_backbone)
    assert torch.equal(model.backbone.bottom_up[0].weight, src.backbone.bottom_up[0].weight)


def test_an_rcnn_fpn_export_fills_retinanet_strictly(tmp_path):
    """RetinaNet's P6/P7 convs have no counterpart in an R-CNN FPN (SoCo's): their absence is not a
    partial FPN, so a ResNet + FPN export loads into RetinaNet with MODEL.WEIGHTS_STRICT on."""
    from detectron2.modeling import build_model

    rcnn = build_model(tiny_cfg("mask_rcnn_R18_FPN_tiny.yaml", tmp_path / "a"))
    weights = _save(rcnn, tmp_path / "bb_fpn.pth", lambda k: k.startswith("backbone."))
    retina = build_model(tiny_cfg("self_training_retinanet_R18_FPN_tiny_teacher.yaml", tmp_path / "b"))
    p6 = retina.backbone.top_block.p6.weight.clone()
    DetpreCheckpointer(retina).load(weights)
    assert torch.equal(retina.backbone.fpn_lateral3.weight, rcnn.backbone.fpn_lateral3.weight)
    assert torch.equal(retina.backbone.top_block.p6.weight, p6)  # left to RetinaNet's own init
