"""Backbone probe: object crops, kNN against a hand computation, linear probe, weight loading."""
import cv2
import numpy as np
import pytest
import torch
from detectron2.structures import BoxMode

from detpre.checkpoint import export_weights, save_model_zoo_file
from detpre.config import get_detpre_cfg
from detpre.evaluation.backbone_probe import (
    build_probe_backbone,
    evaluate_backbone,
    extract_crops,
    extract_features,
    knn_predict,
    linear_probe,
    read_backbone_weights,
)
from detpre.modeling.meta_arch import fastmoco  # noqa: F401  (registers FastMoCo)


def _dataset(tmp_path, n_images=3, seed=0):
    """Images with a red square (class 0) and a blue bar (class 1), plus a crowd and a tiny box."""
    rng = np.random.RandomState(seed)
    dicts = []
    for i in range(n_images):
        img = rng.randint(0, 40, (48, 64, 3)).astype(np.uint8)
        img[4:24, 4:24] = (0, 0, 255)  # BGR red
        img[30:44, 20:60] = (255, 0, 0)  # BGR blue
        path = str(tmp_path / f"{seed}_{i}.png")
        cv2.imwrite(path, img)
        dicts.append({"file_name": path, "height": 48, "width": 64, "image_id": i, "annotations": [
            {"bbox": [4, 4, 20, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0},
            {"bbox": [20, 30, 60, 44], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1},
            {"bbox": [0, 0, 30, 30], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1, "iscrowd": 1},
            {"bbox": [50, 2, 4, 4], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0},
        ]})
    return dicts


def _cfg():
    cfg = get_detpre_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    cfg.INPUT.FORMAT = "RGB"
    return cfg


def test_crops_are_the_resized_boxes_without_crowd_or_tiny_ones(tmp_path):
    crops, labels = extract_crops(_dataset(tmp_path), size=16, image_format="RGB")
    assert crops.shape == (6, 3, 16, 16) and crops.dtype == torch.uint8
    assert labels.tolist() == [0, 1] * 3
    assert (crops[0].permute(1, 2, 0).reshape(-1, 3) == torch.tensor([255, 0, 0], dtype=torch.uint8)).all()
    assert (crops[1].permute(1, 2, 0).reshape(-1, 3) == torch.tensor([0, 0, 255], dtype=torch.uint8)).all()
    with pytest.raises(ValueError, match="no ground-truth boxes"):
        extract_crops([{"file_name": "x.png"}], dataset_name="unlabeled")


def test_knn_matches_a_hand_computation():
    train = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]]), dim=1)
    labels = torch.tensor([0, 1, 1, 0])
    test = torch.tensor([[0.6, 0.8]])  # cos with train: 0.6, 0.96, 0.8, -0.6
    # k=3: neighbours 1 (0.96, class 1), 2 (0.8, class 1), 0 (0.6, class 0) -> class 1
    assert knn_predict(train, labels, test, 2, k=3, temperature=0.5).tolist() == [1]
    # k=1 with a query equal to train[0] -> its label
    assert knn_predict(train, labels, train[:1], 2, k=1).tolist() == [0]
    # weights exp(cos/T): class 0 wins when its one neighbour outweighs class 1's two at low T
    q = torch.nn.functional.normalize(torch.tensor([[1.0, 0.05]]), dim=1)
    s = (q @ train.t())[0]
    w0, w1 = np.exp(s[0].item() / 0.05), np.exp(s[1].item() / 0.05) + np.exp(s[2].item() / 0.05)
    assert knn_predict(train, labels, q, 2, k=3, temperature=0.05).item() == int(w1 > w0)


def test_linear_probe_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    pred = linear_probe(x[:40], y[:40], x[40:], 2)
    assert (pred == y[40:]).float().mean() >= 0.9


def test_weights_load_from_pkl_and_detpre_checkpoint_and_knn_finds_itself(tmp_path):
    cfg = _cfg()
    torch.manual_seed(0)
    net = build_probe_backbone(cfg)
    state = {"backbone.bottom_up." + k: v for k, v in net.state_dict().items()}
    pkl = str(tmp_path / "w.pkl")
    save_model_zoo_file(export_weights(state, "backbone"), pkl)
    pth = str(tmp_path / "w.pth")
    state_t = dict(state, **{"target." + k: v + 1 for k, v in state.items() if v.is_floating_point()})
    torch.save({"model": state_t, "detpre": {"meta_architecture": "FastMoCo"}}, pth)
    for path in (pkl, pth):
        loaded = read_backbone_weights(path)
        assert set(loaded) == set(net.state_dict())
        torch.testing.assert_close(loaded["stem.conv1.weight"], net.state_dict()["stem.conv1.weight"])
    ema = read_backbone_weights(pth, use_target=True)
    torch.testing.assert_close(ema["stem.conv1.weight"], net.state_dict()["stem.conv1.weight"] + 1)

    crops, _ = extract_crops(_dataset(tmp_path), size=32, image_format="RGB")
    a = extract_features(build_probe_backbone(cfg, pkl), crops, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)
    b = extract_features(net, crops, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(len(a)))

    # the query set equals the memory: with k=1 every crop finds itself
    dicts = _dataset(tmp_path)
    res = evaluate_backbone(cfg, pkl, dicts, dicts, crop_size=32, k=1, linear=False)
    assert res["knn_top1"] == 100.0 and res["num_train"] == res["num_test"] == 6

    cfg.MODEL.RESNETS.DEPTH = 34
    with pytest.raises(ValueError, match="does not fit"):
        build_probe_backbone(cfg, pkl)
    with pytest.raises(FileNotFoundError):
        read_backbone_weights(str(tmp_path / "missing.pkl"))


def test_random_init_probe_backbone_is_seeded_and_leaves_the_global_rng_alone():
    cfg = _cfg()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_probe_backbone(cfg).state_dict()
    after = torch.rand(1)
    torch.manual_seed(7)  # another global state: the same random-init backbone
    b = build_probe_backbone(cfg).state_dict()
    c = build_probe_backbone(cfg, seed=1).state_dict()
    w = "stem.conv1.weight"
    torch.testing.assert_close(a[w], b[w])
    assert not torch.equal(a[w], c[w])
    assert torch.equal(before, after)  # fork_rng: the caller's random stream is not consumed
