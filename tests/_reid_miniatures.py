"""Miniature copies of each re-ID release's layout (names and lists matter, not pixels)."""
import os


def touch(root, *rel):
    path = os.path.join(str(root), *rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"x")
    return path


def write(root, rel, lines):
    path = os.path.join(str(root), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))
    return path


def market(root, train=("0002_c1s1_000001_00.jpg", "0002_c3s1_000002_00.jpg",
                        "0007_c2s1_000003_00.jpg", "-1_c1s1_000004_00.jpg",
                        "0000_c1s1_000005_00.jpg"),
           query=("0005_c1s1_000001_00.jpg",),
           gallery=("0005_c2s1_000002_00.jpg", "0000_c1s1_000003_00.jpg",
                    "-1_c1s1_000004_00.jpg")):
    for folder, names in (("bounding_box_train", train), ("query", query),
                          ("bounding_box_test", gallery)):
        for n in names:
            touch(root, folder, n)
    return str(root)


MSMT_TRAIN = ["0000/0000_000_01_0303morning_0015_0.jpg 0",
              "0000/0000_001_05_0303noon_0021_1.jpg 0",
              "0001/0001_000_02_0303morning_0030_0.jpg 1"]
MSMT_VAL = ["0002/0002_000_15_0304afternoon_0001_0.jpg 2"]
MSMT_QUERY = ["0000/0000_000_03_0303morning_0001_0.jpg 0"]
MSMT_GALLERY = ["0000/0000_001_04_0303morning_0002_0.jpg 0",
                "0003/0003_000_03_0303noon_0003_0.jpg 3"]


def msmt17(root, version="V1"):
    base = os.path.join(str(root), f"MSMT17_{version}")
    train_dir, test_dir = ("train", "test") if version == "V1" else ("mask_train_v2", "mask_test_v2")
    for name, lines, d in (("list_train.txt", MSMT_TRAIN, train_dir),
                           ("list_val.txt", MSMT_VAL, train_dir),
                           ("list_query.txt", MSMT_QUERY, test_dir),
                           ("list_gallery.txt", MSMT_GALLERY, test_dir)):
        write(base, name, lines)
        for line in lines:
            touch(base, d, line.split()[0])
    return base


VERI = {"train": ["0001_c001_00016450_0.jpg", "0001_c002_00016460_0.jpg",
                  "0004_c005_00020000_1.jpg"],
        "query": ["0002_c002_00030600_0.jpg"],
        "test": ["0002_c002_00030605_0.jpg", "0002_c003_00030700_0.jpg",
                 "0005_c002_00030800_0.jpg"]}


def veri(root):
    base = os.path.join(str(root), "VeRi")
    for split, names in VERI.items():
        write(base, f"name_{split}.txt", names)
        for n in names:
            touch(base, f"image_{split}", n)
    touch(base, "train_label.xml")  # present in the release, not needed
    return base


VEHICLEID = {"train_list.txt": ["0001083 2", "0001084 2", "0002000 7"],
             "test_list_800.txt": ["0000001 1", "0000002 1", "0000003 3"],
             "test_list_1600.txt": ["0000001 1", "0000002 1", "0000003 3", "0000004 5",
                                    "0000005 5"],
             "test_list_2400.txt": ["0000001 1", "0000003 3", "0000004 5", "0000006 6"]}


def vehicleid(root):
    base = os.path.join(str(root), "VehicleID_V1.0")
    for name, lines in VEHICLEID.items():
        write(base, os.path.join("train_test_split", name), lines)
        for line in lines:
            touch(base, "image", line.split()[0] + ".jpg")
    return base


VEHICLEX_XML = """<?xml version="1.0" encoding="gb2312"?>
<TrainingImages Version="1.0">
<Items number="3">
<Item imageName="000001.jpg" vehicleID="0012" cameraID="c006" colorID="1" typeID="2" />
<Item imageName="000002.jpg" vehicleID="0012" cameraID="c031" colorID="1" typeID="2" />
<Item imageName="000003.jpg" vehicleID="1362" cameraID="c036" colorID="3" typeID="1" />
</Items>
</TrainingImages>
"""


def vehiclex(root, xml=True):
    base = os.path.join(str(root), "AIC20_ReID_Simulation")
    if xml:
        for i in (1, 2, 3):
            touch(base, "image_train", f"{i:06d}.jpg")
        with open(os.path.join(base, "train_label.xml"), "w") as f:
            f.write(VEHICLEX_XML)
    else:
        for n in ("0012_c006_1.jpg", "0012_c031_2.jpg", "1362_c036_3.jpg"):
            touch(base, "image_train", n)
    return base


def personx_v1(root, subsets=(4, 5)):
    base = os.path.join(str(root), "PersonX_v1")
    for k in subsets:
        market(os.path.join(base, str(k)), train=(f"0001_c{k}s1_00000{k}.jpg",),
               query=("0003_c1s1_000001.jpg",), gallery=(f"0003_c2s1_00000{k}.jpg",))
    return base


def registered_reid_demo(tmp_path):
    """A tiny generated re-ID demo (3 training ids, 2 cameras), registered afresh under detpre's
    demo names; its folder."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from detpre.data.datasets.reid import register_reid_demo
    from detpre.data.datasets.reid_demo import generate_reid_demo

    demo = str(tmp_path / "reid_demo")
    generate_reid_demo(demo, num_train_ids=3, num_test_ids=2, num_cameras=2, views_per_camera=2,
                       num_distractors=1, num_junk=1, size=32)
    for name in ("detpre_reid_demo_train", "detpre_reid_demo_test"):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    register_reid_demo(demo)
    return demo
