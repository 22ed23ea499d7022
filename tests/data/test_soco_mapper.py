"""SoCoMapper: proposal k shows the same content in V1 and every view it is paired with; boxes
inside their views; INPUT.SOCO.VIEWS "official" (a last view of its own) and "paper"."""
import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from PIL import Image

from detpre.config import get_detpre_cfg
from detpre.data.mappers.soco import SoCoMapper, jitter_boxes, random_boxes, select_proposals

H, W = 80, 96
BACKGROUND = (128, 128, 128)
# disjoint rectangles (XYXY), each painted in its own colour
RECTS = np.array([[4, 4, 40, 36], [48, 6, 92, 40], [6, 44, 44, 76], [52, 46, 90, 74]], dtype=np.float32)
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


@pytest.fixture
def painted(tmp_path):
    img = np.full((H, W, 3), BACKGROUND, dtype=np.uint8)
    for (x0, y0, x1, y1), c in zip(RECTS.astype(int), COLORS):
        img[y0:y1, x0:x1] = c
    path = str(tmp_path / "painted.png")
    Image.fromarray(img).save(path)
    return {"file_name": path, "image_id": 0, "height": H, "width": W, "proposal_boxes": RECTS.copy(),
            "proposal_objectness_logits": -np.arange(4, dtype=np.float32), "proposal_bbox_mode": 0}


def _mapper(extra=0, **kw):
    n = 4 if extra else 3
    args = dict(view_size=64, small_view_size=32, extra_view_size=extra, num_proposals=4, min_visible=0.5,
                min_box_size=4, jitter_prob=0.0, image_format="RGB",
                view_augmentations=[[T.RandomFlip(prob=0.5)] for _ in range(n)])
    args.update(kw)
    return SoCoMapper(**args)


def _regions(view, boxes, s):
    """The painted region each box shows, read in its interior (2 px from resampled edges);
    None for a box too small to read. Each must be one region, not background."""
    b = boxes.numpy()
    assert boxes.shape == (4, 4)
    assert (b >= 0).all() and (b <= s).all() and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    img = view.numpy().transpose(1, 2, 0).astype(int)
    out = []
    for k, (x0, y0, x1, y1) in enumerate(b):
        xa, ya, xb, yb = int(np.ceil(x0)) + 2, int(np.ceil(y0)) + 2, int(x1) - 2, int(y1) - 2
        if xb <= xa or yb <= ya:
            out.append(None)
            continue
        patch = img[ya:yb, xa:xb].reshape(-1, 3)
        dist = np.abs(patch[:, None, :] - np.array(COLORS)[None]).max(axis=2)  # (pixels, regions)
        region = int(np.argmin(dist.mean(axis=0)))
        assert dist[:, region].max() <= 40, (k, "box covers background or two regions")
        out.append(region)
    return out


@pytest.mark.parametrize("views", ["paper", "official"])
@pytest.mark.parametrize("extra", [0, 48])
def test_each_proposal_shows_the_same_content_in_v1_and_its_views(painted, extra, views):
    mapper = _mapper(extra, views=views)
    checked = 0
    for seed in range(12):
        np.random.seed(seed)
        out = mapper(painted)
        sizes = [64, 64, 32] + ([extra] if extra else [])
        assert [tuple(v.shape) for v in out["views"]] == [(3, s, s) for s in sizes]
        assert "proposal_boxes" not in out
        # the last view has proposals of its own in "official" (SoCo's V3, SoCo*'s V4)
        own = {len(sizes) - 1} if views == "official" else set()
        assert set(out.get("pair_boxes", {})) == own
        for v in range(1, len(sizes)):
            v1 = out["pair_boxes"][v] if v in own else out["view_boxes"][0]
            pairs = zip(_regions(out["views"][0], v1, 64), _regions(out["views"][v], out["view_boxes"][v], sizes[v]))
            for a, b in pairs:
                if a is not None and b is not None:
                    assert a == b, f"seed {seed}: a proposal shows different regions in V1 and V{v + 1}"
                    checked += 1
    assert checked > 12 * 4 * (len(sizes) - 1) // 2


def _to_original(boxes, crop, size):
    """View boxes (no flip) back to original pixels."""
    x0, y0, x1, y1 = crop
    sx, sy = (x1 - x0) / size, (y1 - y0) / size
    return boxes * np.array([sx, sy, sx, sy]) + np.array([x0, y0, x0, y0])


