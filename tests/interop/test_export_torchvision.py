"""A detpre ResNet exported as torchvision's: strict load, the same features, layouts it cannot express refused."""
import pytest
import torch
import torchvision
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import build_resnet_backbone

from detpre.config import get_detpre_cfg
from detpre.errors import DetpreError
from detpre.interop.torchvision import detectron2_to_torchvision, torchvision_to_detectron2


def _cfg(depth, stride_in_1x1=False, norm="FrozenBN"):
    cfg = get_detpre_cfg()
    r = cfg.MODEL.RESNETS
    r.DEPTH, r.STRIDE_IN_1X1, r.NORM = depth, stride_in_1x1, norm
    r.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
    r.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return cfg


def _random_resnet(cfg, seed=0):
    """detectron2's ResNet with random weights and random BN statistics, in eval mode."""
    torch.manual_seed(seed)
    net = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand_like(t) + 0.5)
            elif name.endswith(("running_mean", "norm.bias")):
                t.copy_(torch.randn_like(t) * 0.1)
            elif name.endswith("norm.weight"):
                t.copy_(torch.rand_like(t) + 0.5)
    return net.eval()


def _torchvision_stages(model, x):
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    out = {}
    for i in range(1, 5):
        x = getattr(model, f"layer{i}")(x)
        out[f"res{i + 1}"] = x
    return out


@pytest.mark.parametrize("depth,norm", [(18, "BN"), (50, "FrozenBN")])
def test_export_loads_strictly_and_computes_the_same_features(depth, norm):
    cfg = _cfg(depth, norm=norm)
    net = _random_resnet(cfg)
    state = detectron2_to_torchvision(net.state_dict(), cfg.MODEL.RESNETS, prefix="", num_classes=7)
    tv = getattr(torchvision.models, f"resnet{depth}")(num_classes=7)
    tv.load_state_dict(state, strict=True)
    tv.eval()
    assert torch.count_nonzero(state["fc.weight"]) == 0 and state["fc.weight"].shape == (7, tv.fc.in_features)
    assert all(int(v) == 0 for k, v in state.items() if k.endswith("num_batches_tracked"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = net(x), _torchvision_stages(tv, x)
    for stage in ("res2", "res3", "res4", "res5"):
        torch.testing.assert_close(theirs[stage], ours[stage], atol=1e-5, rtol=1e-5)


def test_msra_layout_and_other_resnets_are_refused():
    cfg = _cfg(50, stride_in_1x1=True)
    net = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    with pytest.raises(DetpreError, match="STRIDE_IN_1X1 True.*MSRA"):
        detectron2_to_torchvision(net.state_dict(), cfg.MODEL.RESNETS, prefix="")
    for key, value, msg in [("NUM_GROUPS", 32, "NUM_GROUPS"), ("RES5_DILATION", 2, "RES5_DILATION"),
                            ("NORM", "GN", "BatchNorm"), ("DEPTH", 26, "depths")]:
        cfg = _cfg(50)
        cfg.MODEL.RESNETS[key] = value
        with pytest.raises(DetpreError, match=msg):
            detectron2_to_torchvision({}, cfg.MODEL.RESNETS, prefix="")
    cfg = _cfg(18)  # a ResNet cut after res4 has no layer4
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    net = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    with pytest.raises(DetpreError, match="missing.*layer4"):
        detectron2_to_torchvision(net.state_dict(), cfg.MODEL.RESNETS, prefix="")


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_round_trip_is_identical(depth):
    torch.manual_seed(1)
    tv = getattr(torchvision.models, f"resnet{depth}")()
    with torch.no_grad():
        for name, t in tv.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t))
    original = tv.state_dict()
    d2 = torchvision_to_detectron2(original)
    assert "backbone.bottom_up.stem.conv1.norm.running_var" in d2 and not any(k.startswith("fc") for k in d2)
    back = detectron2_to_torchvision(d2, _cfg(depth).MODEL.RESNETS, num_classes=1000)
    assert list(back) == list(original)
    for k, v in original.items():
        if not k.startswith("fc."):
            assert torch.equal(back[k], v), k


def test_convert_pretrained_writes_a_torchvision_file(repo_root, tmp_path, capsys):
    """tools/convert_pretrained.py --format torchvision on a detpre checkpoint: a plain-tensor .pth
    (weights_only) that resnet18 loads strictly and that computes the pretraining ResNet's res5;
    --ema takes the momentum target."""
    import importlib.util
    import os

    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    import detpre.modeling.meta_arch.soco  # noqa: F401  (registers SoCo)
    from detpre.engine.trainer import _RunInfo

    cfg = get_detpre_cfg(os.path.join(repo_root, "configs/demo/soco_R18_FPN_tiny.yaml"),
                         ["MODEL.SOCO.HIDDEN_DIM", "32"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.target.parameters():
            p.add_(1.0)
    DetectionCheckpointer(model, str(tmp_path), detpre=_RunInfo(cfg)).save("model_final")
    spec = importlib.util.spec_from_file_location("convert_pretrained", os.path.join(repo_root, "tools",
                                                                                     "convert_pretrained.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    x = torch.randn(1, 3, 64, 64)
    for ema, source in ((False, model.backbone.bottom_up), (True, model.target.backbone.bottom_up)):
        out = str(tmp_path / f"r18_{ema}.pth")
        argv = ["--input", str(tmp_path / "model_final.pth"), "--output", out, "--format", "torchvision"]
        assert tool.main(argv + (["--ema"] if ema else [])) == 0
        tv = torchvision.models.resnet18()
        tv.load_state_dict(torch.load(out, weights_only=True), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(_torchvision_stages(tv.eval(), x)["res5"], source.eval()(x)["res5"],
                                       atol=1e-5, rtol=1e-5)
    assert "wrote" in capsys.readouterr().out
