"""The generated demo data set: deterministic, valid COCO, visible-part annotations, lazy."""
import filecmp
import json
import multiprocessing
import os
import pathlib
import shutil

import numpy as np
import pycocotools.mask as mask_util
import pytest
from _catalog import names_freed
from detectron2.data import DatasetCatalog, MetadataCatalog
from pycocotools.coco import COCO

from detpre.config import get_detpre_cfg
from detpre.data.datasets import demo_root, generate_demo_dataset, register_demo
from detpre.data.datasets.demo_gen import DEMO_MARKER, DEMO_VERSION, UNLABELED_GROUNDTRUTH
from detpre.data.datasets.masks import mask_to_polygons

SMALL = dict(num_train=6, num_val=5, num_unlabeled=4)


def _files(root):
    out = []
    for dirpath, _, filenames in os.walk(root):
        out += [os.path.relpath(os.path.join(dirpath, f), root) for f in filenames]
    return sorted(out)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    return generate_demo_dataset(str(tmp_path_factory.mktemp("demo") / "d"), **SMALL)


def test_deterministic(small_demo, tmp_path):
    again = generate_demo_dataset(str(tmp_path / "again"), **SMALL)
    files = _files(small_demo)
    assert files == _files(again) and len(files) == 6 + 5 + 4 + 5
    _, mismatch, errors = filecmp.cmpfiles(small_demo, again, files, shallow=False)
    assert mismatch == [] and errors == []
    other = generate_demo_dataset(str(tmp_path / "seed1"), seed=1, **SMALL)
    _, mismatch, _ = filecmp.cmpfiles(small_demo, other, files, shallow=False)
    assert len(mismatch) >= 15


def test_splits_are_valid_coco(small_demo):
    for split, n in (("train", 6), ("val", 5)):
        coco = COCO(os.path.join(small_demo, "annotations", f"instances_{split}.json"))
        assert len(coco.imgs) == n and len(coco.anns) > 0
        assert [c["id"] for c in coco.dataset["categories"]] == [1, 2, 3, 4, 5]
        for img in coco.imgs.values():
            assert 160 <= img["height"] <= 256 and 160 <= img["width"] <= 256
            path = os.path.join(small_demo, "images", split, img["file_name"])
            assert os.path.isfile(path)
            assert 2 <= len(coco.imgToAnns[img["id"]]) <= 6
        for ann in coco.anns.values():
            img = coco.imgs[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            assert x >= 0 and y >= 0 and w > 0 and h > 0
            assert x + w <= img["width"] and y + h <= img["height"]
            assert ann["area"] > 0 and ann["iscrowd"] == 0
            m = coco.annToMask(ann)
            # polygons rasterize back to exactly the visible pixels: inside the box, touching
            # all four sides of it, as many as "area"
            assert m.sum() == ann["area"]
            ys, xs = np.nonzero(m)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
    with open(os.path.join(small_demo, "annotations", "image_info_unlabeled.json")) as f:
        info = json.load(f)
    assert len(info["images"]) == 4 and "annotations" not in info
    assert len(os.listdir(os.path.join(small_demo, "images", "unlabeled"))) == 4


def test_default_val_covers_categories_and_sizes(tmp_path):
    # per-image seeds: val alone is the same as val of a full-size generation
    root = generate_demo_dataset(str(tmp_path / "v"), num_train=0, num_val=50, num_unlabeled=0)
    coco = COCO(os.path.join(root, "annotations", "instances_val.json"))
    assert len(coco.imgs) == 50
    anns = list(coco.anns.values())
    assert {a["category_id"] for a in anns} == {1, 2, 3, 4, 5}
    areas = np.array([a["area"] for a in anns])
    assert (areas < 32 ** 2).any() and ((areas >= 32 ** 2) & (areas < 96 ** 2)).any()
    assert (areas >= 96 ** 2).any()
    # occlusion happens: some objects' visible boxes overlap
    assert any(_overlaps(coco.loadAnns(coco.getAnnIds(imgIds=i))) for i in coco.imgs)


def _overlaps(anns):
    """Whether two of the (visible) boxes overlap."""
    boxes = [a["bbox"] for a in anns]
    iou = np.asarray(mask_util.iou(boxes, boxes, [0] * len(boxes)))
    return bool((iou[~np.eye(len(boxes), dtype=bool)] > 0).any())


def test_mask_to_polygons_roundtrip():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:50, 0:60]
    r2 = (yy - 25) ** 2 + (xx - 30) ** 2
    ring = (r2 < 20 ** 2) & (r2 >= 9 ** 2)
    for mask in [ring, rng.random((50, 60)) < 0.3, ring & (rng.random((50, 60)) < 0.9)]:
        polys = mask_to_polygons(mask)
        back = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polys, 50, 60)))
        np.testing.assert_array_equal(back, mask.astype(np.uint8))
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []


def test_existing_root(small_demo, tmp_path):
    stamp = os.path.getmtime(os.path.join(small_demo, "annotations", "instances_val.json"))
    assert generate_demo_dataset(small_demo, **SMALL) == small_demo  # kept, not rewritten
    assert os.path.getmtime(os.path.join(small_demo, "annotations", "instances_val.json")) == stamp
    with pytest.raises(FileExistsError, match="delete"):
        generate_demo_dataset(small_demo, seed=3, **SMALL)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a complete"):
        generate_demo_dataset(str(junk), **SMALL)
    assert os.listdir(tmp_path) == ["junk"]  # no temp dir left behind


def test_unlabeled_groundtruth_beside_the_image_list(small_demo):
    """The unlabeled split's boxes are written (for pseudo-label quality), same images as its list."""
    gt = COCO(os.path.join(small_demo, UNLABELED_GROUNDTRUTH))
    with open(os.path.join(small_demo, "annotations", "image_info_unlabeled.json")) as f:
        listed = json.load(f)["images"]
    assert sorted(gt.imgs.values(), key=lambda i: i["id"]) == listed
    assert sorted(os.listdir(os.path.join(small_demo, "images", "unlabeled"))) == [i["file_name"] for i in listed]
    assert len(gt.anns) >= 2 * len(listed)
    assert all(len(gt.getAnnIds(imgIds=[i["id"]])) >= 2 for i in listed)


def test_outdated_demo_is_regenerated(small_demo, tmp_path):
    """A demo dir of DEMO_VERSION 1 (no unlabeled ground truth) becomes the current one."""
    import shutil

    old = str(tmp_path / "old")
    shutil.copytree(small_demo, old)
    os.remove(os.path.join(old, UNLABELED_GROUNDTRUTH))
    with open(os.path.join(old, DEMO_MARKER)) as f:
        marker = json.load(f)
    with open(os.path.join(old, DEMO_MARKER), "w") as f:
        json.dump({**marker, "version": 1}, f)
    assert generate_demo_dataset(old, **SMALL) == old
    files = _files(small_demo)
    _, mismatch, errors = filecmp.cmpfiles(small_demo, old, files, shallow=False)
    assert files == _files(old) and mismatch == [] and errors == []
    assert sorted(os.listdir(tmp_path)) == ["old"]  # the old copy and the temp dir are gone
    with open(os.path.join(old, DEMO_MARKER), "w") as f:
        json.dump({**marker, "version": DEMO_VERSION + 1}, f)
    with pytest.raises(FileExistsError, match="delete"):  # a newer one is not overwritten
        generate_demo_dataset(old, **SMALL)


def test_older_version_with_other_sizes_is_replaced_and_keeps_its_images(small_demo, tmp_path):
    """Version 3 enlarged `val`: a version-2 demo with the old val size is regenerated with the
    sizes asked for, and the images both have in common are byte-identical (per-image seeds)."""
    old = str(tmp_path / "v2")
    generate_demo_dataset(old, num_train=SMALL["num_train"], num_val=2, num_unlabeled=SMALL["num_unlabeled"])
    with open(os.path.join(old, DEMO_MARKER)) as f:
        marker = json.load(f)
    with open(os.path.join(old, DEMO_MARKER), "w") as f:
        json.dump({**marker, "version": DEMO_VERSION - 1}, f)
    first_val = pathlib.Path(old, "images", "val", "val_000001.jpg").read_bytes()
    assert generate_demo_dataset(old, **SMALL) == old
    assert _files(old) == _files(small_demo)
    assert sorted(os.listdir(tmp_path)) == ["v2"]  # the old copy and the temp dir are gone
    assert pathlib.Path(old, "images", "val", "val_000001.jpg").read_bytes() == first_val
    assert len(os.listdir(os.path.join(old, "images", "val"))) == SMALL["num_val"]
    with open(os.path.join(old, DEMO_MARKER)) as f:
        assert json.load(f)["version"] == DEMO_VERSION
    with pytest.raises(FileExistsError, match="delete"):  # same version, other sizes: an error
        generate_demo_dataset(old, num_train=1, num_val=1, num_unlabeled=1)


def _generate(root):
    generate_demo_dataset(root, **SMALL)