@pytest.mark.parametrize("extra", [0, 48])
def test_official_last_view_is_a_crop_of_its_own_with_its_own_proposals(painted, extra):
    """SoCo's code: V3 (SoCo*'s 192 px view, here V4) is a random crop drawn on its own, whose
    K proposals are selected inside it, and V1 holds their boxes separately."""
    props = painted["proposal_boxes"]
    mapper = _mapper(extra, views="official", view_augmentations=[[] for _ in range(4 if extra else 3)])
    last, n = (3, 4) if extra else (2, 3)
    sizes = [64, 64, 32, extra][:n]
    differ_crop = differ_boxes = 0
    for seed in range(20):
        np.random.seed(seed)
        crops, sets = mapper.geometry(mapper.proposals(painted, H, W), H, W)
        np.random.seed(seed)
        out = mapper(painted)
        assert len(sets) == 2 and crops[0] == (0, 0, W, H)
        if extra:  # SoCo*'s 112 px view is V2 resized
            assert crops[2] == crops[1]
        differ_crop += crops[last] != crops[1]
        # the own view's boxes, back in original pixels, are proposals clipped to its crop
        own = _to_original(out["view_boxes"][last].numpy(), crops[last], sizes[last])
        x0, y0, x1, y1 = crops[last]
        clipped = np.stack([np.maximum(props[:, 0], x0), np.maximum(props[:, 1], y0),
                            np.minimum(props[:, 2], x1), np.minimum(props[:, 3], y1)], axis=1)
        for b in own:
            assert b[0] >= x0 - 1e-3 and b[1] >= y0 - 1e-3 and b[2] <= x1 + 1e-3 and b[3] <= y1 + 1e-3
            assert np.abs(clipped - b).max(axis=1).min() < 1e-3, "not a proposal clipped to the crop"
        assert np.allclose(own, sets[1], atol=1e-3)
        # V1 (the whole image, no jitter here) holds the same boxes for that pair
        assert np.allclose(_to_original(out["pair_boxes"][last].numpy(), crops[0], 64), sets[1], atol=1e-3)
        assert np.allclose(_to_original(out["view_boxes"][0].numpy(), crops[0], 64), sets[0], atol=1e-3)
        differ_boxes += not np.allclose(np.sort(sets[0], axis=0), np.sort(sets[1], axis=0))
    assert differ_crop >= 18 and differ_boxes >= 5


def test_paper_v3_is_v2_resized(painted):
    mapper = _mapper(views="paper", view_augmentations=[[] for _ in range(3)])
    for seed in range(10):
        np.random.seed(seed)
        crops, sets = mapper.geometry(mapper.proposals(painted, H, W), H, W)
        np.random.seed(seed)
        out = mapper(painted)
        assert crops[2] == crops[1] and len(sets) == 1 and "pair_boxes" not in out
        assert torch.allclose(out["view_boxes"][2], out["view_boxes"][1] * 0.5)
        v2 = out["views"][1].float()[None]
        down = torch.nn.functional.interpolate(v2, size=(32, 32), mode="area")[0]
        assert (down - out["views"][2].float()).abs().mean() < 12


def test_views_key_and_validation(painted):
    assert get_detpre_cfg().INPUT.SOCO.VIEWS == "official"
    with pytest.raises(ValueError, match="VIEWS"):
        _mapper(views="both")


def test_no_proposals_falls_back_to_random_boxes(painted):
    d = dict(painted, proposal_boxes=np.zeros((0, 4), np.float32))
    np.random.seed(0)
    out = _mapper()(d)
    for boxes, s in zip(out["view_boxes"], (64, 64, 32)):
        assert boxes.shape == (4, 4) and (boxes >= 0).all() and (boxes <= s).all()


def test_same_seed_same_views(painted):
    mapper = SoCoMapper(view_size=64, small_view_size=32, image_format="RGB")  # BYOL augmentations
    np.random.seed(3)
    a = mapper(painted)
    np.random.seed(3)
    b = mapper(painted)
    for x, y in zip(a["views"] + a["view_boxes"], b["views"] + b["view_boxes"]):
        assert (x == y).all()


def test_select_proposals_visibility_rule():
    props = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [8, 0, 18, 10], [30, 30, 40, 40]], np.float32)
    region = (0, 0, 12, 12)  # visible fractions: 1.0, 0.7, 0.4, 0.0
    np.random.seed(0)
    boxes, n = select_proposals(props, region, 2, min_visible=0.5, min_side=(1, 1))
    assert n == 2
    assert sorted(map(tuple, boxes.tolist())) == [(0, 0, 10, 10), (5, 0, 12, 10)]
    boxes, n = select_proposals(props, region, 5, min_visible=0.5, min_side=(1, 1))
    assert n == 2 and len(boxes) == 5  # repeated to the fixed number
    assert select_proposals(props, region, 2, min_visible=0.5, min_side=(8, 1))[1] == 1  # (5, 12) is 7 wide
    assert select_proposals(props[3:], region, 2, 0.5, (1, 1)) == (None, 0)


def test_jitter_bounds_and_identity():
    boxes = np.array([[20, 20, 60, 40]], np.float32)
    assert (jitter_boxes(boxes, 0.0, 0.1, 100, 100) == boxes).all()
    np.random.seed(0)
    for _ in range(50):
        j = jitter_boxes(boxes, 1.0, 0.1, 100, 100)[0]
        assert abs(j[0] - 20) <= 4 + 1e-4 and abs(j[1] - 20) <= 2 + 1e-4  # x, y by <= r * w, r * h
        assert 36 - 1e-4 <= j[2] - j[0] <= 44 + 1e-4 and 18 - 1e-4 <= j[3] - j[1] <= 22 + 1e-4


