"""
``generate_demo_dataset``: the small synthetic detection data set behind ``detpre_demo_*``.

Textured shapes (5 categories, COCO small/medium/large, 2-6 per image, occluding each other)
on recoloured crops of scikit-image's bundled photos. Annotations describe what is visible:
mask, box and area of each object after occlusion; objects mostly hidden are not drawn at all.
Every image has its own seed (seed, split, index), so one seed fixes every byte.

The unlabeled split's ground truth is written too, beside the image list, under a name no loader
of a training data set reads (``instances_unlabeled_groundtruth.json``): it only measures how good
a teacher's pseudo-labels are.

Asked for, it also writes a *selection* and a *report* split (``num_select`` / ``num_report``:
early stopping picks a checkpoint on the first and scores it on the second; seeds of their own, so
no image is in two splits) and label budgets of `train` (``train_subsets``: its first N images, the
same files, as ``instances_train<N>.json``). The default demo asks for neither, and its marker
(``detpre_demo.json``) lists only the arguments it was made with, as before.
"""
import json
import logging
import os
import shutil
import tempfile

import cv2
import numpy as np

from detpre.errors import DetpreError
from detpre.utils.io import read_json, write_json_atomic

from .demo_shapes import CATEGORIES, TEXTURES, draw_shape, random_background, texture
from .masks import mask_to_bbox, mask_to_polygons

__all__ = ["generate_demo_dataset", "read_demo_marker", "DEMO_MARKER", "DEMO_SPLITS", "EXTRA_SPLITS",
           "UNLABELED_GROUNDTRUTH", "subset_json", "ensure_train_subset", "check_train_subset"]

DEMO_MARKER = "detpre_demo.json"  # written last into the temp dir: its presence = complete
# 2: + annotations/instances_unlabeled_groundtruth.json (same images). 3: `val` 50 -> 300 images
# (the first 50 unchanged): on 50 images the val set's own sampling moved the AP difference between
# two inits by ~1.5 box AP, more than the seeds did (docs/findings/transfer.md, section 6). A demo of an
# older version is regenerated in place of the old one.
DEMO_VERSION = 3
# evaluation only (pseudo-label quality); relative to the demo root
UNLABELED_GROUNDTRUTH = os.path.join("annotations", "instances_unlabeled_groundtruth.json")
DEMO_SPLITS = ("train", "val", "unlabeled")
# labeled splits made only when asked for (num_select / num_report > 0); their images' seeds use
# split codes 3 and 4 (after DEMO_SPLITS' 0-2), so they share no image with any other split
EXTRA_SPLITS = ("select", "report")
JPEG_QUALITY = 90
MIN_VISIBLE_FRACTION = 0.5  # objects with less of themselves visible are not drawn
MIN_VISIBLE_PIXELS = 30
# longest extent (px) per COCO size class, and how often each is drawn
_SIZE_RANGES = ((10, 34), (38, 100), (115, 250))
_SIZE_PROBS = (0.4, 0.4, 0.2)


def _sample_objects(rng, height, width):
    """Random objects, bottom first: list of (category index, full mask, texture kind)."""
    objects = []
    for _ in range(int(rng.integers(2, 7))):
        cls = int(rng.integers(len(CATEGORIES)))
        lo, hi = _SIZE_RANGES[int(rng.choice(3, p=_SIZE_PROBS))]
        size = min(rng.uniform(lo, hi), 0.95 * min(height, width))
        half = size / 2
        cx = rng.uniform(half, width - half)
        cy = rng.uniform(half, height - half)
        mask = draw_shape(rng, CATEGORIES[cls][1], height, width, cx, cy, size)
        objects.append((cls, mask, TEXTURES[int(rng.integers(len(TEXTURES)))]))
    return objects


def _visible_objects(objects):
    """
    Objects (bottom first) that show enough above the ones kept in front of them, as
    (category index, full mask, visible mask, texture kind). Going top to bottom, a dropped
    object is never drawn, so it hides nothing below it.
    """
    covered = None
    kept = []
    for cls, mask, tex in reversed(objects):
        full = mask.astype(bool)
        visible = full if covered is None else full & ~covered
        n_vis = int(visible.sum())
        if n_vis < MIN_VISIBLE_PIXELS or n_vis < MIN_VISIBLE_FRACTION * int(full.sum()):
            continue
        covered = full.copy() if covered is None else covered | full
        kept.append((cls, full, visible, tex))
    return kept[::-1]


