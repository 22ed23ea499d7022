"""The AP of a resampled image set (detpre.evaluation.image_bootstrap) against pycocotools' COCOeval
run on a data set where the images really are repeated, and the interval's formula by hand."""
import contextlib
import copy
import io
import math

import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy.stats import t as student_t

from detpre.evaluation.image_bootstrap import (
    ImageMatches,
    image_bootstrap_difference,
    load_coco,
    load_matches,
    resample_counts,
)
from detpre.jobs.stats import combined_interval, image_interval, image_metrics, paired_difference

SIZE = 64


def _rle(box):
    m = np.zeros((SIZE, SIZE), np.uint8, order="F")
    x, y, w, h = (int(round(v)) for v in box)
    m[y:y + h, x:x + w] = 1
    r = mask_util.encode(m)
    r["counts"] = r["counts"].decode()
    return r


def _dataset(seed, num_images=8, num_classes=3, crowd=False, many=False):
    """Ground truth (boxes + polygons; with ``crowd`` some crowd objects) and noisy detections with
    distinct scores: some matched with jitter, some misclassified, some false positives; with
    ``many`` one image has more than COCO's 100 detections."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for i in range(1, num_images + 1):
        images.append({"id": i, "width": SIZE, "height": SIZE, "file_name": f"{i}.jpg"})
        for _ in range(int(rng.integers(0, 4))):
            w, h = rng.uniform(8, 30, 2)
            x, y = rng.uniform(0, SIZE - w), rng.uniform(0, SIZE - h)
            c = int(rng.integers(1, num_classes + 1))
            poly = [x, y, x + w, y, x + w, y + h, x, y + h]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": int(crowd and rng.random() < 0.2), "segmentation": [poly]})
            if rng.random() < 0.8:
                j = np.clip([x + rng.normal(0, 2), y + rng.normal(0, 2), w + rng.normal(0, 2), h + rng.normal(0, 2)],
                            1, SIZE - 31)
                dc = c if rng.random() < 0.8 else int(rng.integers(1, num_classes + 1))
                dets.append({"image_id": i, "category_id": dc, "bbox": [float(v) for v in j]})
        for _ in range(int(rng.integers(0, 3)) + (110 if many and i == 1 else 0)):
            box = [float(v) for v in rng.uniform(1, 30, 4)]
            dets.append({"image_id": i, "category_id": int(rng.integers(1, num_classes + 1)), "bbox": box})
    for d, s in zip(dets, rng.permutation(len(dets))):
        d["score"] = float(0.05 + 0.9 * s / max(1, len(dets)))
        d["segmentation"] = _rle(d["bbox"])
    cats = [{"id": c, "name": f"c{c}"} for c in range(1, num_classes + 1)]
    return {"images": images, "annotations": anns, "categories": cats}, dets


def _coco(gt):
    with contextlib.redirect_stdout(io.StringIO()):
        c = COCO()
        c.dataset = gt
        c.createIndex()
    return c


def _coco_ap(gt, dets, iou_type):
    """COCOeval's AP (x100) the way detectron2 calls it."""
    coco_gt = _coco(copy.deepcopy(gt))
    dets = [{k: copy.deepcopy(v) for k, v in d.items() if not (iou_type == "segm" and k == "bbox")} for d in dets]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco_gt, coco_gt.loadRes(dets), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return 100.0 * ev.stats[0]


def _repeated(gt, dets, counts):
    """The data set in which image i appears counts[i] times (new image ids)."""
    images, anns, new_dets = [], [], []
    for img, k in zip(gt["images"], counts):
        for _ in range(int(k)):
            nid = len(images) + 1
            images.append({**img, "id": nid})
            for a in gt["annotations"]:
                if a["image_id"] == img["id"]:
                    anns.append({**a, "id": len(anns) + 1, "image_id": nid})
            new_dets += [{**d, "image_id": nid} for d in dets if d["image_id"] == img["id"]]
    return {"images": images, "annotations": anns, "categories": gt["categories"]}, new_dets


def _matches(gt, dets, iou_type="bbox"):
    return ImageMatches.from_coco(_coco(copy.deepcopy(gt)), dets, iou_type)  # COCOeval rewrites gt polygons


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("kind", [{}, {"crowd": True}, {"many": True}])
def test_all_ones_is_cocoeval(iou_type, kind):
    gt, dets = _dataset(0, **kind)
    assert _matches(gt, dets, iou_type).ap() == pytest.approx(_coco_ap(gt, dets, iou_type), abs=1e-9)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("seed,kind", [(1, {}), (2, {"crowd": True}), (3, {"many": True})])
