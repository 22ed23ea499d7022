"""Pseudo-label generation: thresholds, COCO json validity, resume, teacher hygiene, TTA."""
import json
import os

import numpy as np
import pytest
import torch
from _self_training_data import tiny_cfg, write_images
from detectron2.data.datasets import load_coco_json
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from pycocotools.coco import COCO

from detpre.pseudo_labels import (
    BoxTTA,
    PseudoLabelInterrupted,
    instances_to_annotations,
    label_images,
    mask_to_polygons,
    resolve_thresholds,
)


def _instances(scores, classes, h=40, w=50):
    inst = Instances((h, w))
    n = len(scores)
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes)
    inst.pred_boxes = Boxes(torch.tensor([[2.0 + i, 3.0, 20.0 + i, 30.0] for i in range(n)]))
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    masks[:, 3:30, 2:20] = True
    if n:
        masks[-1] = False
        masks[-1, 5, 5] = True  # a one-pixel mask: no polygon, falls back to the box
    inst.pred_masks = masks
    return inst


def test_threshold_per_class_and_masks():
    inst = _instances([0.9, 0.5, 0.4999, 0.7, 0.95], [0, 1, 0, 2, 2])
    th = resolve_thresholds(0.5, [0.5, 0.5, 0.8], 3)
    anns = instances_to_annotations(inst, th, [1, 3, 7])
    assert [a["score"] for a in anns] == pytest.approx([0.9, 0.5, 0.95])  # 0.4999 and 0.7 (<0.8) dropped
    assert [a["category_id"] for a in anns] == [1, 3, 7]
    assert anns[0]["bbox"] == [2.0, 3.0, 18.0, 27.0]
    poly = np.array(anns[0]["segmentation"][0]).reshape(-1, 2)
    assert np.allclose(poly.min(0), [2.5, 3.5]) and np.allclose(poly.max(0), [19.5, 29.5])
    assert anns[2]["segmentation"] == [[6.0, 3.0, 24.0, 3.0, 24.0, 30.0, 6.0, 30.0]]
    assert instances_to_annotations(_instances([], []), th, [1, 2, 3]) == []
    assert instances_to_annotations(inst, resolve_thresholds(0.5, [], 3), [1, 2, 3], with_masks=False)[0].get(
        "segmentation") is None


def test_threshold_errors():
    with pytest.raises(ValueError, match="one per class"):
        resolve_thresholds(0.5, [0.1, 0.2], 3)
    with pytest.raises(ValueError):
        resolve_thresholds(1.5, [], 3)
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    return cfg, build_model(cfg).eval()


def _direct_scores(model, cfg, dicts):
    from detectron2.data import DatasetMapper

    mapper = DatasetMapper(cfg, is_train=False)
    with torch.no_grad():
        out = model([mapper(dict(d)) for d in dicts])
    return [o["instances"].scores.numpy() for o in out]


def test_json_loads_in_pycocotools_and_respects_threshold(tmp_path, teacher):
    cfg, model = teacher
    dicts = write_images(tmp_path / "imgs", 4)
    scores = np.concatenate(_direct_scores(model, cfg, dicts))
    thr = float(np.median(scores))
    out = str(tmp_path / "pl.json")
    summary = label_images(cfg, dicts, out, model=model, score_threshold=thr, batch_size=4, progress=False)
    coco = COCO(out)
    assert len(coco.getImgIds()) == 4 and sorted(coco.getCatIds()) == [1, 2, 3]
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) == summary["annotations"] == int((scores >= thr).sum()) > 0
    assert all(a["score"] >= thr for a in anns)
    assert all(a["segmentation"] and len(a["segmentation"][0]) >= 6 for a in anns)
    data = json.load(open(out))
    assert data["info"]["image_root"] == str(tmp_path / "imgs")
    loaded = load_coco_json(out, data["info"]["image_root"], "pl_test_json")
    assert all(os.path.isfile(d["file_name"]) for d in loaded)
    assert not os.path.exists(out + ".parts") and not model.training


def test_resume_gives_the_same_json(tmp_path, teacher):
    cfg, model = teacher
    dicts = write_images(tmp_path / "imgs", 6, seed=1)
    kw = dict(model=model, score_threshold=0.05, batch_size=2, chunk_size=2, progress=False)
    full = str(tmp_path / "full.json")
    label_images(cfg, dicts, full, **kw)
    part = str(tmp_path / "resumed.json")
    with pytest.raises(PseudoLabelInterrupted):
        label_images(cfg, dicts, part, max_chunks=1, **kw)  # "killed" after the first chunk
    assert not os.path.exists(part) and os.path.isfile(part + ".parts/chunk_000000.json")
    with pytest.raises(ValueError, match="other settings"):
        label_images(cfg, dicts, part, **{**kw, "score_threshold": 0.3})
    seen = []
    h = model.register_forward_pre_hook(lambda m, args: seen.append((len(args[0]), m.training,
                                                                     torch.is_grad_enabled())))
    try:
        label_images(cfg, dicts, part, **kw)
    finally:
        h.remove()
    assert seen == [(2, False, False)] * 2  # only the two missing chunks ran, in eval / no-grad
    assert open(full).read() == open(part).read()


