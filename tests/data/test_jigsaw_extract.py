import json

import numpy as np
import pytest
from detectron2.structures import BoxMode

from detpre.data.jigsaw import aspect_group, expand_box, extract_samples, load_samples, save_samples
from detpre.data.jigsaw.samples_file import ensure_samples


def _dicts(n=6, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        W, H = 120 + 10 * i, 100
        anns = []
        for _ in range(3):
            w, h = rng.integers(8, 30, size=2)
            x, y = rng.integers(0, W - w), rng.integers(0, H - h)
            anns.append({"bbox": [float(x), float(y), float(w), float(h)],
                         "bbox_mode": BoxMode.XYWH_ABS, "category_id": int(rng.integers(3))})
        anns.append({"bbox": [0.0, 0.0, 3.0, 3.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0})
        anns.append({"bbox": [5.0, 60.0, 20.0, 20.0], "bbox_mode": BoxMode.XYWH_ABS,
                     "category_id": 1, "iscrowd": 1})
        out.append({"file_name": f"img{i}.jpg", "height": H, "width": W, "annotations": anns})
    return out


def _xyxy(ann):
    return BoxMode.convert(ann["bbox"], ann["bbox_mode"], BoxMode.XYXY_ABS)


def test_groups_by_aspect_ratio():
    assert [aspect_group(w, 10) for w in (5, 15, 4.9, 15.1, 10)] == ["S", "S", "T", "W", "S"]


def test_expansion_contains_box_at_most_twice_the_side_and_inside_image():
    rng = np.random.default_rng(0)
    for _ in range(500):
        x1, y1 = rng.integers(0, 50, size=2)
        w, h = rng.integers(1, 40, size=2)
        box = [int(x1), int(y1), int(x1 + w), int(y1 + h)]
        e = expand_box(box, 80, 70, rng, max_expand=2.0)
        assert e[0] <= box[0] and e[1] <= box[1]
        assert e[2] >= min(box[2], 80) and e[3] >= min(box[3], 70)
        assert e[2] - e[0] <= 2 * w and e[3] - e[1] <= 2 * h
        assert e[0] >= 0 and e[1] >= 0 and e[2] <= 80 and e[3] <= 70
    assert expand_box([10, 10, 20, 30], 100, 100, rng, max_expand=1.0) == [10, 10, 20, 30]


def test_positives_negatives_ratio_and_labels():
    dicts = _dicts()
    out = extract_samples(dicts, num_classes=3, pos_neg_ratio=2.0, seed=1)
    pos = [s for s in out["samples"] if s[5] < 3]
    neg = [s for s in out["samples"] if s[5] == 3]
    # 3 labeled boxes per image; the 3x3 one (below MIN_SIZE) and the crowd one give none
    assert len(pos) == out["num_positives"] == 3 * len(dicts)
    assert len(neg) == round(len(pos) / 2.0)
    for idx, x1, y1, x2, y2, label in pos:  # each positive contains a gt box of its class
        gts = [_xyxy(a) for a in dicts[idx]["annotations"]
               if a["category_id"] == label and not a.get("iscrowd")]
        assert any(x1 <= g[0] and y1 <= g[1] and x2 >= g[2] and y2 >= g[3] for g in gts)
    for idx, x1, y1, x2, y2, _ in neg:  # IoU 0 with every gt box, crowd and tiny included
        assert 0 <= x1 < x2 <= dicts[idx]["width"] and 0 <= y1 < y2 <= dicts[idx]["height"]
        for a in dicts[idx]["annotations"]:
            g = _xyxy(a)
            inter = max(0, min(x2, g[2]) - max(x1, g[0])) * max(0, min(y2, g[3]) - max(y1, g[1]))
            assert inter == 0
    assert out == extract_samples(dicts, num_classes=3, pos_neg_ratio=2.0, seed=1)  # seeded
    assert extract_samples(dicts, 3, pos_neg_ratio=0)["num_negatives"] == 0


def test_default_ratio_is_ten_to_one():
    out = extract_samples(_dicts(n=20), num_classes=3, seed=0)
    assert out["num_negatives"] == round(out["num_positives"] / 10)


def test_bad_class_and_missing_fields_raise():
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        extract_samples(_dicts(), num_classes=2)
    with pytest.raises(ValueError, match="height"):
        extract_samples([{"file_name": "a.jpg", "width": 3}], num_classes=2)


def test_sample_file_round_trip_and_mismatch(tmp_path):
    params = {"datasets": ["a"], "num_classes": 3, "pos_neg_ratio": 2.0, "max_expand": 2.0,
              "min_size": 4, "seed": 1}
    data = extract_samples(_dicts(), 3, 2.0, seed=1)
    path = tmp_path / "s.json"
    save_samples(str(path), data, params)
    loaded = load_samples(str(path), params)
    assert loaded["samples"] == data["samples"] and len(loaded["groups"]) == len(data["samples"])
    assert all(g == aspect_group(s[3] - s[1], s[4] - s[2])
               for g, s in zip(loaded["groups"], loaded["samples"]))
    with pytest.raises(ValueError, match="other settings"):
        load_samples(str(path), dict(params, pos_neg_ratio=10.0))
    (tmp_path / "bad.json").write_text(json.dumps({"version": 1, "images": ["a"],
                                                   "samples": [[0, 5, 5, 2, 9, 0]]}))
    with pytest.raises(ValueError, match="malformed"):
        load_samples(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="JIGSAW_SAMPLES"):
        ensure_samples("", params)