def test_counts_equal_cocoeval_on_the_repeated_data_set(seed, kind, iou_type):
    gt, dets = _dataset(seed, **kind)
    m = _matches(gt, dets, iou_type)
    for counts in resample_counts(len(gt["images"]), 3, seed=seed):
        rgt, rdets = _repeated(gt, dets, counts)
        assert m.ap(counts) == pytest.approx(_coco_ap(rgt, rdets, iou_type), abs=1e-9), counts


def test_resample_counts_redraw_every_image_count():
    c = resample_counts(50, 200, seed=0)
    assert c.shape == (200, 50) and (c.sum(axis=1) == 50).all() and (c >= 0).all()
    assert (c == 0).any() and (c > 1).any()  # a real resample: some images left out, some twice


def test_load_matches_reads_detectron2_files(tmp_path):
    import json

    gt, dets = _dataset(4)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(dets))
    m = load_matches(load_coco(str(tmp_path / "gt.json")), str(tmp_path / "res.json"), "segm")
    assert m.ap() == pytest.approx(_coco_ap(gt, dets, "segm"), abs=1e-9)
    (tmp_path / "none.json").write_text("[]")  # a model that detects nothing scores 0
    assert load_matches(load_coco(str(tmp_path / "gt.json")), str(tmp_path / "none.json")).ap() == 0.0


def _models(num_images, seeds):
    gt = _dataset(5, num_images=num_images)[0]
    return gt, [_matches(gt, _dataset(s, num_images=num_images)[1]) for s in seeds]


def test_spreads_are_the_seeds_and_the_images():
    gt, ms = _models(12, [5, 6, 7, 10, 11, 12])
    a, b = ms[:3], ms[3:]
    r = image_bootstrap_difference(a, b, num_samples=300, seed=0)
    want = paired_difference([m.ap() for m in a], [m.ap() for m in b])
    assert r["mean"] == pytest.approx(want["mean"]) and r["seed_std"] == pytest.approx(want["std"])
    assert r["n"] == 3 and r["num_images"] == 12 and r["image_std"] > 0
    # the same models on an evaluation set of every image four times: the image spread halves
    big = [_matches(*_repeated(gt, _dataset(s, num_images=12)[1], [4] * 12)) for s in [5, 6, 7, 10, 11, 12]]
    r4 = image_bootstrap_difference(big[:3], big[3:], num_samples=300, seed=1)
    assert r4["mean"] == pytest.approx(r["mean"]) and r4["seed_std"] == pytest.approx(r["seed_std"])
    assert r4["image_std"] == pytest.approx(r["image_std"] / 2, rel=0.25)
    same = image_bootstrap_difference(b, b, num_samples=20)  # identical models differ on no resample
    assert same["mean"] == 0 and same["image_std"] == 0 and same["seed_std"] == 0
    with pytest.raises(ValueError, match="pair them by seed"):
        image_bootstrap_difference(a, b[:2])


def test_combined_interval_by_hand():
    # seed part 0.3^2 / 3 = 0.03, image part 0.5^2 = 0.25: se = sqrt(0.28); df = 2 * 0.28^2 / 0.03^2
    low, high = combined_interval(1.0, 0.3, 3, 0.5)
    half = student_t.ppf(0.975, 2 * 0.28 ** 2 / 0.03 ** 2) * math.sqrt(0.28)
    assert (low, high) == pytest.approx((1.0 - half, 1.0 + half))
    # a small image part: never narrower than the seeds' t-interval (Welch's df alone would shrink it)
    seeds_only = student_t.ppf(0.975, 2) * 0.6 / math.sqrt(3)
    assert combined_interval(1.0, 0.6, 3, 0.05) == pytest.approx((1.0 - seeds_only, 1.0 + seeds_only))
    # no image part: the paired t-interval; no seed spread: the normal interval of the image part
    assert combined_interval(1.0, 0.6, 3, 0.0) == pytest.approx(
        (1.0 - student_t.ppf(0.975, 2) * 0.6 / math.sqrt(3), 1.0 + student_t.ppf(0.975, 2) * 0.6 / math.sqrt(3)))
    assert combined_interval(1.0, 0.0, 3, 0.5) == pytest.approx((1.0 - 1.959964 * 0.5, 1.0 + 1.959964 * 0.5), rel=1e-6)
    assert all(math.isnan(v) for v in combined_interval(1.0, math.nan, 1, 0.5))  # one seed: unknown


