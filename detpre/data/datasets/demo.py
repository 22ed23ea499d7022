"""
The built-in demo data set: ``detpre_demo_train`` / ``detpre_demo_val`` (COCO format, boxes
and polygon masks) and ``detpre_demo_unlabeled`` (images only). Registering is cheap; the
first ``DatasetCatalog.get`` of any of them generates the files (see ``demo_gen``).

The unlabeled split's ground truth is not a data set: no name loads it, so no config can train on
it. Its path is the unlabeled set's metadata ``eval_only_json_file`` (pseudo-label quality reads it).
"""
import os

from detectron2.data.datasets import load_coco_json

from .catalog import register_once
from .demo_gen import UNLABELED_GROUNDTRUTH, generate_demo_dataset
from .folder import load_image_folder

__all__ = ["DEMO_NAMES", "demo_root", "register_demo", "ensure_demo"]

DEMO_NAMES = ("detpre_demo_train", "detpre_demo_val", "detpre_demo_unlabeled")


def demo_root(cfg=None):
    """``cfg.DATASETS.DEMO_ROOT`` if set, else ``$DETECTRON2_DATASETS/detpre_demo``, absolute."""
    root = ""
    if cfg is not None:
        root = cfg.DATASETS.get("DEMO_ROOT", "")
    if not root:
        root = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "detpre_demo")
    return os.path.abspath(os.path.expanduser(root))


def ensure_demo(root):
    """Generate the demo data set under ``root`` unless it is there (safe across processes)."""
    return generate_demo_dataset(root)


def _load_labeled(root, split, name):
    ensure_demo(root)
    return load_coco_json(os.path.join(root, "annotations", f"instances_{split}.json"),
                          os.path.join(root, "images", split), name)


def _load_unlabeled(root, name):
    ensure_demo(root)
    return load_image_folder(os.path.join(root, "images", "unlabeled"), name, source="demo")


def register_demo(root=None):
    """Register the three demo data sets, generated under ``root`` (default ``demo_root()``)."""
    root = demo_root() if root is None else os.path.abspath(os.path.expanduser(root))
    for split in ("train", "val"):
        name = f"detpre_demo_{split}"
        register_once(
            name, ("demo", root, split),
            lambda split=split, name=name: _load_labeled(root, split, name),
            json_file=os.path.join(root, "annotations", f"instances_{split}.json"),
            image_root=os.path.join(root, "images", split), evaluator_type="coco",
        )
    register_once(
        "detpre_demo_unlabeled", ("demo", root, "unlabeled"),
        lambda: _load_unlabeled(root, "detpre_demo_unlabeled"),
        image_root=os.path.join(root, "images", "unlabeled"),
        eval_only_json_file=os.path.join(root, UNLABELED_GROUNDTRUTH),
    )
    return root
