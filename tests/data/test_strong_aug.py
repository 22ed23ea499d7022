"""Strong augmentation keeps boxes and masks on their objects (drawn, augmented, measured)."""
import cv2
import numpy as np
import pytest

from detpre.config import get_detpre_cfg
from detpre.data.mappers.self_training import StrongAugMapper
from detpre.data.transforms.autoaugment import OPS, AutoAugment, RandAugment, make_op
from detpre.data.transforms.geometry import AffineTransform, CropPadTransform, clip_polygon
from detpre.data.transforms.strong_aug import LEVELS, build_strong_augmentation

GEOMETRIC = ("TranslateX", "TranslateY", "ShearX", "ShearY", "Rotate")
PHOTOMETRIC = tuple(o for o in OPS if o not in GEOMETRIC)


def _extent(mask):
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def _rect_image(h=96, w=128, box=(40, 30, 80, 50)):
    img = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = 255
    return img, np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def test_clip_polygon_to_box():
    sq = np.array([[-10, -10], [10, -10], [10, 10], [-10, 10]], dtype=float)
    c = clip_polygon(sq, 0, 0, 100, 100)
    assert np.allclose(c.min(0), [0, 0]) and np.allclose(c.max(0), [10, 10])
    assert len(clip_polygon(sq + 200, 0, 0, 100, 100)) == 0  # fully outside -> empty
    tri = np.array([[0, 0], [50, 0], [0, 50]], dtype=float)
    assert np.allclose(clip_polygon(tri, -1, -1, 100, 100), tri)  # inside -> unchanged


@pytest.mark.parametrize("op", GEOMETRIC)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_geometric_op_box_frames_object(op, seed):
    np.random.seed(seed)
    img, rect = _rect_image()
    t = make_op(op, 7, *img.shape[:2])
    out = t.apply_image(img)
    assert out.shape == img.shape and out.dtype == np.uint8
    obj = out[..., 0] > 200  # the white object (fill is 128)
    box = t.apply_box(np.array([[40, 30, 80, 50]], dtype=float))[0]
    box = np.clip(box, 0, [128, 96, 128, 96])
    assert np.abs(box - _extent(obj)).max() <= 1.5, (op, box, _extent(obj))
    poly = t.apply_polygons([rect])[0]
    assert np.abs(np.r_[poly.min(0), poly.max(0)] - _extent(obj)).max() <= 1.5
    seg = t.apply_segmentation((img[..., 0] > 0).astype(np.uint8))
    assert np.abs(_extent(seg > 0) - _extent(obj)).max() <= 1.0


def test_affine_clips_polygons_leaving_the_image():
    img, rect = _rect_image()
    t = AffineTransform(np.array([[1.0, 0, 70], [0, 1.0, 0]]), 96, 128)  # shift right by 70
    poly = t.apply_polygons([rect])[0]
    assert poly[:, 0].max() == pytest.approx(128) and poly[:, 0].min() == pytest.approx(110)
    assert np.abs(np.r_[poly.min(0), poly.max(0)] - _extent(t.apply_image(img)[..., 0] > 200)).max() <= 1


@pytest.mark.parametrize("op", PHOTOMETRIC)
def test_photometric_ops_keep_geometry(op):
    np.random.seed(0)
    img = np.random.randint(0, 256, (40, 50, 3), dtype=np.uint8)
    t = make_op(op, 8, 40, 50, image_format="RGB")
    out = t.apply_image(img)
    assert out.shape == img.shape and out.dtype == np.uint8
    pts = np.array([[1.5, 2.0], [30.0, 20.0]])
    assert np.array_equal(t.apply_coords(pts.copy()), pts)


def test_crop_pad_transform():
    img, rect = _rect_image()
    t = CropPadTransform(50, 20, 60, 50, 80, 80, pad_value=7)
    out = t.apply_image(img)
    assert out.shape == (80, 80, 3) and (out[50:, :] == 7).all() and (out[:, 60:] == 7).all()
    poly = t.apply_polygons([rect])[0]
    assert np.allclose(np.r_[poly.min(0), poly.max(0)], _extent(out[..., 0] == 255))