def test_teacher_mode_restores_training_flag(tmp_path, teacher):
    cfg, model = teacher
    dicts = write_images(tmp_path / "imgs", 2)
    model.train()
    try:
        label_images(cfg, dicts, str(tmp_path / "a.json"), model=model, progress=False)
        assert model.training
    finally:
        model.eval()


def test_rcnn_tta_writes_json(tmp_path, teacher):
    cfg, model = teacher
    dicts = write_images(tmp_path / "imgs", 2)
    out = str(tmp_path / "tta.json")
    label_images(cfg, dicts, out, model=model, score_threshold=0.05, tta=True, tta_min_sizes=(48, 64),
                 progress=False)
    data = json.load(open(out))
    assert data["info"]["tta"] == {"min_sizes": [48, 64], "flip": True}
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        img = data["images"][a["image_id"] - 1]
        assert a["score"] >= 0.05 and x >= 0 and y >= 0 and x + w <= img["width"] + 1e-3


def test_box_tta_single_view_equals_model_and_flip_maps_back(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg("RetinaNet")
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST, cfg.MODEL.RETINANET.TOPK_CANDIDATES_TEST = 0.0, 30
    model = build_model(cfg).eval()
    from detectron2.data import DatasetMapper

    d = write_images(tmp_path / "imgs", 1)[0]
    raw = DatasetMapper(cfg, is_train=False, augmentations=[])(dict(d))
    flipped = dict(raw, image=raw["image"].flip(-1))
    with torch.no_grad():
        ref = model([DatasetMapper(cfg, is_train=False)(dict(d))])[0]["instances"]
        one = BoxTTA(model, (64,), 96, flip=False)([raw])[0]["instances"]
        both = BoxTTA(model, (64,), 96, flip=True)([raw, flipped])
    assert len(ref) > 0 and len(one) == len(ref)
    assert torch.allclose(one.scores, ref.scores) and torch.allclose(one.pred_boxes.tensor, ref.pred_boxes.tensor)
    # the views of the mirrored image are the mirrored views: same scores, mirrored boxes
    a, b = both[0]["instances"], both[1]["instances"]
    assert len(a) > len(one) // 2 and len(a) == len(b)
    ia, ib = a.scores.argsort(descending=True), b.scores.argsort(descending=True)
    assert torch.allclose(a.scores[ia], b.scores[ib], atol=1e-5)
    mirrored = b.pred_boxes.tensor[ib][:, [2, 1, 0, 3]] * torch.tensor([-1.0, 1, -1, 1]) + torch.tensor(
        [d["width"], 0.0, d["width"], 0.0])
    dist = torch.cdist(a.pred_boxes.tensor, mirrored, p=float("inf"))
    assert dist.min(1).values.max() < 0.05 and dist.min(0).values.max() < 0.05  # same box sets


def test_visualize_writes_pngs(tmp_path, teacher):
    import cv2

    from detpre.pseudo_labels import visualize_pseudo_labels

    cfg, model = teacher
    dicts = write_images(tmp_path / "imgs", 3)
    out = str(tmp_path / "pl.json")
    label_images(cfg, dicts, out, model=model, score_threshold=0.05, progress=False)
    paths = visualize_pseudo_labels(out, str(tmp_path / "vis"), num_images=2)
    assert len(paths) == 2
    for p, d in zip(paths, dicts):
        img = cv2.imread(p)
        assert img.shape[:2] == (d["height"], d["width"])
        assert not np.array_equal(img, cv2.imread(d["file_name"]))  # something was drawn


def test_filtered_detections_are_the_pseudo_labels(tmp_path, teacher):
    """Labelling once at the detector's test threshold and keeping the boxes >= the pseudo-label
    threshold writes exactly what labelling at that threshold writes (what training sees)."""
    from detpre.pseudo_labels import detections_floor, filter_pseudo_labels

    cfg, model = teacher
    cfg, model = cfg.clone(), model.eval()  # (an earlier test may leave it training)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
    dicts = write_images(tmp_path / "imgs", 4)
    thr = float(np.median(np.concatenate(_direct_scores(model, cfg, dicts))))
    direct, dets, kept = (str(tmp_path / n) for n in ("direct.json", "dets.json", "kept.json"))
    label_images(cfg, dicts, direct, model=model, score_threshold=thr, progress=False)
    floor = detections_floor(cfg, [thr] * 3)
    assert floor == 0.05
    label_images(cfg, dicts, dets, model=model, score_threshold=floor, progress=False)
    filter_pseudo_labels(dets, kept, [thr] * 3)
    a, b, d = (json.load(open(p)) for p in (direct, kept, dets))
    assert len(d["annotations"]) > len(a["annotations"]) > 0
    assert a["annotations"] == b["annotations"] and a["images"] == b["images"]
    assert a["categories"] == b["categories"] and a["info"]["score_thresholds"] == b["info"]["score_thresholds"]
    with pytest.raises(ValueError, match="label again"):
        filter_pseudo_labels(dets, kept, [0.01] * 3)
