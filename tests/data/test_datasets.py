"""Registration of the user's own data sets from config keys (COCO json, VOC dir, image folder)."""
import json
import os
import subprocess
import sys
import uuid

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.pascal_voc import load_voc_instances
from detectron2.structures import BoxMode

from detpre.config import get_detpre_cfg
from detpre.data.datasets import guess_voc_year, register_from_config


@pytest.fixture
def catalog():
    """Remove whatever a test registers, so names never clash across tests. The demo names are
    dropped first too: tests here register them at a temporary root."""
    _drop(n for n in DatasetCatalog.list() if n.startswith(("detpre_demo_", "detpre_reid_demo_")))
    before = set(DatasetCatalog.list())
    yield
    _drop(set(DatasetCatalog.list()) - before)


def _drop(names):
    for name in list(names):
        DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)


def _name(kind):
    return f"test_{kind}_{uuid.uuid4().hex[:8]}"


def _coco_dict():
    return {
        "images": [{"id": 7, "file_name": "a.jpg", "height": 40, "width": 50},
                   {"id": 9, "file_name": "b.jpg", "height": 30, "width": 20}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [1, 2, 10, 5], "area": 50,
             "iscrowd": 0, "segmentation": [[1, 2, 11, 2, 11, 7, 1, 7]]},
            {"id": 2, "image_id": 9, "category_id": 5, "bbox": [0, 0, 4, 4], "area": 16,
             "iscrowd": 0},
        ],
        "categories": [{"id": 3, "name": "cat"}, {"id": 5, "name": "dog"}],
    }


def _write_coco(tmp_path, data=None, text=None):
    (tmp_path / "imgs").mkdir(exist_ok=True)
    (tmp_path / "imgs" / "a.jpg").write_bytes(b"x")
    path = tmp_path / "ann.json"
    path.write_text(text if text is not None else json.dumps(data or _coco_dict()))
    return str(path), str(tmp_path / "imgs")


def _write_voc(root, objects, split="train"):
    """objects: {fileid: [(class, xmin, ymin, xmax, ymax), ...]}."""
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for fileid, objs in objects.items():
        body = "".join(
            f"<object><name>{c}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin>"
            f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
            for c, x0, y0, x1, y1 in objs)
        (root / "Annotations" / f"{fileid}.xml").write_text(
            f"<annotation><size><width>64</width><height>48</height><depth>3</depth></size>"
            f"{body}</annotation>")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(objects) + "\n")
    return str(root)


def _cfg(tmp_path, coco=(), voc=(), folder=()):
    cfg = get_detpre_cfg()
    cfg.DATASETS.COCO = [list(x) for x in coco]
    cfg.DATASETS.VOC = [list(x) for x in voc]
    cfg.DATASETS.FOLDER = [list(x) for x in folder]
    cfg.DATASETS.DEMO_ROOT = str(tmp_path / "demo")
    return cfg


def test_register_all_kinds_from_config(tmp_path, catalog):
    json_file, image_root = _write_coco(tmp_path)
    voc_dir = _write_voc(tmp_path / "VOC2007",
                         {"000001": [("dog", 1, 1, 10, 20)], "000002": [("cat", 5, 6, 30, 40)]})
    img_dir = tmp_path / "pool"
    (img_dir / "sub").mkdir(parents=True)
    for rel in ("b.PNG", "a.jpg", "sub/c.webp", "notes.txt", "sub/d.tif"):
        (img_dir / rel).write_bytes(b"x")  # never decoded
    names = [_name("coco"), _name("voc"), _name("folder")]
    cfg = _cfg(tmp_path, coco=[(names[0], json_file, image_root)],
               voc=[(names[1], voc_dir, "train", "cat, dog")], folder=[(names[2], str(img_dir))])
    register_from_config(cfg)
    register_from_config(cfg)  # idempotent

    coco = DatasetCatalog.get(names[0])
    assert [d["image_id"] for d in coco] == [7, 9]
    assert coco[0]["file_name"] == os.path.join(image_root, "a.jpg")
    assert coco[0]["annotations"][0]["bbox"] == [1, 2, 10, 5]
    assert coco[0]["annotations"][0]["bbox_mode"] == BoxMode.XYWH_ABS
    assert [d["annotations"][0]["category_id"] for d in coco] == [0, 1]  # contiguous
    meta = MetadataCatalog.get(names[0])
    assert (meta.evaluator_type, meta.json_file, meta.thing_classes) == ("coco", json_file,
                                                                        ["cat", "dog"])

    voc = DatasetCatalog.get(names[1])
    assert [d["image_id"] for d in voc] == ["000001", "000002"]
    assert voc[0]["annotations"][0]["category_id"] == 1  # "dog" in ["cat", "dog"]
    assert voc[1]["annotations"][0]["bbox"] == [4.0, 5.0, 30.0, 40.0]
    meta = MetadataCatalog.get(names[1])
    assert (meta.evaluator_type, meta.year, meta.split, meta.thing_classes) == (
        "pascal_voc", 2007, "train", ["cat", "dog"])

    folder = DatasetCatalog.get(names[2])
    assert [d["image_id"] for d in folder] == ["a.jpg", "b.PNG", "sub/c.webp", "sub/d.tif"]
    assert all("annotations" not in d and os.path.isfile(d["file_name"]) for d in folder)

    assert {"detpre_demo_train", "detpre_demo_val", "detpre_demo_unlabeled"} <= set(
        DatasetCatalog.list())
    assert not (tmp_path / "demo").exists()  # registering generates nothing
    assert "coco_2017_val" in DatasetCatalog.list()  # detectron2's builtins untouched


