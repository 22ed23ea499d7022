"""Each re-ID release's layout, read from a miniature copy written here: counts, ids, cameras,
detection, registration from config, and the error a broken copy gets."""
import os
import re
import shutil

import _reid_miniatures as mini
import pytest
from _catalog import names_freed
from detectron2.data import DatasetCatalog, MetadataCatalog

from detpre.config import get_detpre_cfg
from detpre.data.datasets.reid import (
    LayoutError,
    load_reid_test,
    load_reid_train,
    register_reid,
    register_reid_from_config,
)
from detpre.data.datasets.reid_layouts import detect_layout, get_layout


def _ids(dicts, *keys):
    return [tuple(d[k] for k in keys) for d in dicts]


def _splits(dicts):
    return [d["reid_split"] for d in dicts]


def test_market_and_duke_folders(tmp_path):
    root = mini.market(tmp_path / "market" / "Market-1501-v15.09.15")
    # the folder it was unpacked into works too; distractors (0) and junk (-1) out of train
    train = load_reid_train(str(tmp_path / "market"), "m_train", "market1501")
    assert _ids(train, "orig_pid", "pid", "camid") == [(2, 0, 1), (2, 0, 3), (7, 1, 2)]
    test = load_reid_test(root, "m_test", "")
    assert _ids(test, "reid_split", "pid", "camid") == [
        ("query", 5, 1), ("gallery", 0, 1), ("gallery", 5, 2)]
    duke = mini.market(tmp_path / "duke" / "DukeMTMC-reID", train=("0001_c2_f0046182.jpg",),
                       query=("0005_c2_f0046985.jpg",), gallery=("0005_c5_f0051781.jpg",))
    assert detect_layout(str(tmp_path / "duke")).name == "dukemtmc"
    assert _ids(load_reid_train(str(tmp_path / "duke"), "d", "duke"), "pid", "camid") == [(0, 2)]
    assert load_reid_test(duke, "d", "dukemtmc")[1]["camid"] == 5


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_msmt17_list_files(tmp_path, version):
    base = mini.msmt17(tmp_path / "msmt17", version)
    assert detect_layout(str(tmp_path / "msmt17")).name == "msmt17"
    train = load_reid_train(str(tmp_path / "msmt17"), "msmt_train", "msmt17")
    # list_train + list_val; pid from the list, camera = third field of the name
    assert _ids(train, "orig_pid", "pid", "camid") == [(0, 0, 1), (0, 0, 5), (1, 1, 2), (2, 2, 15)]
    img_dir = "train" if version == "V1" else "mask_train_v2"
    assert train[0]["file_name"] == os.path.join(base, img_dir, "0000",
                                                 "0000_000_01_0303morning_0015_0.jpg")
    test = load_reid_test(base, "msmt_test", "msmt17")
    assert _ids(test, "reid_split", "pid", "camid") == [
        ("query", 0, 3), ("gallery", 0, 4), ("gallery", 3, 3)]


def test_personx_market_style_and_v1_subsets(tmp_path):
    mini.market(tmp_path / "px" / "PersonX", train=("0001_c3s1_1.jpg", "0410_c12s1_2.jpg"))
    assert detect_layout(str(tmp_path / "px")).name == "personx"
    assert _ids(load_reid_train(str(tmp_path / "px"), "p", "personx"), "pid", "camid") == [
        (0, 3), (1, 12)]
    base = mini.personx_v1(tmp_path / "pxv1", subsets=(4, 5))
    assert detect_layout(base).name == "personx"
    # subsets merged, cameras made distinct per subset (100 k + cam)
    assert _ids(load_reid_train(base, "p", "personx"), "orig_pid", "camid") == [(1, 404), (1, 505)]
    assert _ids(load_reid_test(base, "p", "personx:5"), "reid_split", "camid") == [
        ("query", 501), ("gallery", 502)]
    with pytest.raises(LayoutError, match=r"PersonX_v1.6"):
        load_reid_train(base, "p", "personx:4,6")


