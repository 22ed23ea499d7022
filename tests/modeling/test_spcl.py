"""SpCL pieces: re-ID data sets, mapper, encoder (GeM, DSBN), layout, and a tiny training run."""
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

import detpre.engine.spcl_hooks  # noqa: F401  (registers ClusterRefresh)
import detpre.evaluation.reid  # noqa: F401
from detpre.config import get_detpre_cfg
from detpre.data.datasets.reid import (
    load_reid_crops,
    load_reid_test,
    load_reid_train,
    parse_reid_name,
    register_reid,
    reid_memory_layout,
)
from detpre.data.datasets.reid_demo import generate_reid_demo
from detpre.data.mappers.reid import ReIDMapper
from detpre.modeling.meta_arch.spcl import SpCL
from detpre.modeling.reid_encoder import GeneralizedMeanPooling, convert_dsbn, dsbn_domain

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _market(root, names):
    for folder, files in names.items():
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        for f in files:
            with open(os.path.join(root, folder, f), "wb") as fh:  # names matter, not pixels
                fh.write(b"x")
    return str(root)


def test_market_layout_protocol(tmp_path):
    root = _market(tmp_path / "m", {
        "bounding_box_train": ["0007_c1s1_000001_00.jpg", "0003_c2s1_000002_00.jpg",
                               "-1_c1s1_000003_00.jpg", "0007_c3s2_000004_01.jpg", "notes.txt"],
        "query": ["0005_c1s1_000001_00.jpg"],
        "bounding_box_test": ["0005_c2s1_000002_00.jpg", "0000_c1s1_000003_00.jpg",
                              "-1_c1s1_000004_00.jpg"],
    })
    assert parse_reid_name("0002_c1s1_000451_03.jpg") == (2, 1)
    assert parse_reid_name("-1_c12s3_000001_00.png") == (-1, 12)
    train = load_reid_train(root, "m_train")
    assert [(d["orig_pid"], d["pid"], d["camid"]) for d in train] == [(3, 0, 2), (7, 1, 1), (7, 1, 3)]
    assert [d["index"] for d in train] == [0, 1, 2]
    test = load_reid_test(root, "m_test")
    assert [(d["reid_split"], d["pid"]) for d in test] == [("query", 5), ("gallery", 0), ("gallery", 5)]
    register_reid("spcl_test_market", root)
    assert MetadataCatalog.get("spcl_test_market_test").evaluator_type == "reid"
    assert len(DatasetCatalog.get("spcl_test_market_train")) == 3
    bad = _market(tmp_path / "bad", {"bounding_box_train": ["img1.jpg"]})
    with pytest.raises(ValueError, match="PID_cCAM"):
        load_reid_train(bad, "x")
    with pytest.raises(FileNotFoundError, match="spcl.md"):
        load_reid_test(bad, "x")


def test_detection_boxes_become_instances(tmp_path):
    path = str(tmp_path / "img.jpg")
    cv2.imwrite(path, np.zeros((20, 30, 3), np.uint8))
    name = "spcl_test_det"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [{
            "file_name": path, "image_id": 1, "height": 20, "width": 30, "annotations": [
                {"bbox": [2, 3, 10, 8], "bbox_mode": 1, "category_id": 0, "iscrowd": 0},  # XYWH
                {"bbox": [0, 0, 5, 5], "bbox_mode": 0, "category_id": 1, "iscrowd": 1},
                {"bbox": [1, 1, 1.5, 9], "bbox_mode": 0, "category_id": 1},  # too thin
                {"bbox": [4, 4, 20, 18], "bbox_mode": 0, "category_id": 2}]}])
    crops = load_reid_crops("spcl_test_crops", name)
    assert [c["crop_box"] for c in crops] == [[2, 3, 12, 11], [4, 4, 20, 18]]
    assert [c["pid"] for c in crops] == [0, 1] and crops[1]["category_id"] == 2
    mapper = ReIDMapper(is_train=False, size=(8, 4))
    out = mapper(crops[1])
    assert out["image"].shape == (3, 8, 4) and out["image"].dtype == torch.uint8


def test_mapper_is_seeded_and_sized(tmp_path):
    root = generate_reid_demo(str(tmp_path / "demo"), num_train_ids=2, num_test_ids=2,
                              num_cameras=2, views_per_camera=2, num_distractors=1, num_junk=1,
                              size=32)
    dicts = load_reid_train(root, "t")
    m = ReIDMapper(is_train=True, size=(24, 16), pad=2, erasing_prob=1.0, erase_value=(1, 2, 3))
    np.random.seed(3)
    a = m(dicts[0])["image"]
    np.random.seed(3)
    b = m(dicts[0])["image"]
    assert torch.equal(a, b) and a.shape == (3, 24, 16)
    assert ((a[0] == 1) & (a[1] == 2) & (a[2] == 3)).any()  # an erased rectangle


