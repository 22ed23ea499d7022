"""TwoViewMapper and RandomResizedCrop: view sizes, seeded replay, crop bounds."""
import cv2
import numpy as np
import pytest
import torch

from detpre.config import get_detpre_cfg
from detpre.data.mappers.fastmoco import TwoViewMapper
from detpre.data.transforms.resized_crop import RandomResizedCrop


@pytest.fixture
def image_dict(tmp_path):
    rng = np.random.RandomState(0)
    img = rng.randint(0, 256, (40, 60, 3), dtype=np.uint8)
    path = str(tmp_path / "a.png")
    cv2.imwrite(path, img)
    return {"file_name": path, "image_id": 0, "height": 40, "width": 60,
            "annotations": [{"bbox": [0, 0, 5, 5], "bbox_mode": 1, "category_id": 0}]}


def _cfg(size=32):
    cfg = get_detpre_cfg()
    cfg.INPUT.TWO_VIEW.SIZE = size
    return cfg


def test_two_views_of_the_requested_size_replayed_by_the_numpy_seed(image_dict):
    mapper = TwoViewMapper(_cfg(), is_train=True)
    np.random.seed(3)
    out = mapper(image_dict)
    assert "annotations" not in out and "annotations" in image_dict  # input dict untouched
    v1, v2 = out["views"]
    assert v1.shape == v2.shape == (3, 32, 32) and v1.dtype == torch.uint8
    assert not torch.equal(v1, v2)
    np.random.seed(3)
    again = mapper(image_dict)["views"]
    assert torch.equal(again[0], v1) and torch.equal(again[1], v2)


def test_test_mode_views_are_the_central_square(image_dict):
    out = TwoViewMapper(_cfg(size=40), is_train=False)(image_dict)
    v1, v2 = out["views"]
    assert torch.equal(v1, v2)
    img = cv2.imread(image_dict["file_name"])  # BGR, as the default INPUT.FORMAT
    assert torch.equal(v1, torch.as_tensor(img[:, 10:50].transpose(2, 0, 1).copy()))


def test_random_resized_crop_stays_inside_and_falls_back_to_the_center():
    aug = RandomResizedCrop(16, scale=(0.1, 0.5))
    np.random.seed(0)
    for _ in range(20):
        crop, resize = aug.get_transform(np.zeros((30, 50, 3), np.uint8)).transforms
        assert 0 <= crop.x0 and crop.x0 + crop.w <= 50 and 0 <= crop.y0 and crop.y0 + crop.h <= 30
        assert 0.1 * 1500 * 0.8 <= crop.w * crop.h <= 0.5 * 1500 * 1.2
        assert (resize.new_h, resize.new_w) == (16, 16)
    # a whole-image crop of ratio 1 cannot fit a 10x100 image: central square fallback
    crop, _ = RandomResizedCrop(8, scale=(1.0, 1.0), ratio=(1.0, 1.0)).get_transform(
        np.zeros((10, 100, 3), np.uint8)).transforms
    assert (crop.x0, crop.y0, crop.w, crop.h) == (45, 0, 10, 10)
    with pytest.raises(ValueError):
        RandomResizedCrop(8, scale=(0.5, 0.1))


def _probs(augs):
    from detectron2.data import transforms as T

    from detpre.data.transforms import RandomColorJitter, RandomGaussianBlur, RandomGrayscale, RandomSolarize
    out = {}
    for a in augs.augs:
        if isinstance(a, T.RandomFlip):
            out["flip"] = a.prob
        elif isinstance(a, RandomColorJitter):
            out["color"] = (a.prob, a.brightness, a.contrast, a.saturation, a.hue)
        elif isinstance(a, RandomGrayscale):
            out["gray"] = a.prob
        elif isinstance(a, RandomGaussianBlur):
            out["blur"] = a.prob
        elif isinstance(a, RandomSolarize):
            out["solarize"] = a.prob
    return out


def test_mocov2_views_are_symmetric_fastmoco_recipe_and_byol_views_asymmetric():
    cfg = _cfg()
    cfg.INPUT.TWO_VIEW.AUGMENT = "mocov2"
    v1, v2 = (_probs(v) for v in TwoViewMapper(cfg, is_train=True).views)
    assert v1 == v2 == {"flip": 0.5, "color": (0.8, 0.4, 0.4, 0.4, 0.1), "gray": 0.2,
                        "blur": 0.5, "solarize": 0.0}
    b1, b2 = (_probs(v) for v in TwoViewMapper(_cfg(), is_train=True).views)
    assert (b1["blur"], b1["solarize"], b2["blur"], b2["solarize"]) == (1.0, 0.0, 0.1, 0.2)
    assert b1["color"] == (0.8, 0.4, 0.4, 0.2, 0.1)
    cfg.INPUT.TWO_VIEW.AUGMENT = "simclr"
    with pytest.raises(ValueError, match="AUGMENT"):
        TwoViewMapper(cfg, is_train=True)


def test_one_crop_sampler_serves_every_mapper():
    from detpre.data.mappers import reid, soco
    from detpre.data.transforms import resized_crop

    assert soco.sample_crop is reid.sample_crop is resized_crop.sample_crop
    np.random.seed(0)
    for _ in range(50):
        x0, y0, x1, y1 = resized_crop.sample_crop(30, 50, (0.2, 1.0))
        assert 0 <= x0 < x1 <= 50 and 0 <= y0 < y1 <= 30
        assert 0.2 * 1500 * 0.8 <= (x1 - x0) * (y1 - y0) <= 1500
    # nothing fits: torchvision's central crop with the aspect ratio clamped into range
    assert resized_crop.sample_crop(10, 40, (1.0, 1.0), (1.0, 1.0)) == (15, 0, 25, 10)
    assert resized_crop.sample_crop(40, 10, (1.0, 1.0), (0.5, 1.0)) == (0, 10, 10, 30)
