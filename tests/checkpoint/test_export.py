"""tools/convert_pretrained.py: a SoCo checkpoint fills a stock Mask R-CNN's backbone/FPN/box head."""
import importlib.util
import os
import pickle

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

import detpre.modeling.meta_arch.soco  # noqa: F401  (registers SoCo)
from detpre.config import get_detpre_cfg
from detpre.engine.trainer import _RunInfo


def _tool(repo_root):
    tool = os.path.join(repo_root, "tools", "convert_pretrained.py")
    spec = importlib.util.spec_from_file_location("convert_pretrained", tool)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def soco_checkpoint(tmp_path_factory):
    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = get_detpre_cfg()
    cfg.merge_from_file(os.path.join(repo_root, "configs/demo/soco_R18_FPN_tiny.yaml"))
    cfg.MODEL.SOCO.HIDDEN_DIM = 32
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # online and target differ, as after training
        for p in model.target.parameters():
            p.add_(1.0)
    out = tmp_path_factory.mktemp("soco")
    DetectionCheckpointer(model, str(out), detpre=_RunInfo(cfg)).save("model_final")
    return os.path.join(out, "model_final.pth"), model.state_dict()


def _mask_rcnn(repo_root, weights):
    cfg = get_detpre_cfg()
    cfg.merge_from_file(os.path.join(repo_root, "configs/demo/mask_rcnn_R18_FPN_tiny.yaml"))
    cfg.MODEL.WEIGHTS = weights
    model = build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    return model


@pytest.mark.parametrize("ema", [False, True])
def test_export_fills_every_backbone_fpn_box_head_key(repo_root, tmp_path, soco_checkpoint, ema, capsys):
    ckpt, state = soco_checkpoint
    out = str(tmp_path / "soco.pkl")
    args = ["--input", ckpt, "--output", out] + (["--ema"] if ema else [])
    assert _tool(repo_root).main(args) == 0
    report = capsys.readouterr().out
    assert "roi_heads.box_predictor" in report and "warning" not in report
    with open(out, "rb") as f:
        data = pickle.load(f)
    assert data["__author__"].startswith("detpre") and not data["matching_heuristics"]
    assert all(k.startswith(("backbone.", "roi_heads.box_head.")) for k in data["model"])
    detector = _mask_rcnn(repo_root, out)
    prefix = "target." if ema else ""
    pretrained = [k for k in detector.state_dict()
                  if k.startswith(("backbone.", "roi_heads.box_head.")) and not k.endswith("num_batches_tracked")]
    assert len(pretrained) > 100
    for k in pretrained:
        assert torch.equal(detector.state_dict()[k], state[prefix + k]), k


def test_refuses_checkpoints_detpre_did_not_write(repo_root, tmp_path):
    tool = _tool(repo_root)
    plain = tmp_path / "plain.pth"
    torch.save({"model": {"backbone.x": torch.zeros(1)}}, plain)
    with pytest.raises(SystemExit, match="not a checkpoint written by detpre"):
        tool.main(["--input", str(plain), "--output", str(tmp_path / "o.pkl")])
    rcnn = tmp_path / "rcnn.pth"
    torch.save({"model": {"backbone.x": torch.zeros(1)}, "detpre": {"meta_architecture": "GeneralizedRCNN"}}, rcnn)
    with pytest.raises(SystemExit, match="not a detpre pretraining architecture"):
        tool.main(["--input", str(rcnn), "--output", str(tmp_path / "o.pkl")])
    assert not (tmp_path / "o.pkl").exists()


def test_refuses_an_export_that_does_not_fit_the_detector(repo_root, tmp_path, soco_checkpoint):
    ckpt, _ = soco_checkpoint
    with pytest.raises(SystemExit, match="do not fit"):
        _tool(repo_root).main(["--input", ckpt, "--output", str(tmp_path / "o.pkl"),
                               "--config-file",
                               os.path.join(repo_root, "configs/finetune/mask_rcnn_R50_FPN_1x_SoCo.yaml")])
    assert not (tmp_path / "o.pkl").exists()