def test_demo_is_deterministic(tmp_path):
    kw = dict(num_train_ids=2, num_test_ids=2, num_cameras=2, views_per_camera=1,
              num_distractors=1, num_junk=1, size=24)
    a, b = generate_reid_demo(str(tmp_path / "a"), **kw), generate_reid_demo(str(tmp_path / "b"), **kw)
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        fa = sorted(os.listdir(os.path.join(a, folder)))
        assert fa == sorted(os.listdir(os.path.join(b, folder))) and fa
        for f in fa:
            with open(os.path.join(a, folder, f), "rb") as x, open(os.path.join(b, folder, f), "rb") as y:
                assert x.read() == y.read()
    assert any(f.startswith("-1_") for f in os.listdir(os.path.join(a, "bounding_box_test")))


def test_gem_and_dsbn():
    x = torch.rand(2, 3, 4, 4) + 0.1
    assert torch.allclose(GeneralizedMeanPooling(1.0)(x), x.mean(dim=(2, 3)), atol=1e-6)
    assert torch.all(GeneralizedMeanPooling(8.0)(x) <= x.amax(dim=(2, 3)) + 1e-6)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    keys = set(net.state_dict())
    convert_dsbn(net)
    assert keys <= set(net.state_dict()) and any(".source." in k for k in net.state_dict())
    net.eval()
    with torch.no_grad():
        net[1].source.bias.fill_(5.0)
        target = net(x)
        with dsbn_domain(net, 0):
            source = net(x)
    assert torch.allclose(source - target, torch.full_like(target, 5.0), atol=1e-5)


def _tiny_cfg(tmp_path, demo_root):
    cfg = get_detpre_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs/demo/spcl_usl_R18_tiny.yaml"))
    cfg.DATASETS.REID_DEMO_ROOT = demo_root
    cfg.MODEL.SPCL.NUM_TARGET_INSTANCES = 0  # counted from the tiny demo
    cfg.MODEL.SPCL.CLUSTER_PERIOD = 1
    cfg.MODEL.SPCL.K1, cfg.MODEL.SPCL.K2, cfg.MODEL.SPCL.MIN_SAMPLES = 3, 2, 2
    cfg.MODEL.SPCL.EXTRACT_BATCH_SIZE = 8
    cfg.INPUT.REID.SIZE = (32, 32)
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = 4, 2, ()
    cfg.SOLVER.CHECKPOINT_PERIOD = 100
    cfg.TEST.EVAL_PERIOD = 0
    cfg.DATASETS.TEST = ()
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    return cfg


def test_tiny_spcl_training_fills_memory_and_clusters(tmp_path):
    from _reid_miniatures import registered_reid_demo

    from detpre.engine.trainer import Trainer

    demo = registered_reid_demo(tmp_path)
    cfg = _tiny_cfg(tmp_path, demo)
    layout = reid_memory_layout(cfg.DATASETS.TRAIN, [])
    assert (layout.num_source, layout.num_target) == (0, 12)
    trainer = Trainer(cfg)
    model = trainer.model
    assert isinstance(model, SpCL) and len(model.memory) == 12
    assert not any(p.requires_grad for p in model.memory.parameters())
    trainer.train()
    mem = model.memory
    assert bool(mem.initialized)
    assert torch.allclose(mem.features.norm(dim=1), torch.ones(12), atol=1e-5)
    hist = trainer.storage.history("spcl_clusters")
    assert len(hist.values()) >= 2  # before training and after iteration 1
    loss = trainer.storage.history("total_loss").latest()
    assert np.isfinite(loss)
    state = torch.load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), weights_only=False)["model"]
    assert {"memory.features", "memory.labels", "memory.initialized"} <= set(state)
    assert any(k.startswith("backbone.bottom_up.res5") for k in state)
    for name in ("detpre_reid_demo_train", "detpre_reid_demo_test"):
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_layout_puts_source_identities_first(tmp_path):
    for name, n in (("spcl_test_src", 3), ("spcl_test_tgt", 5)):
        if name not in DatasetCatalog.list():
            DatasetCatalog.register(name, lambda n=n, name=name: [
                {"pid": i % 2, "index": i, "reid_dataset": name} for i in range(n)])
    lay = reid_memory_layout(["spcl_test_tgt", "spcl_test_src"], ["spcl_test_src"])
    assert (lay.num_source, lay.num_target) == (2, 5)
    assert lay.index_of({"reid_dataset": "spcl_test_src", "pid": 1, "index": 2}) == (1, 0)
    assert lay.index_of({"reid_dataset": "spcl_test_tgt", "pid": 0, "index": 4}) == (6, 1)
    with pytest.raises(ValueError, match="SOURCE_DATASETS"):
        reid_memory_layout(["spcl_test_tgt"], ["spcl_test_src"])
    with pytest.raises(ValueError, match="target"):
        reid_memory_layout(["spcl_test_src"], ["spcl_test_src"])
