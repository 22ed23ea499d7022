"""Box pretraining (ClassAgnosticRCNN): labels are dropped, the caller's data is kept, a config with
classes or masks is refused, and the export takes every class-independent part of the R-CNN."""
import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from detpre.checkpoint import export_checked
from detpre.config import get_detpre_cfg

CONFIG = "configs/demo/agnostic_R18_FPN_tiny.yaml"


def _cfg(repo_root, *opts):
    return get_detpre_cfg(os.path.join(repo_root, CONFIG), ["MODEL.DEVICE", "cpu", *opts])


def _inputs():
    g = torch.Generator().manual_seed(0)
    inst = Instances((128, 128))
    inst.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 120.0, 100.0]]))
    inst.gt_classes = torch.tensor([3, 4])
    return [{"image": torch.rand(3, 128, 128, generator=g) * 255, "height": 128, "width": 128, "instances": inst}]


def test_every_box_reaches_the_heads_as_class_zero_and_the_input_is_kept(repo_root):
    torch.manual_seed(0)
    model = build_model(_cfg(repo_root)).train()
    seen = []
    model.roi_heads.register_forward_pre_hook(lambda mod, args: seen.append([t.gt_classes.clone() for t in args[3]]))
    batch = _inputs()
    with EventStorage(0):
        losses = model(batch)
    assert seen and all(c.tolist() == [0, 0] for c in seen[0])
    assert batch[0]["instances"].gt_classes.tolist() == [3, 4]  # the caller's instances untouched
    assert set(losses) >= {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    assert all(torch.isfinite(v) for v in losses.values())


def test_a_config_with_classes_or_masks_is_refused_by_name(repo_root):
    model = build_model(_cfg(repo_root))
    assert model.roi_heads.num_classes == 1 and not model.roi_heads.mask_on
    assert model.roi_heads.box_predictor.cls_score.out_features == 2  # object + background
    for key, value in (("MODEL.ROI_HEADS.NUM_CLASSES", "5"), ("MODEL.MASK_ON", "True")):
        with pytest.raises(ValueError, match=key):
            build_model(_cfg(repo_root, key, value))


def test_rpn_box_head_export_fills_all_but_the_class_specific_layers(repo_root, tmp_path):
    cfg = _cfg(repo_root)
    model = build_model(cfg)
    path = tmp_path / "agnostic.pth"
    torch.save({"model": model.state_dict(),
                "detpre": {"meta_architecture": cfg.MODEL.META_ARCHITECTURE, "config": cfg.dump()}}, path)
    finetune = os.path.join(repo_root, "configs/demo/mask_rcnn_R18_FPN_tiny.yaml")
    # no detector named: the one box pretraining declares (export_detector)
    weights, report, arch, _ = export_checked(str(path), config_file=finetune)
    assert report["detector"] == "rpn_box_head"
    assert arch == "ClassAgnosticRCNN" and not report["shape_mismatch"]
    prefixes = {k.split(".")[0] + "." + k.split(".")[1] for k in weights}
    assert {"proposal_generator.rpn_head", "roi_heads.box_head"} <= prefixes
    assert not any(k.startswith(("roi_heads.box_predictor.", "roi_heads.mask_head.")) for k in weights)
    left = {k.split(".")[1] for k in report["random_init"] if not k.endswith("num_batches_tracked")}
    assert left == {"box_predictor", "mask_head"}


def test_rpn_box_head_export_of_a_checkpoint_without_an_rpn_is_refused(repo_root, tmp_path):
    cfg = get_detpre_cfg(os.path.join(repo_root, "configs/demo/soco_R18_FPN_tiny.yaml"), ["MODEL.DEVICE", "cpu"])
    path = tmp_path / "soco.pth"
    torch.save({"model": build_model(cfg).state_dict(),
                "detpre": {"meta_architecture": "SoCo", "config": cfg.dump()}}, path)
    with pytest.raises(ValueError, match="no RPN"):
        export_checked(str(path), "rpn_box_head")
