"""Selective search, SoCo's filter and detectron2 proposal files (tiny synthetic images)."""
import os
import pickle

import cv2
import numpy as np
import pytest
from detectron2.data.build import load_proposals_into_dataset
from detectron2.structures import BoxMode

from detpre.data.proposals import (
    ProposalFilter,
    build_backend,
    generate_proposals,
    merge_proposal_files,
    proposal_recall,
    read_proposal_file,
    selective_search,
)
from detpre.data.proposals.selective_search import hierarchical_grouping

RECTS = [(10, 12, 90, 80), (120, 20, 210, 110), (30, 120, 100, 210), (130, 140, 200, 200)]
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 220, 40)]


def rect_image(seed=0, size=224, scale=1.0):
    """Solid rectangles on a noisy grey background; returns the image and XYXY boxes."""
    rng = np.random.default_rng(seed)
    img = np.clip(128 + rng.normal(0, 4, (size, size, 3)), 0, 255).astype(np.uint8)
    boxes = []
    for r, c in zip(RECTS, COLOURS):
        x1, y1, x2, y2 = (int(round(v * scale)) for v in r)
        img[y1:y2, x1:x2] = c
        boxes.append((x1, y1, x2, y2))
    return img, np.array(boxes, float)


def write_images(folder, n=3, size=(150, 110)):
    """n non-square PNGs (W x H = size) of rectangles; returns dataset dicts with int ids."""
    os.makedirs(folder, exist_ok=True)
    recs = []
    for i in range(n):
        img, _ = rect_image(seed=i)
        img = cv2.resize(img, size, interpolation=cv2.INTER_NEAREST)
        fn = os.path.join(folder, f"img_{i}.png")
        cv2.imwrite(fn, img[:, :, ::-1])
        recs.append({"file_name": fn, "image_id": 100 + i, "height": size[1], "width": size[0]})
    return recs


def test_recall_on_solid_rectangles():
    # bound: every rectangle found at IoU >= 0.7, mean best IoU >= 0.95 (half-res segmentation)
    for seed in range(3):
        img, gt = rect_image(seed)
        boxes = selective_search(img)
        q = proposal_recall([gt], [boxes], thresholds=(0.7,))
        assert q["recall@0.7"] == 1.0
        assert q["mean_best_iou"] >= 0.95
        assert boxes.dtype == np.float32 and len(np.unique(boxes, axis=0)) == len(boxes)
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 224).all() and (boxes[:, 3] <= 224).all()


def test_selective_search_is_deterministic():
    img, _ = rect_image(5)
    a = selective_search(img, color_spaces=("hsv", "lab"), scales=(100, 300))
    b = selective_search(img, color_spaces=("hsv", "lab"), scales=(100, 300))
    np.testing.assert_array_equal(a, b)


def test_grouping_merges_most_similar_neighbours_first():
    # four regions in a row: 0 and 1 share colour and texture, 2 and 3 differ from all
    sizes = np.array([10.0, 10.0, 10.0, 10.0])
    boxes = np.array([[0, 0, 10, 1], [10, 0, 20, 1], [20, 0, 30, 1], [30, 0, 40, 1]], float)
    colour = np.eye(4)[[0, 0, 1, 2]]
    texture = np.eye(4)[[0, 0, 1, 2]]
    pairs = np.array([[0, 1], [1, 2], [2, 3]])
    out = hierarchical_grouping(sizes, boxes, colour, texture, pairs, "CTSF")
    assert len(out) == 7  # 4 initial + 3 merges
    np.testing.assert_array_equal(out[4], [0, 0, 20, 1])  # first merge: 0 + 1
    np.testing.assert_array_equal(out[-1], [0, 0, 40, 1])  # top: everything
    with pytest.raises(ValueError, match="CTSF"):
        hierarchical_grouping(sizes, boxes, colour, texture, pairs, "X")


def test_soco_filter_rules():
    f = ProposalFilter()  # aspect <= 3, sqrt(area ratio) in [0.3, 0.8], sides >= 32, K = 100
    H = W = 200
    boxes = np.array([
        [0, 0, 100, 100],   # sqrt ratio 0.5: kept
        [0, 0, 100, 100],   # duplicate: dropped
        [0, 0, 50, 50],     # 0.25 < 0.3: dropped
        [0, 0, 170, 170],   # 0.85 > 0.8: dropped
        [0, 0, 180, 60],    # aspect 3, ratio 0.52: kept
        [0, 0, 190, 60],    # aspect 3.17: dropped
        [10, 10, 70, 70],   # ratio 0.3 exactly: kept
    ], np.float32)
    out = f(boxes, H, W)
    np.testing.assert_array_equal(out, boxes[[0, 4, 6]])
    # size is the square root of the AREA ratio, not per-side: 200x20 in 200x200 is 0.316
    wide = np.array([[0, 0, 66, 22]], np.float32)  # sides 0.33 / 0.11, sqrt area ratio 0.19
    assert len(f(wide, H, W)) == 0
    assert len(ProposalFilter(min_side=None)(np.array([[0, 0, 30, 90]], np.float32), 100, 100)) == 1
    assert len(f(np.array([[0, 0, 30, 90]], np.float32), 100, 100)) == 0  # side 30 < 32
    many = np.array([[0, 0, 100 + i, 100] for i in range(10)], np.float32)
    np.testing.assert_array_equal(ProposalFilter(max_proposals=3)(many, H, W), many[:3])
    assert len(ProposalFilter.disabled()(boxes, H, W)) == 6  # only the duplicate goes