def test_policies_are_deterministic_given_seed():
    img = np.random.RandomState(0).randint(0, 256, (64, 64, 3), dtype=np.uint8)
    for aug in (AutoAugment(), RandAugment(2, 9)):
        outs = []
        for _ in range(2):
            np.random.seed(3)
            outs.append(aug.get_transform(img).apply_image(img))
        assert np.array_equal(*outs)
    with pytest.raises(ValueError):
        build_strong_augmentation("S9", 64)


def _write_object(tmp_path, kind):
    """An image with one object (rectangle or triangle) and its mask as a sem-seg file."""
    h, w = 90, 120
    img = np.full((h, w, 3), 30, np.uint8)
    pts = (np.array([[20, 25], [90, 25], [90, 70], [20, 70]]) if kind == "rect"
           else np.array([[15, 80], [100, 75], [60, 10]]))
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [pts.astype(np.int32)], 255)
    img[mask > 0] = (250, 40, 40)
    cv2.imwrite(str(tmp_path / f"{kind}.png"), img[..., ::-1])
    cv2.imwrite(str(tmp_path / f"{kind}_mask.png"), mask)
    poly = (pts + 0.5).reshape(-1).tolist()  # fillPoly fills pixel centers
    x0, y0 = pts.min(0)
    x1, y1 = pts.max(0) + 1
    return {"file_name": str(tmp_path / f"{kind}.png"), "sem_seg_file_name": str(tmp_path / f"{kind}_mask.png"),
            "height": h, "width": w, "image_id": 0,
            "annotations": [{"bbox": [float(x0), float(y0), float(x1), float(y1)], "bbox_mode": 0,
                             "category_id": 0, "iscrowd": 0, "segmentation": [poly]}]}


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("kind", ["rect", "triangle"])
def test_mapper_boxes_frame_objects_after_each_level(tmp_path, level, kind):
    cfg = get_detpre_cfg()
    cfg.MODEL.MASK_ON, cfg.INPUT.FORMAT, cfg.INPUT.SELF_TRAINING.IMAGE_SIZE = True, "RGB", 96
    mapper = StrongAugMapper(cfg, True, level=level)
    d = _write_object(tmp_path, kind)
    seen = 0
    for seed in range(12):
        np.random.seed(seed)
        out = mapper(dict(d))
        assert tuple(out["image"].shape) == (3, 96, 96)
        obj = out["sem_seg"].numpy() > 0
        boxes = out["instances"].gt_boxes.tensor.numpy()
        if obj.sum() < 20:  # cropped (almost) away: no box may stay
            assert len(boxes) <= 1 and (len(boxes) == 0 or (boxes[0, 2:] - boxes[0, :2]).min() < 6)
            continue
        seen += 1
        assert len(boxes) == 1
        assert np.abs(boxes[0] - _extent(obj)).max() <= 2.0, (seed, boxes[0], _extent(obj))
    assert seen >= 6


def test_mapper_without_masks_keeps_box_on_object(tmp_path):
    cfg = get_detpre_cfg()
    cfg.MODEL.MASK_ON, cfg.INPUT.FORMAT, cfg.INPUT.SELF_TRAINING.IMAGE_SIZE = False, "RGB", 96
    mapper = StrongAugMapper(cfg, True, level="S1")
    d = _write_object(tmp_path, "rect")
    for seed in range(6):
        np.random.seed(seed)
        out = mapper(dict(d))
        obj = out["sem_seg"].numpy() > 0
        boxes = out["instances"].gt_boxes.tensor.numpy()
        if obj.sum() >= 20:
            assert np.abs(boxes[0] - _extent(obj)).max() <= 2.0
            # S1 has no colour ops: the object's own pixels are where its box is
            img = out["image"].numpy().transpose(1, 2, 0)
            assert np.abs(_extent(img[..., 0] > 200) - boxes[0]).max() <= 2.0


@pytest.mark.parametrize("level", ["S1", "S3"])
def test_mapper_accepts_images_without_annotations(tmp_path, level):
    cfg = get_detpre_cfg()
    cfg.MODEL.MASK_ON, cfg.INPUT.FORMAT, cfg.INPUT.SELF_TRAINING.IMAGE_SIZE = True, "RGB", 96
    d = _write_object(tmp_path, "rect")
    d.pop("sem_seg_file_name")
    np.random.seed(0)
    out = StrongAugMapper(cfg, True, level=level)(dict(d, annotations=[]))
    assert len(out["instances"]) == 0 and tuple(out["image"].shape) == (3, 96, 96)