def test_veri776_name_lists(tmp_path):
    base = mini.veri(tmp_path / "veri")
    assert detect_layout(str(tmp_path / "veri")).name == "veri776"
    train = load_reid_train(str(tmp_path / "veri"), "v", "veri")
    assert _ids(train, "orig_pid", "pid", "camid") == [(1, 0, 1), (1, 0, 2), (4, 1, 5)]
    assert train[2]["file_name"] == os.path.join(base, "image_train", "0004_c005_00020000_1.jpg")
    test = load_reid_test(base, "v", "veri776")
    assert _ids(test, "reid_split", "pid", "camid") == [
        ("query", 2, 2), ("gallery", 2, 2), ("gallery", 2, 3), ("gallery", 5, 2)]


def test_vehicleid_splits(tmp_path):
    base = mini.vehicleid(tmp_path / "vid")
    assert detect_layout(str(tmp_path / "vid")).name == "vehicleid"
    train = load_reid_train(base, "vid", "vehicleid")
    assert _ids(train, "orig_pid", "pid", "camid") == [(2, 0, 0), (2, 0, 0), (7, 1, 0)]
    assert train[0]["file_name"] == os.path.join(base, "image", "0001083.jpg")
    for size, n_images, n_ids in (("800", 3, 2), ("1600", 5, 3), ("2400", 4, 4)):
        test = load_reid_test(base, "vid", "vehicleid", f"test_{size}")
        assert len(test) == n_images and len({d["pid"] for d in test}) == n_ids
        assert set(_splits(test)) == {"test"}
    with pytest.raises(ValueError, match="test_800"):
        load_reid_test(base, "vid", "vehicleid", "test")


@pytest.mark.parametrize("xml", [True, False])
def test_vehiclex_labels_from_xml_or_names(tmp_path, xml):
    mini.vehiclex(tmp_path / "vx", xml=xml)
    assert detect_layout(str(tmp_path / "vx")).name == "vehiclex"
    train = load_reid_train(str(tmp_path / "vx"), "vx", "vehiclex")
    assert _ids(train, "orig_pid", "pid", "camid") == [(12, 0, 6), (12, 0, 31), (1362, 1, 36)]
    assert get_layout("vehiclex").test_splits == ()


@pytest.fixture
def reid_demo_names_freed():
    """The re-ID demo names get the test's root: put back afterwards (others use the default root)."""
    from detpre.data.datasets.reid import REID_DEMO_NAMES

    with names_freed(REID_DEMO_NAMES):
        yield


def test_register_from_config_names_and_protocols(tmp_path, reid_demo_names_freed):
    mini.market(tmp_path / "m")
    mini.vehicleid(tmp_path / "vid")
    mini.vehiclex(tmp_path / "vx")
    mini.veri(tmp_path / "veri")
    cfg = get_detpre_cfg()
    cfg.DATASETS.REID = [["lay_m", str(tmp_path / "m")],                       # 2 items: detected
                         ["lay_vid", str(tmp_path / "vid"), ""],              # empty: detected
                         ["lay_vx", str(tmp_path / "vx"), "vehiclex"],
                         ["lay_veri", str(tmp_path / "veri"), "veri776"]]
    cfg.DATASETS.REID_DEMO_ROOT = str(tmp_path / "demo")
    register_reid_from_config(cfg)
    register_reid_from_config(cfg)  # repeatable
    names = DatasetCatalog.list()
    assert {"lay_m_train", "lay_m_test", "lay_vid_train", "lay_vid_test_800", "lay_vid_test_1600",
            "lay_vid_test_2400", "lay_vx_train", "lay_veri_train", "lay_veri_test"} <= set(names)
    assert "lay_vx_test" not in names and "lay_vid_test" not in names
    assert MetadataCatalog.get("lay_vid_test_800").reid_protocol == "vehicleid"
    assert MetadataCatalog.get("lay_veri_test").reid_protocol == "market"
    assert MetadataCatalog.get("lay_veri_test").evaluator_type == "reid"
    assert MetadataCatalog.get("lay_vid_train").reid_layout == "vehicleid"
    assert len(DatasetCatalog.get("lay_veri_test")) == 4
    assert len(DatasetCatalog.get("lay_vid_test_1600")) == 5
    cfg.DATASETS.REID = [["lay_bad", str(tmp_path / "m"), "market1501", "x"]]
    with pytest.raises(ValueError, match=r"\[name, root, layout\]"):
        register_reid_from_config(cfg)


