"""
``register_from_config(cfg)``: register every data set the config names (DATASETS.COCO,
DATASETS.VOC, DATASETS.FOLDER, the re-ID keys) and the demos, so a user's own data needs no Python.
Called by the entry points after the config is built, never at import time.
"""
from detpre.errors import DetpreError

from .coco import register_coco
from .demo import demo_root, register_demo, train_subsets_named
from .folder import register_image_folder
from .reid import register_reid_from_config
from .voc import VOC_CLASS_NAMES, register_voc

__all__ = ["register_from_config"]


def _entries(cfg, key, lengths, form):
    """Each item of ``cfg.DATASETS.<key>`` as (source label, list of strings), checked."""
    out = []
    for i, item in enumerate(cfg.DATASETS.get(key, [])):
        source = f"DATASETS.{key}[{i}]"
        if (not isinstance(item, (list, tuple)) or len(item) not in lengths
                or not all(isinstance(v, str) and v for v in item)):
            raise DetpreError(f"{source} = {item!r}: expected {form} (non-empty strings); fix it in the config")
        out.append((source, list(item)))
    return out


def register_from_config(cfg):
    """Register the config's data sets and the demo; safe to call again with the same config."""
    for source, (name, json_file, image_root) in _entries(
            cfg, "COCO", (3,), "[name, json_file, image_root]"):
        register_coco(name, json_file, image_root, source=source,
                      allow_outside_root=cfg.DATASETS.get("ALLOW_OUTSIDE_ROOT", False))
    for source, item in _entries(
            cfg, "VOC", (3, 4), '[name, voc_dir, split] or [name, voc_dir, split, "cls1,cls2"]'):
        classes = VOC_CLASS_NAMES
        if len(item) == 4:
            classes = tuple(c.strip() for c in item[3].split(",") if c.strip())
        register_voc(item[0], item[1], item[2], classes, source=source)
    for source, (name, image_dir) in _entries(cfg, "FOLDER", (2,), "[name, image_dir]"):
        register_image_folder(name, image_dir, source=source)
    register_demo(demo_root(cfg), train_subsets_named([*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]))
    # re-ID sets last: crops of detection data sets read the ones registered above
    register_reid_from_config(cfg)