def test_transfer_interval_reads_each_runs_final_results(tmp_path):
    """detpre.jobs.stats.image_interval: the files detectron2's COCOEvaluator leaves in each
    finished fine-tuning run, paired by seed; None when a run has none, or only an older one."""
    import json
    import os

    gt = _dataset(6, num_images=10)[0]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    dirs = {}
    for name, seeds in (("a", (6, 7)), ("b", (20, 21))):
        for i, s in enumerate(seeds):
            run = tmp_path / name / f"seed{i}"
            (run / "inference" / "val").mkdir(parents=True)
            (run / "model_final.pth").write_bytes(b"")
            (run / "inference" / "val" / "coco_instances_results.json").write_text(
                json.dumps(_dataset(s, num_images=10)[1]))
            dirs.setdefault(name, []).append(str(run))
    for iou_type in ("bbox", "segm"):  # the same files give box AP and (masks in them) mask AP
        r = image_interval(dirs["a"], dirs["b"], "val", str(tmp_path / "gt.json"), num_samples=50, iou_type=iou_type)
        ms = [_matches(gt, _dataset(s, num_images=10)[1], iou_type) for s in (6, 7, 20, 21)]
        want = image_bootstrap_difference(ms[:2], ms[2:], num_samples=50)
        assert {k: r[k] for k in want} == pytest.approx(want)
        by_hand = combined_interval(want["mean"], want["seed_std"], 2, want["image_std"])
        assert (r["low"], r["high"]) == pytest.approx(by_hand)
        assert r["excludes_zero"] == (r["low"] > 0 or r["high"] < 0)
    box = image_interval(dirs["a"], dirs["b"], "val", str(tmp_path / "gt.json"), num_samples=50)
    assert box["mean"] != pytest.approx(r["mean"])  # the masks are scored, not the boxes again
    # an online run's EMA teacher: its files in the run's inference_teacher/, the base's in inference/
    for d in dirs["a"]:
        os.rename(os.path.join(d, "inference"), os.path.join(d, "inference_teacher"))
    assert image_interval(dirs["a"], dirs["b"], "val", str(tmp_path / "gt.json"), num_samples=50) is None
    teacher = image_interval(dirs["a"], dirs["b"], "val", str(tmp_path / "gt.json"), num_samples=50,
                             run_folder="inference_teacher")
    keys = ("mean", "low", "high")
    assert {k: teacher[k] for k in keys} == pytest.approx({k: box[k] for k in keys})
    assert image_interval(dirs["b"], dirs["a"], "val", str(tmp_path / "gt.json"), num_samples=50,
                          base_folder="inference_teacher")["mean"] == pytest.approx(-box["mean"])
    for d in dirs["a"]:
        os.rename(os.path.join(d, "inference_teacher"), os.path.join(d, "inference"))
    assert image_interval(dirs["a"], [str(tmp_path / "nowhere")] * 2, "val", str(tmp_path / "gt.json")) is None
    assert image_interval(dirs["a"], dirs["b"], None, str(tmp_path / "gt.json")) is None  # no DATASETS.TEST
    cut = os.path.join(dirs["a"][0], "inference", "val", "coco_instances_results.json")
    full = open(cut).read()
    with open(cut, "w") as f:  # killed while detectron2 wrote it
        f.write(full[: len(full) // 2])
    assert image_interval(dirs["a"], dirs["b"], "val", str(tmp_path / "gt.json")) is None
    with open(cut, "w") as f:
        f.write(full)
    stale = os.path.join(dirs["b"][1], "model_final.pth")  # a checkpoint newer than its results
    os.utime(stale, (os.path.getmtime(stale) + 60,) * 2)
    assert image_interval(dirs["a"], dirs["b"], "val", str(tmp_path / "gt.json")) is None


def test_mask_ap_gets_an_image_interval_only_from_a_detector_with_masks():
    from detpre.config import get_detpre_cfg

    cfg = get_detpre_cfg("configs/demo/mask_rcnn_R18_FPN_tiny.yaml", [])
    assert image_metrics(cfg) == (("box AP", "bbox"), ("mask AP", "segm"))
    cfg = get_detpre_cfg("configs/demo/mask_rcnn_R18_FPN_tiny.yaml", ["MODEL.MASK_ON", "False"])
    assert image_metrics(cfg) == (("box AP", "bbox"),)