def _render(rng):
    """One image (H x W x 3 uint8 RGB) and its visible objects [(category index, mask)]."""
    height, width = (int(v) for v in rng.integers(160, 257, size=2))
    image = random_background(rng, height, width).astype(np.float32)
    kept = []
    while len(kept) < 2:  # resample the objects until at least two show
        kept = _visible_objects(_sample_objects(rng, height, width))

    for cls, full, _, tex in kept:  # paint bottom first
        x, y, w, h = mask_to_bbox(full)
        fill = texture(rng, h, w, tex)
        region = image[y:y + h, x:x + w]
        m = full[y:y + h, x:x + w]
        region[m] = fill[m]
    image += rng.normal(0.0, 3.0, image.shape).astype(np.float32)  # sensor-like noise
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image, [(cls, visible) for cls, _, visible, _ in kept]


def _write_jpeg(path, image_rgb):
    ok, buf = cv2.imencode(".jpg", image_rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    with open(path, "wb") as f:
        f.write(buf.tobytes())


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))


def _generate_split(out_dir, split, split_code, num_images, seed, categories):
    img_dir = os.path.join(out_dir, "images", split)
    os.makedirs(img_dir)
    images, annotations = [], []
    for i in range(num_images):
        rng = np.random.default_rng([seed, split_code, i])
        image, objects = _render(rng)
        file_name = f"{split}_{i:06d}.jpg"
        _write_jpeg(os.path.join(img_dir, file_name), image)
        image_id = i + 1
        images.append({"id": image_id, "file_name": file_name,
                       "height": image.shape[0], "width": image.shape[1]})
        for cls, visible in objects:
            polygons = mask_to_polygons(visible)
            if not polygons:
                continue
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": categories[cls]["id"], "segmentation": polygons,
                "area": int(visible.sum()), "bbox": mask_to_bbox(visible), "iscrowd": 0,
            })
    ann_dir = os.path.join(out_dir, "annotations")
    instances = {"info": {"description": "detpre demo", "version": DEMO_VERSION},
                 "images": images, "annotations": annotations, "categories": categories}
    if split == "unlabeled":  # image list only, like COCO's image_info_test json
        _write_json(os.path.join(ann_dir, "image_info_unlabeled.json"),
                    {"images": images, "categories": categories})
        instances["info"]["description"] += ": unlabeled split ground truth, for evaluation only"
        _write_json(os.path.join(out_dir, UNLABELED_GROUNDTRUTH), instances)
    else:
        _write_json(os.path.join(ann_dir, f"instances_{split}.json"), instances)


def subset_json(n):
    """The annotation file (under ``annotations/``) of `train`'s first ``n`` images."""
    return f"instances_train{int(n)}.json"


def _write_train_subset(out_dir, n):
    """``instances_train<n>.json``: the first ``n`` images of `train` and their annotations (the
    same image files; a label budget inside the larger one)."""
    ann_dir = os.path.join(out_dir, "annotations")
    with open(os.path.join(ann_dir, "instances_train.json")) as f:
        full = json.load(f)
    images = full["images"][:n]
    keep = {img["id"] for img in images}
    sub = dict(full, images=images, annotations=[a for a in full["annotations"] if a["image_id"] in keep])
    sub["info"] = dict(full["info"], description=f"{full['info']['description']}: the first {n} train images")
    write_json_atomic(os.path.join(ann_dir, subset_json(n)), sub, separators=(",", ":"))


def ensure_train_subset(root, n):
    """The path of ``instances_train<n>.json`` in the (complete) demo under ``root``, written from
    `train`'s annotations if the demo was made without that label budget: a budget is a file
    derived from `train`, so any demo has every budget below its size (``detpre_demo_train<n>``
    in a config is enough)."""
    path = os.path.join(root, "annotations", subset_json(n))
    if os.path.isfile(path):
        return path
    marker = read_demo_marker(root)
    if not isinstance(marker, dict):
        raise DetpreError(f"detpre_demo_train{n}: no complete demo data set under {root} (no {DEMO_MARKER}); "
                          "load one of its data sets first, which generates it")
    check_train_subset(n, marker, root)
    _write_train_subset(root, int(n))
    return path


def check_train_subset(n, marker, root):
    """A ``DetpreError`` naming ``detpre_demo_train<n>`` unless ``n`` is a label budget of the demo
    made with ``marker`` (1 to its `train` size - 1)."""
    num_train = int(marker["num_train"])
    if not 0 < int(n) < num_train:
        raise DetpreError(f"detpre_demo_train{n}: the demo under {root} has {num_train} `train` images, so a label "
                          f"budget detpre_demo_train<N> takes N from 1 to {num_train - 1}; fix the name in "
                          "DATASETS.TRAIN / DATASETS.TEST (detpre_demo_train is all of them)")