# ---- broken copies: each error names the missing file and the expected layout ----

@pytest.mark.parametrize("layout,make,removed,split", [
    ("msmt17", lambda p: mini.msmt17(p, "V1"), "list_gallery.txt", "test"),
    ("veri776", mini.veri, "name_test.txt", "test"),
    ("vehicleid", mini.vehicleid, os.path.join("train_test_split", "test_list_1600.txt"),
     "test_1600"),
])
def test_missing_list_file_is_named(tmp_path, layout, make, removed, split):
    base = make(tmp_path / "d")
    os.remove(os.path.join(base, removed))
    expected = re.escape(os.path.basename(removed)) + rf" does not exist.*{layout} layout"
    if layout != "vehicleid":  # detection reports a partial copy (VehicleID's sizes are lazy)
        with pytest.raises(LayoutError, match=expected):
            detect_layout(str(tmp_path / "d"))
    # named layout: the training split still loads, the broken test split names the file
    assert len(load_reid_train(base, "x", layout)) > 0
    with pytest.raises(LayoutError, match=expected):
        load_reid_test(base, "x", layout, split)


def test_msmt17_bad_line_and_missing_image_folder(tmp_path):
    base = mini.msmt17(tmp_path / "msmt", "V1")
    mini.write(base, "list_val.txt", ["0002/0002_000_15_x.jpg 2", "0002/badname.jpg"])
    with pytest.raises(ValueError, match=r"list_val\.txt:2: expected 'PID/PID_INDEX_CAM"):
        load_reid_train(base, "x", "msmt17")
    base2 = mini.msmt17(tmp_path / "msmt2", "V1")
    os.rename(os.path.join(base2, "train"), os.path.join(base2, "images"))
    with pytest.raises(LayoutError, match=r"MSMT17_V1.train does not exist.*mask_train_v2"):
        load_reid_train(base2, "x", "msmt17")


def test_missing_listed_image_and_bad_list_line(tmp_path):
    base = mini.veri(tmp_path / "veri")
    os.remove(os.path.join(base, "image_train", mini.VERI["train"][0]))
    with pytest.raises(LayoutError, match=r"0001_c001_00016450_0\.jpg \(listed in .*name_train"):
        load_reid_train(base, "x", "veri776")
    base = mini.vehicleid(tmp_path / "vid")
    mini.write(base, "train_test_split/train_list.txt", ["0001083"])
    with pytest.raises(ValueError, match=r"train_list\.txt:1: expected 'IMAGE_NAME VEHICLE_ID'"):
        load_reid_train(base, "x", "vehicleid")


def test_vehiclex_broken_xml(tmp_path):
    base = mini.vehiclex(tmp_path / "vx")
    with open(os.path.join(base, "train_label.xml"), "w") as f:
        f.write('<Items><Item imageName="000001.jpg" cameraID="c006"/></Items>')
    with pytest.raises(ValueError, match=r"train_label\.xml: cannot read .*vehiclex layout"):
        load_reid_train(base, "x", "vehiclex")


def test_market_missing_folder_and_unknown_layout(tmp_path):
    root = mini.market(tmp_path / "m")
    shutil.rmtree(os.path.join(root, "query"))
    with pytest.raises(LayoutError, match=r"m.query does not exist.*market1501 layout"):
        detect_layout(root)
    assert len(load_reid_train(root, "x", "market1501")) == 3  # a train-only folder still serves
    with pytest.raises(ValueError, match="unknown re-ID layout 'veri-777'"):
        get_layout("veri-777")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LayoutError, match=r"(?s)holds no known re-ID layout.*msmt17: .*vehicleid: "):
        detect_layout(str(empty))
    # an undetected root registers the Market names; loading reports what is missing
    register_reid("lay_missing", str(tmp_path / "nowhere"))
    with pytest.raises(LayoutError, match="nowhere does not exist"):
        DatasetCatalog.get("lay_missing_train")
