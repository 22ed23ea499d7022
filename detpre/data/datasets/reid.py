"""
Re-ID data sets, registered from config keys (``register_reid_from_config(cfg)``):

- ``DATASETS.REID = [[name, root], ...]``: a Market-1501-style folder (bounding_box_train/,
  query/, bounding_box_test/, images named ``PID_cCAM...``) -> ``<name>_train`` and
  ``<name>_test`` (query + gallery, evaluator_type "reid"). Junk images (id -1) are dropped,
  distractors (id 0) stay in the gallery only, as Market's protocol does.
- ``DATASETS.REID_CROPS = [[name, detection_data_set], ...]``: every ground-truth box of a
  registered detection data set is one instance (its own identity), cropped by the mapper, so
  detection data can be a re-ID source or target domain.
- the synthetic demo ``detpre_reid_demo_train`` / ``detpre_reid_demo_test``.

Train dicts carry ``pid`` (0..P-1), ``camid``, ``index`` (position in the data set) and
``reid_dataset`` (its name), which SpCL turns into memory indexes.
"""
import os
import re

from detectron2.data import DatasetCatalog
from detectron2.structures import BoxMode

from .catalog import register_once
from .reid_demo import generate_reid_demo

__all__ = ["parse_reid_name", "load_reid_train", "load_reid_test", "load_reid_crops",
           "register_reid", "register_reid_crops", "register_reid_demo", "reid_demo_root",
           "register_reid_from_config", "REID_DEMO_NAMES", "MemoryLayout", "reid_memory_layout"]

REID_DEMO_NAMES = ("detpre_reid_demo_train", "detpre_reid_demo_test")
_NAME = re.compile(r"^(-?\d+)_c(\d+)")
_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
_LAYOUT_HELP = "see datasets/REID.md for the Market-1501 layout"


def parse_reid_name(fname):
    """``0002_c1s1_000451_03.jpg`` -> (2, 1); ``-1_c3s2_...`` -> (-1, 3). None if not re-ID named."""
    m = _NAME.match(os.path.basename(fname))
    return (int(m.group(1)), int(m.group(2))) if m else None


def _scan(root, folder):
    """[(path, pid, camid)] of ``root/folder``, sorted by file name, junk (-1) left out."""
    d = os.path.join(root, folder)
    if not os.path.isdir(d):
        raise FileNotFoundError(f"re-ID folder {d} does not exist; {_LAYOUT_HELP}")
    out = []
    for f in sorted(os.listdir(d)):
        if not f.lower().endswith(_EXTS):
            continue
        parsed = parse_reid_name(f)
        if parsed is None:
            raise ValueError(f"{os.path.join(d, f)}: name is not PID_cCAM... ({_LAYOUT_HELP}); "
                             "rename it or move it out of the folder")
        if parsed[0] != -1:
            out.append((os.path.join(d, f), parsed[0], parsed[1]))
    if not out:
        raise ValueError(f"re-ID folder {d} holds no usable image; {_LAYOUT_HELP}")
    return out


def load_reid_train(root, name):
    """bounding_box_train/ without junk and distractors, ids relabelled 0..P-1 in sorted order."""
    items = [x for x in _scan(root, "bounding_box_train") if x[1] > 0]
    relabel = {p: i for i, p in enumerate(sorted({x[1] for x in items}))}
    return [{"file_name": path, "image_id": os.path.basename(path), "pid": relabel[pid],
             "orig_pid": pid, "camid": cam, "index": i, "reid_dataset": name}
            for i, (path, pid, cam) in enumerate(items)]


def load_reid_test(root, name):
    """query/ then bounding_box_test/ (distractors kept in the gallery), original ids."""
    out = []
    for split, folder in (("query", "query"), ("gallery", "bounding_box_test")):
        for path, pid, cam in _scan(root, folder):
            out.append({"file_name": path, "image_id": f"{split}/{os.path.basename(path)}",
                        "pid": pid, "camid": cam, "reid_split": split, "index": len(out),
                        "reid_dataset": name})
    return out


def load_reid_crops(name, detection_name, min_size=2.0):
    """
    One instance per non-crowd ground-truth box (at least ``min_size`` px wide and high) of the
    detection data set ``detection_name``: ``crop_box`` (XYXY_ABS), ``pid`` = instance number,
    ``camid`` = image number, ``category_id`` kept.
    """
    out = []
    for img_idx, d in enumerate(DatasetCatalog.get(detection_name)):
        for ann in d.get("annotations", []):
            if ann.get("iscrowd", 0):
                continue
            box = BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS)
            if box[2] - box[0] < min_size or box[3] - box[1] < min_size:
                continue
            out.append({"file_name": d["file_name"], "image_id": f"{d['image_id']}/{len(out)}",
                        "height": d.get("height"), "width": d.get("width"),
                        "crop_box": [float(v) for v in box], "pid": len(out), "camid": img_idx,
                        "category_id": ann.get("category_id", 0), "index": len(out),
                        "reid_dataset": name})
    if not out:
        raise ValueError(f"DATASETS.REID_CROPS: detection data set {detection_name!r} has no "
                         "usable ground-truth box to crop")
    return out