def read_demo_marker(root):
    """The arguments the demo under ``root`` was made with (its marker), or None if incomplete."""
    return read_json(os.path.join(root, DEMO_MARKER))


def _outdated(found, params):
    """``found`` (a marker) is a demo of an older version than ``params``'s, whatever its sizes:
    an older version's default sizes are not today's (version 3 enlarged `val`)."""
    if not isinstance(found, dict) or not isinstance(found.get("version"), int):
        return False
    return found["version"] < params["version"]


def _move_aside(root, parent):
    """Rename the outdated demo at ``root`` out of the way (so ``root`` is never half-deleted) and
    return the directory it went to, to delete once the new one is in place; another process may
    have moved it already."""
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.old-", dir=parent)
    try:
        os.rename(root, os.path.join(old, "demo"))
    except FileNotFoundError:
        pass
    return old


def generate_demo_dataset(root, seed=0, num_train=60, num_val=300, num_unlabeled=300, num_select=0,
                          num_report=0, train_subsets=()):
    """
    Write the demo data set to ``root`` (atomically: built in a temp dir next to it, then
    renamed) and return ``root``. Layout::

        root/images/{train,val,unlabeled}/*.jpg
        root/annotations/instances_{train,val}.json     COCO instances, polygons
        root/annotations/image_info_unlabeled.json      image list only
        root/annotations/instances_unlabeled_groundtruth.json   its boxes: evaluation only
        root/detpre_demo.json                           the arguments; marks it complete

    and, when asked for, ``images/{select,report}/`` with ``annotations/instances_{select,report}.json``
    (``num_select`` / ``num_report`` images) and ``annotations/instances_train<N>.json`` for each N
    of ``train_subsets`` (`train`'s first N images; each N below ``num_train``). Those arguments are
    in the marker only when given, so a demo made without them has the marker it always had.

    If ``root`` already holds a demo made with the same arguments (e.g. another process won
    the race), it is kept; one of an older ``DEMO_VERSION`` is replaced by a new one made with
    these arguments; any other is an error.
    """
    params = {"version": DEMO_VERSION, "seed": int(seed), "num_train": int(num_train),
              "num_val": int(num_val), "num_unlabeled": int(num_unlabeled)}
    if num_select or num_report:
        params.update(num_select=int(num_select), num_report=int(num_report))
    subsets = sorted({int(n) for n in train_subsets})
    if any(not 0 < n < int(num_train) for n in subsets):
        raise ValueError(f"train_subsets {subsets}: each must be between 1 and num_train - 1 ({int(num_train) - 1})")
    if subsets:
        params["train_subsets"] = subsets
    root = os.path.abspath(os.path.expanduser(root))

    def existing(outdated_ok=False):
        found = read_demo_marker(root)
        if found is None:
            return False
        if outdated_ok and _outdated(found, params):
            return False
        if found != params:
            raise FileExistsError(
                f"{root} holds a demo data set made with {found}, not {params}; "
                "delete the directory or pass another root")
        return True

    outdated = _outdated(read_demo_marker(root), params)
    if existing(outdated_ok=True):
        return root
    if outdated:
        logging.getLogger(__name__).warning(
            "%s holds a demo data set made with %s; regenerating it with %s (images with the same seed "
            "and index are the same)", root, read_demo_marker(root), params)
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.tmp-", dir=parent)
    old = None
    try:
        os.makedirs(os.path.join(tmp, "annotations"))
        categories = [{"id": cid, "name": name, "supercategory": "shape"}
                      for cid, name in CATEGORIES]
        counts = (num_train, num_val, num_unlabeled, num_select, num_report)
        for code, (split, n) in enumerate(zip(DEMO_SPLITS + EXTRA_SPLITS, counts)):
            if split in DEMO_SPLITS or n:
                _generate_split(tmp, split, code, n, seed, categories)
        for n in subsets:
            _write_train_subset(tmp, n)
        _write_json(os.path.join(tmp, DEMO_MARKER), params)
        os.chmod(tmp, 0o755)  # mkdtemp made it private
        if outdated and read_demo_marker(root) == params:  # another process upgraded it meanwhile
            return root
        old = _move_aside(root, parent) if outdated else None
        try:
            os.rename(tmp, root)  # atomic; fails if root is a non-empty dir
        except OSError:
            if existing():  # another process finished first
                return root
            raise FileExistsError(
                f"{root} exists but is not a complete detpre demo data set "
                f"(no {DEMO_MARKER}); delete it and run again") from None
    finally:
        for leftover in (tmp, old):
            if leftover and os.path.isdir(leftover):
                shutil.rmtree(leftover, ignore_errors=True)
    return root
