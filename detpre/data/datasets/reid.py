"""
Re-ID data sets, registered from config keys (``register_reid_from_config(cfg)``):

- ``DATASETS.REID = [[name, root, layout], ...]``: a re-ID release as downloaded (layouts in
  ``reid_layouts.py``: market1501, dukemtmc, msmt17, personx, veri776, vehicleid, vehiclex;
  ``[name, root]`` or an empty layout detects it from the files) -> ``<name>_train`` and its
  test splits (``<name>_test``; VehicleID: ``<name>_test_800/_1600/_2400``; VehicleX: none),
  evaluator_type "reid" with the data set's ``reid_protocol``.
- ``DATASETS.REID_CROPS = [[name, detection_data_set], ...]``: every ground-truth box of a
  registered detection data set is one instance (its own identity), cropped by the mapper, so
  detection data can be a re-ID source or target domain.
- the synthetic demo ``detpre_reid_demo_train`` / ``detpre_reid_demo_test``.

Train dicts carry ``pid`` (0..P-1), ``camid``, ``index`` (position in the data set) and
``reid_dataset`` (its name), which SpCL turns into memory indexes.
"""
import os

from detectron2.data import DatasetCatalog
from detectron2.structures import BoxMode

from .catalog import register_once
from .reid_demo import generate_reid_demo
from .reid_layouts import LayoutError, ReIDLayout, detect_layout, get_layout, parse_reid_name

__all__ = ["parse_reid_name", "load_reid_train", "load_reid_test", "load_reid_crops",
           "register_reid", "register_reid_crops", "register_reid_demo", "reid_demo_root",
           "register_reid_from_config", "REID_DEMO_NAMES", "MemoryLayout", "reid_memory_layout",
           "LayoutError"]

REID_DEMO_NAMES = ("detpre_reid_demo_train", "detpre_reid_demo_test")


def _layout(root, layout):
    """(ReIDLayout, release folder) for a layout spec ("" = detect) under ``root``."""
    if isinstance(layout, ReIDLayout):
        lay = layout
    else:
        lay = get_layout(layout) if layout else detect_layout(root)
    return lay, lay.resolve(root)


def load_reid_train(root, name, layout="market1501"):
    """The layout's training images, ids relabelled 0..P-1 in sorted order."""
    lay, root = _layout(root, layout)
    items = lay.train(root)
    relabel = {p: i for i, p in enumerate(sorted({x[1] for x in items}))}
    return [{"file_name": path, "image_id": os.path.relpath(path, root), "pid": relabel[pid],
             "orig_pid": pid, "camid": cam, "index": i, "reid_dataset": name}
            for i, (path, pid, cam) in enumerate(items)]


def load_reid_test(root, name, layout="market1501", split="test"):
    """A test split: query then gallery (VehicleID: "test", all images), original ids."""
    lay, root = _layout(root, layout)
    if split not in lay.test_splits:
        raise ValueError(f"the {lay.name} layout has test splits {list(lay.test_splits)}, "
                         f"not {split!r}")
    return [{"file_name": path, "image_id": f"{s}/{os.path.relpath(path, root)}", "pid": pid,
             "camid": cam, "reid_split": s, "index": i, "reid_dataset": name}
            for i, (path, pid, cam, s) in enumerate(lay.test(root, split))]


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


def register_reid(name, root, layout=""):
    """
    Register ``<name>_train`` and the layout's test splits for the re-ID release at ``root``.
    An empty ``layout`` is detected now when the files are there; otherwise the Market splits
    are registered and loading them reports what the root lacks.
    """
    root = os.path.abspath(os.path.expanduser(root))
    lay = get_layout(layout) if layout else detect_layout(root, strict=False)
    spec = layout or (lay.name if lay is not None else "")
    splits = lay.test_splits if lay is not None else ("test",)
    meta = {"reid_root": root, "reid_layout": lay.name if lay is not None else ""}
    register_once(f"{name}_train", ("reid", root, spec, "train"),
                  lambda: load_reid_train(root, f"{name}_train", spec), **meta)
    for split in splits:
        register_once(f"{name}_{split}", ("reid", root, spec, split),
                      lambda split=split: load_reid_test(root, f"{name}_{split}", spec, split),
                      evaluator_type="reid", reid_protocol=lay.protocol if lay else "market",
                      **meta)
    return [f"{name}_train"] + [f"{name}_{s}" for s in splits]


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


def _entries(cfg, key, lengths, form):
    out = []
    for i, item in enumerate(cfg.DATASETS.get(key, [])):
        if (not isinstance(item, (list, tuple)) or len(item) not in lengths
                or not all(isinstance(v, str) for v in item) or not all(item[:2])):
            raise ValueError(f"DATASETS.{key}[{i}] = {item!r}: expected {form} (strings)")
        out.append(tuple(item))
    return out


def register_reid_from_config(cfg):
    """Register DATASETS.REID, DATASETS.REID_CROPS and the re-ID demo; safe to repeat.
    Call it after the detection data sets are registered (crops read them lazily)."""
    for item in _entries(cfg, "REID", (2, 3), "[name, root] or [name, root, layout]"):
        register_reid(*item)
    for name, det in _entries(cfg, "REID_CROPS", (2,), "[name, detection_data_set]"):
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
