"""
An export is exact: after ``MODEL.WEIGHTS export.pkl`` a stock detectron2 detector's backbone
(and FPN and box head where the method trains them) computes what the pretraining model's online
network (or, with ``--ema``, its momentum target) computes, and carries its BN statistics.
"""
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from detpre.checkpoint import DETECTOR_PREFIXES, detector_config, export_checked, save_model_zoo_file
from detpre.config import get_detpre_cfg

METHODS = {  # demo config, what the method trains beyond the ResNet
    "soco": ("configs/demo/soco_R18_FPN_tiny.yaml", ("fpn", "box_head")),
    "fastmoco": ("configs/demo/fastmoco_R18_tiny.yaml", ()),
    "mocov3": ("configs/demo/mocov3_R18_tiny.yaml", ()),
    "jigsaw": ("configs/demo/jigsaw_R18_tiny.yaml", ()),
    "agnostic": ("configs/demo/agnostic_R18_FPN_tiny.yaml", ("fpn", "box_head", "rpn")),
}
DETECTORS = ("mask_rcnn", "faster_rcnn", "retinanet", "backbone_fpn", "rpn_box_head")


def _randomize(model, seed):
    """BN affines and statistics far from their initial 1 / 0 (conv and linear weights are the
    model's own random init, which the detector's differs from), so a missed copy shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and t.dim() == 1:
                r = torch.rand(t.shape, generator=g)
                t.copy_(0.5 + r if name.endswith(("running_var", "weight")) else r - 0.5)


def _pretrained(repo_root, tmp_path, method):
    cfg = get_detpre_cfg(os.path.join(repo_root, METHODS[method][0]), ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    _randomize(model, seed=len(method))
    path = tmp_path / f"{method}.pth"
    torch.save({"model": model.state_dict(),
                "detpre": {"meta_architecture": cfg.MODEL.META_ARCHITECTURE, "config": cfg.dump()}}, path)
    return model.eval(), cfg, str(path)


def _detector(cfg, detector, weights):
    cfg = detector_config(cfg, detector)
    cfg.MODEL.WEIGHTS = weights
    model = build_model(cfg)
    DetectionCheckpointer(model).load(weights)  # what MODEL.WEIGHTS does in detectron2
    return model.eval()


def _bn_stats(module):
    return {k: v for k, v in module.state_dict().items() if k.endswith(("running_mean", "running_var"))}


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("use_target", [False, True], ids=["online", "ema"])
def test_export_computes_the_same_features(repo_root, tmp_path, method, use_target):
    if use_target and method in ("jigsaw", "agnostic"):
        pytest.skip(f"{method} has no momentum target")
    pre, cfg, ckpt = _pretrained(repo_root, tmp_path, method)
    src = pre.target if use_target else pre
    trained = METHODS[method][1]
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = src.backbone.bottom_up(x)
        ref_fpn = src.backbone(x) if "fpn" in trained else None
    for detector in DETECTORS:
        if detector == "rpn_box_head" and "rpn" not in trained:
            continue  # refused: tests/modeling/test_agnostic.py
        weights, report, _, _ = export_checked(ckpt, detector, use_target=use_target)
        assert not report["shape_mismatch"]
        pkl = str(tmp_path / f"{method}_{detector}_{use_target}.pkl")
        save_model_zoo_file(weights, pkl)
        det = _detector(cfg, detector, pkl)
        with torch.no_grad():
            out = det.backbone.bottom_up(x)
            assert _max_diff({k: ref[k] for k in out if k in ref}, out) <= 1e-5, detector
            assert _max_diff(_bn_stats(src.backbone.bottom_up), _bn_stats(det.backbone.bottom_up)) == 0
            if ref_fpn is not None:  # p2-p5 (p6 and RetinaNet's p7 come from each top block)
                fpn = det.backbone(x)
                levels = ("p2", "p3", "p4", "p5")
                assert _max_diff({k: ref_fpn[k] for k in levels}, {k: fpn[k] for k in levels}) <= 1e-5
            if "box_head" in trained and "roi_heads.box_head." in DETECTOR_PREFIXES[detector]:
                feats = torch.randn(5, 64, 7, 7, generator=torch.Generator().manual_seed(2))
                a, b = src.roi_heads.box_head(feats), det.roi_heads.box_head(feats)
                assert (a - b).abs().max().item() <= 1e-5
                assert _max_diff(_bn_stats(src.roi_heads.box_head), _bn_stats(det.roi_heads.box_head)) == 0
            if "rpn" in trained and "proposal_generator." in DETECTOR_PREFIXES[detector]:
                feats = [torch.randn(2, 64, 16, 16, generator=torch.Generator().manual_seed(3))]
                (la,), (da,) = src.proposal_generator.rpn_head(feats)
                (lb,), (db,) = det.proposal_generator.rpn_head(feats)
                assert max((la - lb).abs().max().item(), (da - db).abs().max().item()) <= 1e-5


def test_checkpoint_with_old_key_names_still_exports(repo_root, tmp_path):
    """A checkpoint written before MODEL.MOMENTUM became MODEL.EMA: its stored config is read
    under the new names, so the export is checked against the right detector."""
    import yaml

    from detpre.checkpoint import stored_config

    cfg = get_detpre_cfg(os.path.join(repo_root, METHODS["soco"][0]), ["MODEL.DEVICE", "cpu"])
    tree = yaml.safe_load(cfg.dump())
    tree["MODEL"]["MOMENTUM"] = tree["MODEL"].pop("EMA")
    tree["MODEL"]["MOMENTUM"]["BASE"] = 0.95
    model = build_model(cfg)
    path = tmp_path / "old.pth"
    torch.save({"model": model.state_dict(),
                "detpre": {"meta_architecture": "SoCo", "config": yaml.safe_dump(tree)}}, path)
    assert stored_config(str(path)).MODEL.EMA.BASE == 0.95
    weights, report, _, _ = export_checked(str(path), "mask_rcnn")
    assert not report["shape_mismatch"] and len(report["filled"]) == len(weights)
