"""Tiny data with one truncated JPEG and one missing file, and tiny configs of every method."""
import logging
import os

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from detpre.config import get_detpre_cfg
from detpre.data.datasets import generate_demo_dataset, register_coco

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def truncate(path, keep=0.4):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:int(len(data) * keep)])


def bad_coco(tmp_path, name):
    """A 6-image COCO data set ``name`` (demo shapes): image 1 truncated, image 2 missing."""
    root = generate_demo_dataset(str(tmp_path / "demo"), seed=3, num_train=6, num_val=1, num_unlabeled=1)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco(name, os.path.join(root, "annotations", "instances_train.json"),
                  os.path.join(root, "images", "train"))
    files = sorted(d["file_name"] for d in DatasetCatalog.get(name))
    truncate(files[1])
    os.remove(files[2])
    return files[1], files[2]


def random_images(folder, n, size=(48, 56), seed=0):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    paths = []
    for i in range(n):
        p = os.path.join(folder, f"im{i}.jpg")
        Image.fromarray(rng.randint(0, 256, (*size, 3), dtype=np.uint8)).save(p, quality=90)
        paths.append(p)
    return paths


def register_list(name, dicts):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])


def tiny_cfg(config, out, *opts):
    cfg = get_detpre_cfg(os.path.join(REPO, "configs/demo", config))
    cfg.merge_from_list([
        "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 3, "SOLVER.CHECKPOINT_PERIOD", 100,
        "SOLVER.WARMUP_ITERS", 0, "SOLVER.STEPS", (), "SEED", 0, "OUTPUT_DIR", str(out),
        "DATASETS.TEST", (), "TEST.EVAL_PERIOD", 0, *opts])
    return cfg


class Records(logging.Handler):
    """Collects the messages of the ``detpre`` loggers (detectron2's setup may stop propagation)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        logging.getLogger("detpre").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("detpre").removeHandler(self)

    def count(self, text):
        return sum(text in m for m in self.messages)
