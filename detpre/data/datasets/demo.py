"""
The built-in demo data set: ``detpre_demo_train`` / ``detpre_demo_val`` (COCO format, boxes
and polygon masks) and ``detpre_demo_unlabeled`` (images only). Registering is cheap; the
first ``DatasetCatalog.get`` of any of them generates the files (see ``demo_gen``).

A demo generated with a selection and a report split (``generate_demo_dataset``'s ``num_select`` /
``num_report``: early stopping picks on one, scores on the other) also registers
``detpre_demo_select`` / ``detpre_demo_report``, and one with label budgets (``train_subsets``)
``detpre_demo_train<N>`` (`train`'s first N images), e.g. under ``DATASETS.DEMO_ROOT
datasets/detpre_demo_converged`` (``make demo-converged``). Selection and report splits exist only
where the demo under the root has them (its marker says so), so such a demo is generated before it
is registered. A label budget is only a file derived from `train`: one that a config names
(``DATASETS.TRAIN: ("detpre_demo_train20",)``, ``register_from_config``) is registered on any demo
and its file written when it is first loaded.

The unlabeled split's ground truth is not a data set: no name loads it, so no config can train on
it. Its path is the unlabeled set's metadata ``eval_only_json_file`` (pseudo-label quality reads it).
"""
import os
import re

from detectron2.data.datasets import load_coco_json

from .catalog import register_once
from .demo_gen import (
    DEMO_VERSION,
    EXTRA_SPLITS,
    UNLABELED_GROUNDTRUTH,
    check_train_subset,
    ensure_train_subset,
    generate_demo_dataset,
    read_demo_marker,
    subset_json,
)
from .folder import load_image_folder

__all__ = ["DEMO_NAMES", "demo_root", "register_demo", "ensure_demo", "demo_extra_names", "train_subsets_named"]

DEMO_NAMES = ("detpre_demo_train", "detpre_demo_val", "detpre_demo_unlabeled")
_TRAIN_SUBSET = re.compile(r"detpre_demo_train([1-9][0-9]*)")  # as registered: no leading zero


def demo_root(cfg=None):
    """``cfg.DATASETS.DEMO_ROOT`` if set, else ``$DETECTRON2_DATASETS/detpre_demo``, absolute."""
    root = ""
    if cfg is not None:
        root = cfg.DATASETS.get("DEMO_ROOT", "")
    if not root:
        root = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "detpre_demo")
    return os.path.abspath(os.path.expanduser(root))


def ensure_demo(root):
    """Generate the demo data set under ``root`` unless it is there (safe across processes). A
    complete demo of the current version is used whatever sizes it was made with (a larger one
    made by ``generate_demo_dataset`` for a benchmark); an older version is regenerated."""
    found = read_demo_marker(root)
    if isinstance(found, dict) and found.get("version") == DEMO_VERSION:
        return os.path.abspath(os.path.expanduser(root))
    return generate_demo_dataset(root)


def train_subsets_named(names):
    """The label budgets N of the ``detpre_demo_train<N>`` among ``names``, sorted."""
    return sorted({int(m.group(1)) for n in names if (m := _TRAIN_SUBSET.fullmatch(str(n)))})


def _load_labeled(root, json_name, image_split, name):
    ensure_demo(root)
    budget = train_subsets_named([name])
    if budget:
        ensure_train_subset(root, budget[0])
    return load_coco_json(os.path.join(root, "annotations", json_name),
                          os.path.join(root, "images", image_split), name)


def _load_unlabeled(root, name):
    ensure_demo(root)
    return load_image_folder(os.path.join(root, "images", "unlabeled"), name, source="demo")


def _extra_splits(root):
    """``{name: (annotation file, image folder)}`` of the splits the demo under ``root`` was made
    with beyond the three (none while it is not generated)."""
    marker = read_demo_marker(root)
    if not isinstance(marker, dict):
        return {}
    out = {f"detpre_demo_{s}": (f"instances_{s}.json", s) for s in EXTRA_SPLITS if marker.get(f"num_{s}")}
    out.update({f"detpre_demo_train{n}": (subset_json(n), "train") for n in marker.get("train_subsets", ())})
    return out


def demo_extra_names(root):
    """The names ``register_demo(root)`` registers beyond ``DEMO_NAMES`` (selection / report splits,
    label budgets), from the marker of the demo under ``root``."""
    return tuple(_extra_splits(os.path.abspath(os.path.expanduser(root))))


def register_demo(root=None, train_subsets=()):
    """Register the demo data sets, generated under ``root`` (default ``demo_root()``): the three,
    the splits the demo there was made with beyond them (``demo_extra_names``) and the label
    budgets ``train_subsets`` (``detpre_demo_train<N>``, N below `train`'s size)."""
    root = demo_root() if root is None else os.path.abspath(os.path.expanduser(root))
    splits = {f"detpre_demo_{s}": (f"instances_{s}.json", s) for s in ("train", "val")}
    marker = read_demo_marker(root)
    for n in train_subsets:  # a budget the demo cannot have fails here, before any training starts
        if isinstance(marker, dict):
            check_train_subset(n, marker, root)
        splits[f"detpre_demo_train{int(n)}"] = (subset_json(n), "train")
    splits.update(_extra_splits(root))
    for name, (json_name, image_split) in splits.items():
        register_once(
            name, ("demo", root, name[len("detpre_demo_"):]),
            lambda j=json_name, s=image_split, name=name: _load_labeled(root, j, s, name),
            json_file=os.path.join(root, "annotations", json_name),
            image_root=os.path.join(root, "images", image_split), evaluator_type="coco",
        )
    register_once(
        "detpre_demo_unlabeled", ("demo", root, "unlabeled"),
        lambda: _load_unlabeled(root, "detpre_demo_unlabeled"),
        image_root=os.path.join(root, "images", "unlabeled"),
        eval_only_json_file=os.path.join(root, UNLABELED_GROUNDTRUTH),
    )
    return root