def test_same_name_other_arguments_is_an_error(tmp_path, catalog):
    json_file, image_root = _write_coco(tmp_path)
    name = _name("coco")
    register_from_config(_cfg(tmp_path, coco=[(name, json_file, image_root)]))
    with pytest.raises(ValueError, match="already registered"):
        register_from_config(_cfg(tmp_path, folder=[(name, image_root)]))
    with pytest.raises(ValueError, match="coco_2017_val"):
        register_from_config(_cfg(tmp_path, coco=[("coco_2017_val", json_file, image_root)]))


def test_missing_paths_name_key_and_path(tmp_path, catalog):
    json_file, image_root = _write_coco(tmp_path)
    missing = str(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match=r"DATASETS\.COCO\[0\].*nope\.json"):
        register_from_config(_cfg(tmp_path, coco=[(_name("c"), missing, image_root)]))
    with pytest.raises(FileNotFoundError, match=r"image_root.*nowhere"):
        register_from_config(
            _cfg(tmp_path, coco=[(_name("c"), json_file, str(tmp_path / "nowhere"))]))
    with pytest.raises(FileNotFoundError, match=r"DATASETS\.FOLDER\[0\].*nodir"):
        register_from_config(_cfg(tmp_path, folder=[(_name("f"), str(tmp_path / "nodir"))]))
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images")
    with pytest.raises(FileNotFoundError, match="no images.*empty"):
        register_from_config(_cfg(tmp_path, folder=[(_name("f"), str(empty))]))
    with pytest.raises(ValueError, match=r"DATASETS\.FOLDER\[0\].*\[name, image_dir\]"):
        register_from_config(_cfg(tmp_path, folder=[(_name("f"),)]))


def _broken(mutate):
    data = _coco_dict()
    mutate(data)
    return data


@pytest.mark.parametrize("data,text,message", [
    (None, "{not json", "cannot be read as JSON"),
    (_broken(lambda d: d.pop("categories")), None, "missing list 'categories'"),
    (_broken(lambda d: d["annotations"][1].update(bbox=[0, 0, 4])), None, r"'bbox' must be 4"),
    (_broken(lambda d: d["annotations"][1].update(bbox=[0, 0, 4, "4"])), None, r"'bbox' must"),
    (_broken(lambda d: d["annotations"][1].update(bbox=[0, 0, -4, 4])), None, "negative"),
    (_broken(lambda d: d["annotations"][1].update(image_id=8)), None, "image_id 8"),
    (_broken(lambda d: d["annotations"][0].update(category_id=4)), None, "category_id 4"),
    (_broken(lambda d: d["images"][0].update(height=-40)), None, r"images\[0\].*height"),
    (_broken(lambda d: d["annotations"][1].update(id=1)), None, "repeats id 1"),
])
def test_broken_coco_json_names_file_and_entry(tmp_path, catalog, data, text, message):
    json_file, image_root = _write_coco(tmp_path, data, text)
    name = _name("coco")
    register_from_config(_cfg(tmp_path, coco=[(name, json_file, image_root)]))
    with pytest.raises(ValueError, match=message) as e:
        DatasetCatalog.get(name)
    assert json_file in str(e.value)
    if data is not None and "annotations[" in str(e.value):
        assert "offending entry" in str(e.value)


def test_voc_matches_detectron2_loader(tmp_path, catalog):
    objects = {"a1": [("dog", 1, 2, 30, 40), ("person", 3, 3, 9, 9)], "b2": [("car", 7, 8, 9, 10)]}
    voc_dir = _write_voc(tmp_path / "myvoc", objects, split="val")
    name = _name("voc")
    register_from_config(_cfg(tmp_path, voc=[(name, voc_dir, "val")]))
    ours = DatasetCatalog.get(name)
    ref = load_voc_instances(voc_dir, "val", MetadataCatalog.get(name).thing_classes)
    for r in ref:
        r["image_id"] = str(r["image_id"])
    assert ours == ref
    assert MetadataCatalog.get(name).year == 2012  # no year in "myvoc"


def test_voc_single_image_split(tmp_path, catalog):
    voc_dir = _write_voc(tmp_path / "VOC2012", {"only": [("cat", 1, 1, 5, 5)]})
    name = _name("voc")
    register_from_config(_cfg(tmp_path, voc=[(name, voc_dir, "train")]))
    (d,) = DatasetCatalog.get(name)
    assert d["annotations"][0]["category_id"] == 7  # VOC's index of "cat"
    assert (d["height"], d["width"]) == (48, 64)


def test_voc_errors_name_the_file(tmp_path, catalog):
    voc_dir = _write_voc(tmp_path / "voc",
                         {"x1": [("cat", 1, 1, 5, 5)], "x2": [("unicorn", 1, 1, 5, 5)]})
    name = _name("voc")
    register_from_config(_cfg(tmp_path, voc=[(name, voc_dir, "train")]))
    with pytest.raises(ValueError, match=r"x2\.xml.*'unicorn'.*4th item"):
        DatasetCatalog.get(name)
    with pytest.raises(FileNotFoundError, match=r"ImageSets.*Main.*test\.txt"):
        register_from_config(_cfg(tmp_path, voc=[(_name("voc"), voc_dir, "test")]))
    os.remove(os.path.join(voc_dir, "Annotations", "x1.xml"))
    with pytest.raises(FileNotFoundError, match=r"x1\.xml"):
        DatasetCatalog.get(name)


def test_guess_voc_year():
    assert guess_voc_year("/data/VOCdevkit/VOC2007/") == 2007
    assert guess_voc_year("/data/2007/mine") == 2012
    assert guess_voc_year("voc_2010_trainval") == 2010


def test_import_registers_nothing():
    code = ("import detpre.data.datasets; from detectron2.data import DatasetCatalog as C; "
            "names = C.list(); assert 'coco_2017_val' in names; "
            "assert not any(n.startswith('detpre_demo') for n in names), names")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