def test_file_roundtrips_through_detectron2(tmp_path):
    recs = write_images(str(tmp_path / "img"), n=3, size=(150, 110))
    out = str(tmp_path / "props.pkl")
    summary = generate_proposals(recs, out, proposal_filter=ProposalFilter.disabled(300),
                                 workers=1, progress=False)
    assert summary["errors"] == [] and summary["num_images"] == 3
    data = read_proposal_file(out)
    assert data["ids"] == [100, 101, 102] and data["bbox_mode"] == int(BoxMode.XYXY_ABS)
    dicts = load_proposals_into_dataset([dict(r) for r in recs[::-1]], out)
    for d in dicts:
        i = data["ids"].index(d["image_id"])
        np.testing.assert_array_equal(d["proposal_boxes"], data["boxes"][i])  # order kept
        assert d["proposal_boxes"].dtype == np.float32
        assert d["proposal_bbox_mode"] == BoxMode.XYXY_ABS
        b = d["proposal_boxes"]
        assert (b[:, 2] <= 150).all() and (b[:, 3] <= 110).all() and (b >= 0).all()
        # boxes are in ORIGINAL pixels: the rectangles (scaled to 150x110) are found
        gt = np.array(RECTS, float) * [150 / 224, 110 / 224, 150 / 224, 110 / 224]
        assert proposal_recall([gt], [b], thresholds=(0.7,))["recall@0.7"] == 1.0


def test_corrupt_image_is_reported_and_skipped(tmp_path):
    recs = write_images(str(tmp_path / "img"), n=2)
    bad = str(tmp_path / "img" / "broken.jpg")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not a jpeg")
    recs.insert(1, {"file_name": bad, "image_id": 7})
    recs.append({"file_name": str(tmp_path / "missing.png"), "image_id": 8})
    out = str(tmp_path / "props.pkl")
    summary = generate_proposals(recs, out, workers=1, progress=False)
    assert [e[0] for e in summary["errors"]] == [bad, str(tmp_path / "missing.png")]
    data = read_proposal_file(out)
    assert data["ids"] == [100, 7, 101, 8]
    assert data["boxes"][1].shape == (0, 4) and data["boxes"][3].shape == (0, 4)
    assert len(data["boxes"][0]) > 0 and len(data["boxes"][2]) > 0
    with open(out + ".errors.txt") as f:
        assert bad in f.read()
    assert not os.path.exists(out + ".parts")


def test_workers_and_shards_give_the_same_file(tmp_path):
    recs = write_images(str(tmp_path / "img"), n=3)
    kw = dict(chunk_size=2, progress=False)
    one = str(tmp_path / "one.pkl")
    two = str(tmp_path / "two.pkl")
    generate_proposals(recs, one, workers=1, **kw)
    generate_proposals(recs, two, workers=2, **kw)
    shards = [str(tmp_path / f"s{i}.pkl") for i in range(2)]
    for i, s in enumerate(shards):
        generate_proposals(recs, s, workers=1, shard=(i, 2), **kw)
    assert len(read_proposal_file(shards[0])["ids"]) == 1
    merged = str(tmp_path / "merged.pkl")
    assert merge_proposal_files(merged, shards[::-1]) == 3
    ref = open(one, "rb").read()
    assert open(two, "rb").read() == ref
    assert open(merged, "rb").read() == ref
    with pytest.raises(ValueError, match="missing"):
        merge_proposal_files(str(tmp_path / "bad.pkl"), shards[:1])


def test_kill_and_resume_gives_the_same_file(tmp_path, repo_root):
    import signal
    import subprocess
    import sys
    import time

    from detpre.data.datasets import load_image_folder

    folder = str(tmp_path / "img")
    os.makedirs(folder)
    for i in range(8):  # big enough at full size (--proposal-size 0) to be killed mid-run
        img, _ = rect_image(seed=i, size=448, scale=2.0)
        cv2.imwrite(os.path.join(folder, f"{i}.png"), img[:, :, ::-1])
    killed = str(tmp_path / "killed.pkl")
    parts = killed + ".parts"
    cmd = [sys.executable, os.path.join(repo_root, "tools", "generate_proposals.py"),
           "--image-dir", folder, "--output", killed, "--workers", "1", "--chunk-size", "1",
           "--proposal-size", "0"]
    env = dict(os.environ, PYTHONPATH=repo_root)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(parts) and sum(f.startswith("chunk_") for f in os.listdir(parts)) >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_done = sum(f.startswith("chunk_") for f in os.listdir(parts))
    assert not os.path.exists(killed) and 2 <= n_done < 8, "the run was not interrupted mid-way"

    recs = load_image_folder(folder)
    kw = dict(workers=1, chunk_size=1, proposal_size=0, progress=False)
    generate_proposals(recs, killed, **kw)  # resumes
    full = str(tmp_path / "full.pkl")
    generate_proposals(recs, full, **kw)
    assert open(killed, "rb").read() == open(full, "rb").read()
    assert not os.path.exists(parts)
    with open(full, "rb") as f:
        assert len(pickle.load(f)["ids"]) == 8


def test_resume_refuses_other_settings(tmp_path):
    recs = write_images(str(tmp_path / "img"), n=2)
    out = str(tmp_path / "p.pkl")
    from detpre.data.proposals.proposal_file import PartStore

    PartStore(out).open({"settings": "something else"})
    with pytest.raises(ValueError, match="other settings"):
        generate_proposals(recs, out, workers=1, progress=False)


def test_backends_by_name():
    img, gt = rect_image(1)
    pkg = build_backend("selectivesearch")(img)
    assert pkg.dtype == np.float32 and len(np.unique(pkg, axis=0)) == len(pkg)
    assert any((b == [0, 0, 224, 224]).all() for b in pkg)  # pixel-edge coordinates
    with pytest.raises(KeyError, match="detpre"):
        build_backend("nope")
    if not hasattr(cv2, "ximgproc"):
        with pytest.raises(ImportError, match="opencv-contrib"):
            build_backend("opencv")
