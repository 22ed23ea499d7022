"""
COCO-format data sets from ``DATASETS.COCO``: detectron2's ``load_coco_json`` after a check
that turns a broken file into an error naming the file and the entry, not a deep KeyError.
Images stay inside ``image_root``: a ``file_name`` that is absolute, climbs out with ``..`` or is
a symlink (or lies in a symlinked folder) leading outside is refused unless
``DATASETS.ALLOW_OUTSIDE_ROOT`` -- a json from elsewhere must not read arbitrary files silently.
"""
import json
import math
import os
from numbers import Number

from detectron2.data.datasets import load_coco_json

from detpre.errors import DetpreError, DetpreFileNotFoundError

from .catalog import register_once

__all__ = ["register_coco", "validate_coco_json", "load_checked_coco_json", "check_inside_root"]


def _short(entry, limit=200):
    text = json.dumps(entry, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def _is_number(v):
    return isinstance(v, Number) and not isinstance(v, bool) and math.isfinite(v)


def validate_coco_json(json_file):
    """
    Read ``json_file`` and check the parts detectron2 relies on; raise ``DetpreError`` (one line)
    naming the file and the first offending entry. Returns the parsed dict.
    """
    def fail(what, entry=None):
        where = f"; offending entry: {_short(entry)}" if entry is not None else ""
        raise DetpreError(f"COCO json {json_file}: {what}{where}. "
                          "Fix the file (see datasets/README.md for the expected format).")

    try:
        with open(json_file) as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DetpreError(f"COCO json {json_file} cannot be read as JSON: {e}") from e
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


def _inside(path, root):
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_inside_root(data, json_file, image_root):
    """Raise ``DetpreError`` naming the json, the entry and ``DATASETS.ALLOW_OUTSIDE_ROOT`` if an
    image's ``file_name`` leads outside ``image_root``: absolute, ``..``, or a symlink (of the file
    or of a folder under the root) whose target is outside. One ``lstat`` per image; the real path
    of each folder once."""
    root = os.path.realpath(image_root)
    folder_ok = {}
    for i, img in enumerate(data["images"]):
        name = img["file_name"]
        rel = os.path.normpath(name)
        if os.path.isabs(name):
            if _inside(os.path.realpath(name), root):
                continue  # an absolute path into the root itself
            why = "is an absolute path outside"
        elif rel == os.pardir or rel.startswith(os.pardir + os.sep):
            why = "climbs with '..' out of"
        else:
            folder = os.path.dirname(rel)
            if folder not in folder_ok:
                folder_ok[folder] = _inside(os.path.realpath(os.path.join(image_root, folder)), root)
            path = os.path.join(image_root, rel)
            if not folder_ok[folder]:
                why = "lies in a symlinked folder outside"
            elif os.path.islink(path) and not _inside(os.path.realpath(path), root):
                why = "is a symlink to a file outside"
            else:
                continue
        raise DetpreError(
            f"COCO json {json_file}: images[{i}] (id {img.get('id')!r}) file_name {name!r} {why} "
            f"image_root {image_root}; fix the json or image_root, or set DATASETS.ALLOW_OUTSIDE_ROOT "
            "True if that json is trusted to name files anywhere")


def load_checked_coco_json(json_file, image_root, dataset_name, allow_outside_root=False):
    """``validate_coco_json``, ``check_inside_root`` (unless allowed), detectron2's ``load_coco_json``."""
    data = validate_coco_json(json_file)
    if not allow_outside_root:
        check_inside_root(data, json_file, image_root)
    return load_coco_json(json_file, image_root, dataset_name)


def register_coco(name, json_file, image_root, source="DATASETS.COCO", allow_outside_root=False):
    """
    Like detectron2's ``register_coco_instances`` (evaluator_type "coco"), but missing paths
    fail here, naming ``source`` (the config key), and a broken json, or one naming files
    outside ``image_root`` (unless ``allow_outside_root``), fails clearly on load.
    """
    json_file = os.path.expanduser(str(json_file))
    image_root = os.path.expanduser(str(image_root))
    for what, path, is_ok in (("json_file", json_file, os.path.isfile),
                              ("image_root", image_root, os.path.isdir)):
        if not is_ok(path):
            raise DetpreFileNotFoundError(
                f"{source}: {what} of data set {name!r} not found: {path}. "
                "Fix the path in the config or put the data there (see datasets/README.md); "
                "relative paths are relative to the working directory.")
    allow_outside_root = bool(allow_outside_root)
    return register_once(
        name, ("coco", json_file, image_root, allow_outside_root),
        lambda: load_checked_coco_json(json_file, image_root, name, allow_outside_root),
        json_file=json_file, image_root=image_root, evaluator_type="coco",
    )