def test_random_boxes_inside_image():
    np.random.seed(0)
    b = random_boxes(50, 70, 100)
    assert b.shape == (100, 4)
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 70 + 1e-4).all() and (b[:, 3] <= 50 + 1e-4).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()


def test_config_without_proposals_fails_clearly():
    cfg = get_detpre_cfg()
    with pytest.raises(ValueError, match="PROPOSAL_FILES_TRAIN"):
        SoCoMapper(cfg, True)


def test_cutout_in_boxes_is_socos_rule():
    from detpre.data.mappers.soco import cutout_in_boxes

    img = np.full((20, 30, 3), 7, dtype=np.uint8)
    boxes = np.array([[2, 3, 12, 15], [20, 0, 29, 9]], dtype=np.float32)
    np.random.seed(5)
    erased = cutout_in_boxes(img, boxes, 1.0, (0.1, 0.3), np.array([1, 2, 3], np.uint8))
    np.random.seed(5)
    want = []
    for x0, y0, x1, y1 in boxes:  # the official RandomCutoutInBbox, written out
        np.random.uniform()
        area = np.random.uniform(0.1, 0.3) * (x1 - x0 + 1) * (y1 - y0 + 1)
        s = int(round(np.sqrt(area)))
        cx, cy = np.random.randint(int(x0), int(x1) + 1), np.random.randint(int(y0), int(y1) + 1)
        want.append((max(cx - s // 2, 0), max(cy - s // 2, 0), min(cx + s // 2, 29) + 1,
                     min(cy + s // 2, 19) + 1))
    assert erased == want
    mask = np.zeros((20, 30), bool)
    for a, c, b, d in want:
        mask[c:d, a:b] = True
    assert (img[mask] == [1, 2, 3]).all() and (img[~mask] == 7).all()
    # 0.1-0.3 of the box area (up to the odd-side rounding and clipping)
    a, c, b, d = want[0]
    assert 0.05 * 11 * 13 <= (b - a) * (d - c) <= 0.45 * 11 * 13
    img2 = np.full((20, 30, 3), 7, dtype=np.uint8)
    assert cutout_in_boxes(img2, boxes, 0.0, (0.1, 0.3), 0) == [] and (img2 == 7).all()


def test_mapper_cutout_only_on_v2_v3_around_boxes_and_off_keeps_the_stream(painted):
    fill = (10, 20, 30)
    no_flip = dict(view_augmentations=[[] for _ in range(3)])  # cutout's draws shift later flips
    plain = _mapper(**no_flip)
    cut = _mapper(cutout_prob=1.0, cutout_ratio=(0.3, 0.3), cutout_fill=fill, **no_flip)
    np.random.seed(0)
    a = plain(painted)
    np.random.seed(0)
    b = cut(painted)
    np.random.seed(0)
    c = _mapper(cutout_prob=0.0)(painted)
    np.random.seed(0)
    d = _mapper()(painted)
    assert all((x == y).all() for x, y in zip(c["views"], d["views"]))  # off: the same stream
    assert (a["views"][0] == b["views"][0]).all()  # V1 untouched
    for v in (1, 2):
        diff = (a["views"][v] != b["views"][v]).any(0).numpy()
        assert diff.any()
        ys, xs = np.nonzero(diff)
        near = np.zeros_like(diff)
        for x0, y0, x1, y1 in b["view_boxes"][v].numpy():
            # the square is centred on a pixel of the box: at most half its side outside
            r = int(round(np.sqrt(0.3 * (x1 - x0 + 1) * (y1 - y0 + 1)))) // 2
            near[max(int(y0) - r, 0):int(y1) + r + 1, max(int(x0) - r, 0):int(x1) + r + 1] = True
        assert near[ys, xs].all()
        assert (b["views"][v].numpy()[:, ys, xs].T == fill).all()


def test_soco_paper_configs_cutout_as_the_official_scripts():
    import os
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    get = lambda n: get_detpre_cfg(os.path.join(repo, "configs/soco", n)).INPUT.SOCO  # noqa: E731
    c = get("soco_R50_FPN_100ep.yaml")  # tools/SoCo_FPN_100ep.sh: ...Cutout aug, 0.5, 0.1-0.3
    assert (c.CUTOUT_PROB, tuple(c.CUTOUT_RATIO)) == (0.5, (0.1, 0.3))
    # SoCo_FPN_400ep.sh / SoCo_FPN_Star_400ep.sh pick augmentations without cutout
    assert get("soco_R50_FPN_400ep.yaml").CUTOUT_PROB == 0.0
    assert get("soco_star_R50_FPN_400ep.yaml").CUTOUT_PROB == 0.0
