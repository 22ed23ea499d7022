"""A new user's own data end to end: a COCO-json data set registered only by config keys
(``DATASETS.COCO``), a SoCo config trained on it, ``tools/benchmark_transfer.py --configs`` that
config. Every prerequisite step gets the config that registers the data (the proposals once
failed with ``Dataset '...' is not registered``), and the table shows what one class, one seed and
three evaluation images measure."""
import importlib.util
import json
import os

import cv2
import numpy as np
from _catalog import names_freed

from detpre.data.datasets import DEMO_NAMES
from detpre.data.datasets.reid import REID_DEMO_NAMES
from detpre.jobs.runner import REPO_ROOT


def _coco(root, split, n, size=64, seed=0):
    """``n`` noise images of ``size`` px with one bright square each (one class)."""
    rng = np.random.RandomState(seed)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    images, anns = [], []
    for i in range(n):
        img = rng.randint(0, 60, (size, size, 3)).astype(np.uint8)
        x, y, s = rng.randint(2, 20), rng.randint(2, 20), rng.randint(24, 40)
        img[y:y + s, x:x + s] = rng.randint(150, 255, 3)
        name = f"{split}_{i}.png"
        cv2.imwrite(os.path.join(root, "images", name), img)
        images.append({"id": i + 1, "file_name": name, "height": size, "width": size})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [x, y, s, s], "area": s * s,
                     "iscrowd": 0})
    path = os.path.join(root, f"{split}.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "widget"}]}, f)
    return [f"own_{split}", path, os.path.join(root, "images")]


def test_soco_on_a_coco_json_set_registered_by_config_keys(tmp_path, capsys):
    data = str(tmp_path / "data")
    coco = json.dumps([_coco(data, "train", 4), _coco(data, "val", 3, seed=1)])
    demo = ["DATASETS.DEMO_ROOT", str(tmp_path / "demo"), "DATASETS.REID_DEMO_ROOT", str(tmp_path / "reid")]
    config = tmp_path / "soco_own.yaml"  # what the user writes: the repository's config, their data
    config.write_text(
        f"_BASE_: {REPO_ROOT / 'configs/demo/soco_R18_FPN_tiny.yaml'}\n"
        f"DATASETS:\n  COCO: {coco}\n  TRAIN: ('own_train',)\n  DEMO_ROOT: {tmp_path / 'demo'}\n"
        "SOLVER:\n  IMS_PER_BATCH: 2\n  MAX_ITER: 2\n  WARMUP_ITERS: 0\n  CHECKPOINT_PERIOD: 100\n")
    finetune = ["DATASETS.COCO", coco, "DATASETS.TRAIN", "('own_train',)", "DATASETS.TEST", "('own_val',)", *demo,
                "MODEL.MASK_ON", "False", "MODEL.ROI_HEADS.NUM_CLASSES", "1", "SOLVER.IMS_PER_BATCH", "2",
                "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "()",
                "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.DETECTIONS_PER_IMAGE", "20"]
    spec = importlib.util.spec_from_file_location("benchmark_transfer", REPO_ROOT / "tools" / "benchmark_transfer.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = str(tmp_path / "out")
    with names_freed((*DEMO_NAMES, *REID_DEMO_NAMES), extra=("own_train", "own_val")):
        assert tool.main(["--configs", str(config), "--seeds", "0", "--jobs", "1", "--output-dir", out,
                          "--", *finetune]) == 0
    printed = capsys.readouterr().out
    with open(os.path.join(out, "benchmark_transfer.json")) as f:
        rows = json.load(f)["rows"]
    assert [r["init"] for r in rows] == ["random init", "soco_own"]
    assert rows[1]["pretrain"]["iters"] == 2 and all("bbox/AP" in r["finetune"][0] for r in rows)
    assert os.path.isfile(os.path.join(out, "proposals", "own_train.pkl"))
    assert rows[0]["probe"]["cannot_discriminate"].startswith("one class")
    table = printed[printed.index("Fine-tuning"):]
    assert "nan" not in table.lower() and "| soco_own" in table
    assert "one seed; 3 evaluation images" in table and "warning: only 3 evaluation images (< 50)" in table
    assert "not shown: mask AP" in table