def test_concurrent_generation(small_demo, tmp_path):
    root = str(tmp_path / "shared")
    ctx = multiprocessing.get_context("spawn")  # fork in a threaded process is deprecated
    procs = [ctx.Process(target=_generate, args=(root,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert os.listdir(tmp_path) == ["shared"]
    files = _files(root)
    _, mismatch, errors = filecmp.cmpfiles(small_demo, root, files, shallow=False)
    assert files == _files(small_demo) and mismatch == [] and errors == []


def test_demo_root(monkeypatch, tmp_path):
    cfg = get_detpre_cfg()
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "d2"))
    assert demo_root(cfg) == str(tmp_path / "d2" / "detpre_demo")
    assert demo_root() == str(tmp_path / "d2" / "detpre_demo")
    cfg.DATASETS.DEMO_ROOT = str(tmp_path / "mine")
    assert demo_root(cfg) == str(tmp_path / "mine")


@pytest.fixture
def fresh_demo_names():
    """The demo names unregistered for the test; whatever was registered before is restored."""
    with names_freed(("detpre_demo_train", "detpre_demo_val", "detpre_demo_unlabeled")):
        yield


def test_register_demo_generates_on_first_use(tmp_path, fresh_demo_names):
    root = str(tmp_path / "lazy")
    assert register_demo(root) == root
    register_demo(root)  # idempotent
    with pytest.raises(ValueError, match="already registered"):
        register_demo(str(tmp_path / "elsewhere"))
    assert not os.path.exists(root)
    val = DatasetCatalog.get("detpre_demo_val")  # generates the full default data set
    assert len(val) == 300 and all(len(d["annotations"]) >= 2 for d in val)
    assert all(os.path.isfile(d["file_name"]) for d in val)
    meta = MetadataCatalog.get("detpre_demo_val")
    assert meta.evaluator_type == "coco" and len(meta.thing_classes) == 5
    assert os.path.isfile(meta.json_file)
    assert len(DatasetCatalog.get("detpre_demo_train")) == 60
    unlabeled = DatasetCatalog.get("detpre_demo_unlabeled")
    assert len(unlabeled) == 300 and all("annotations" not in d for d in unlabeled)
    assert unlabeled[0]["image_id"] == "unlabeled_000000.jpg"
    gt = MetadataCatalog.get("detpre_demo_unlabeled").eval_only_json_file
    assert os.path.isfile(gt) and gt not in [MetadataCatalog.get(n).get("json_file", None)
                                               for n in DatasetCatalog.list()]


def test_a_label_budget_a_config_names_is_trains_first_images_on_any_demo(small_demo, tmp_path):
    """``detpre_demo_train<N>`` in DATASETS.TRAIN works on a demo made without budgets: its file is
    written from `train` on first load; N outside 1..num_train-1 is an error naming the name, at
    registration when the demo is there, else when it is loaded."""
    from detpre.data.datasets import register_from_config
    from detpre.data.datasets.demo import train_subsets_named
    from detpre.data.datasets.demo_gen import ensure_train_subset
    from detpre.errors import DetpreError

    root = str(tmp_path / "d")
    shutil.copytree(small_demo, root)
    cfg = get_detpre_cfg()
    cfg.DATASETS.DEMO_ROOT = root
    cfg.DATASETS.TRAIN = ("detpre_demo_train2",)
    cfg.DATASETS.TEST = ("detpre_demo_val",)
    names = ("detpre_demo_train", "detpre_demo_val", "detpre_demo_unlabeled", "detpre_demo_train2",
             "detpre_demo_train6")
    with names_freed(names):
        register_from_config(cfg)
        assert not os.path.exists(os.path.join(root, "annotations", "instances_train2.json"))
        first, train = DatasetCatalog.get("detpre_demo_train2"), DatasetCatalog.get("detpre_demo_train")
        assert len(train) == 6 and [d["file_name"] for d in first] == [d["file_name"] for d in train[:2]]
        assert [d["annotations"] for d in first] == [d["annotations"] for d in train[:2]]
        assert json.load(open(MetadataCatalog.get("detpre_demo_train2").json_file))["images"] == \
            json.load(open(os.path.join(root, "annotations", "instances_train.json")))["images"][:2]
        assert sorted(json.load(open(os.path.join(root, DEMO_MARKER)))) == sorted(  # the marker is untouched
            ["version", "seed", "num_train", "num_val", "num_unlabeled"])
    cfg.DATASETS.TEST = ("detpre_demo_val", "detpre_demo_train6")
    with names_freed(names), pytest.raises(DetpreError, match=r"train6: .* 6 `train` images.* N from 1 to 5"):
        register_from_config(cfg)
    with pytest.raises(DetpreError, match="detpre_demo_train6: .* N from 1 to 5"):
        ensure_train_subset(root, 6)  # the load-time check, for a demo generated after registration
    with pytest.raises(DetpreError, match="no complete demo"):
        ensure_train_subset(str(tmp_path / "none"), 2)
    # only the names a budget is registered under count: no leading zero, no zero, nothing after
    assert train_subsets_named(["detpre_demo_train020", "detpre_demo_train0", "detpre_demo_train3x",
                                "detpre_demo_val", "detpre_demo_train12", "detpre_demo_train3"]) == [3, 12]