def register_reid(name, root):
    """Register ``<name>_train`` and ``<name>_test`` for the Market-style folder ``root``."""
    root = os.path.abspath(os.path.expanduser(root))
    register_once(f"{name}_train", ("reid", root, "train"),
                  lambda: load_reid_train(root, f"{name}_train"), reid_root=root)
    register_once(f"{name}_test", ("reid", root, "test"),
                  lambda: load_reid_test(root, f"{name}_test"), reid_root=root,
                  evaluator_type="reid")


def register_reid_crops(name, detection_name):
    register_once(name, ("reid_crops", detection_name),
                  lambda: load_reid_crops(name, detection_name), detection_dataset=detection_name)


def reid_demo_root(cfg=None):
    root = cfg.DATASETS.get("REID_DEMO_ROOT", "") if cfg is not None else ""
    if not root:
        root = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "detpre_reid_demo")
    return os.path.abspath(os.path.expanduser(root))


def register_reid_demo(root=None):
    """The synthetic demo, generated under ``root`` at its first load."""
    root = reid_demo_root() if root is None else os.path.abspath(os.path.expanduser(root))
    register_once("detpre_reid_demo_train", ("reid_demo", root, "train"),
                  lambda: load_reid_train(generate_reid_demo(root), "detpre_reid_demo_train"),
                  reid_root=root)
    register_once("detpre_reid_demo_test", ("reid_demo", root, "test"),
                  lambda: load_reid_test(generate_reid_demo(root), "detpre_reid_demo_test"),
                  reid_root=root, evaluator_type="reid")
    return root


def _pairs(cfg, key, form):
    out = []
    for i, item in enumerate(cfg.DATASETS.get(key, [])):
        if (not isinstance(item, (list, tuple)) or len(item) != 2
                or not all(isinstance(v, str) and v for v in item)):
            raise ValueError(f"DATASETS.{key}[{i}] = {item!r}: expected {form} (non-empty strings)")
        out.append(tuple(item))
    return out


def register_reid_from_config(cfg):
    """Register DATASETS.REID, DATASETS.REID_CROPS and the re-ID demo; safe to repeat.
    Call it after the detection data sets are registered (crops read them lazily)."""
    for name, root in _pairs(cfg, "REID", "[name, market_style_root]"):
        register_reid(name, root)
    for name, det in _pairs(cfg, "REID_CROPS", "[name, detection_data_set]"):
        register_reid_crops(name, det)
    register_reid_demo(reid_demo_root(cfg))


class MemoryLayout:
    """
    Where each training data set lives in SpCL's hybrid memory: source data sets first (one
    entry per identity), then target data sets (one entry per image), in DATASETS.TRAIN order.
    """

    def __init__(self, entries):
        self.entries = entries  # [(name, domain, offset, size)], domain 0 source / 1 target
        self._by_name = {e[0]: e for e in entries}
        self.num_source = sum(e[3] for e in entries if e[1] == 0)
        self.num_target = sum(e[3] for e in entries if e[1] == 1)

    def index_of(self, d):
        """(memory index, domain) of a training dict (needs ``reid_dataset``, ``pid``, ``index``)."""
        name = d.get("reid_dataset")
        if name not in self._by_name:
            raise KeyError(f"training dict of data set {name!r} is not in the SpCL memory layout "
                           f"{list(self._by_name)}; train only on re-ID data sets")
        _, domain, offset, size = self._by_name[name]
        local = int(d["pid"]) if domain == 0 else int(d["index"])
        if not 0 <= local < size:
            raise IndexError(f"{name}: memory slot {local} outside 0..{size - 1}")
        return offset + local, domain

    def target_entries(self):
        return [e for e in self.entries if e[1] == 1]

    def source_entries(self):
        return [e for e in self.entries if e[1] == 0]


def reid_memory_layout(train_names, source_names=()):
    """The ``MemoryLayout`` of DATASETS.TRAIN with MODEL.SPCL.SOURCE_DATASETS as source."""
    unknown = [n for n in source_names if n not in train_names]
    if unknown:
        raise ValueError(f"MODEL.SPCL.SOURCE_DATASETS {unknown} are not in DATASETS.TRAIN "
                         f"{list(train_names)}; list every source data set in DATASETS.TRAIN too")
    entries, offset = [], 0
    for domain in (0, 1):
        for name in train_names:
            if (name in source_names) != (domain == 0):
                continue
            dicts = DatasetCatalog.get(name)
            size = len({d["pid"] for d in dicts}) if domain == 0 else len(dicts)
            if domain == 0 and sorted({d["pid"] for d in dicts}) != list(range(size)):
                raise ValueError(f"source data set {name}: pids must be 0..P-1")
            entries.append((name, domain, offset, size))
            offset += size
    if not any(e[1] == 1 for e in entries):
        raise ValueError("SpCL needs a target domain: DATASETS.TRAIN has only source data sets")
    return MemoryLayout(entries)
