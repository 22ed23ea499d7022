"""
COCO-format data sets from ``DATASETS.COCO``: detectron2's ``load_coco_json`` after a check
that turns a broken file into an error naming the file and the entry, not a deep KeyError.
"""
import json
import math
import os
from numbers import Number

from detectron2.data.datasets import load_coco_json

from .catalog import register_once

__all__ = ["register_coco", "validate_coco_json", "load_checked_coco_json"]


def _short(entry, limit=200):
    text = json.dumps(entry, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def _is_number(v):
    return isinstance(v, Number) and not isinstance(v, bool) and math.isfinite(v)


def validate_coco_json(json_file):
    """
    Read ``json_file`` and check the parts detectron2 relies on; raise ValueError naming the
    file and the first offending entry. Returns the parsed dict.
    """
    def fail(what, entry=None):
        where = f"\n  offending entry: {_short(entry)}" if entry is not None else ""
        raise ValueError(f"COCO json {json_file}: {what}.{where}\n"
                         "Fix the file (see datasets/README.md for the expected format).")

    try:
        with open(json_file) as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"COCO json {json_file} cannot be read as JSON: {e}") from e
    if not isinstance(data, dict):
        fail("the top level must be an object with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            fail(f"missing list '{key}'")

    cat_ids = set()
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or "name" not in cat:
            fail(f"categories[{i}] needs an integer 'id' and a 'name'", cat)
        if cat["id"] in cat_ids:
            fail(f"categories[{i}] repeats id {cat['id']}", cat)
        cat_ids.add(cat["id"])
    if data["annotations"] and not cat_ids:
        fail("there are annotations but no categories")

    img_ids = set()
    for i, img in enumerate(data["images"]):
        if (not isinstance(img, dict) or "id" not in img
                or not isinstance(img.get("file_name"), str)):
            fail(f"images[{i}] needs an 'id' and a 'file_name'", img)
        if not all(_is_number(img.get(k)) and img[k] > 0 for k in ("height", "width")):
            fail(f"images[{i}] needs positive 'height' and 'width'", img)
        if img["id"] in img_ids:
            fail(f"images[{i}] repeats id {img['id']}", img)
        img_ids.add(img["id"])

    ann_ids = set()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            fail(f"annotations[{i}] is not an object", ann)
        if ann.get("image_id") not in img_ids:
            fail(f"annotations[{i}] points at image_id {ann.get('image_id')!r}, "
                 "which is not in 'images'", ann)
        if ann.get("category_id") not in cat_ids:
            fail(f"annotations[{i}] points at category_id {ann.get('category_id')!r}, "
                 "which is not in 'categories'", ann)
        box = ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            fail(f"annotations[{i}] 'bbox' must be 4 numbers [x, y, width, height]", ann)
        if box[2] < 0 or box[3] < 0:
            fail(f"annotations[{i}] 'bbox' has a negative width or height", ann)
        segm = ann.get("segmentation")
        if segm is not None and not isinstance(segm, (list, dict)):
            fail(f"annotations[{i}] 'segmentation' must be polygons (list) or RLE (dict)", ann)
        if ann.get("id") in ann_ids:
            fail(f"annotations[{i}] repeats id {ann.get('id')!r}", ann)
        ann_ids.add(ann.get("id"))
    return data


def load_checked_coco_json(json_file, image_root, dataset_name):
    """``validate_coco_json`` then detectron2's ``load_coco_json``."""
    validate_coco_json(json_file)
    return load_coco_json(json_file, image_root, dataset_name)


def register_coco(name, json_file, image_root, source="DATASETS.COCO"):
    """
    Like detectron2's ``register_coco_instances`` (evaluator_type "coco"), but missing paths
    fail here, naming ``source`` (the config key), and a broken json fails clearly on load.
    """
    json_file = os.path.expanduser(str(json_file))
    image_root = os.path.expanduser(str(image_root))
    for what, path, is_ok in (("json_file", json_file, os.path.isfile),
                              ("image_root", image_root, os.path.isdir)):
        if not is_ok(path):
            raise FileNotFoundError(
                f"{source}: {what} of data set {name!r} not found: {path}. "
                "Fix the path in the config or put the data there (see datasets/README.md); "
                "relative paths are relative to the working directory.")
    return register_once(
        name, ("coco", json_file, image_root),
        lambda: load_checked_coco_json(json_file, image_root, name),
        json_file=json_file, image_root=image_root, evaluator_type="coco",
    )
