"""
Up-front checks of the training data, before any step runs: images missing on disk (existence
only, one ``stat`` each) are dropped with a warning (an error past
``DATALOADER.MAX_BAD_IMAGE_FRACTION``), and boxes entirely outside their image, which
detectron2's mappers drop without a word, are warned about and counted. A training set that
ends up empty, or whose annotations are all unusable, is explained per data set: its file, how
many annotations and images were dropped and why (``unusable_annotations``).
"""
import logging
import os

from detectron2.data import MetadataCatalog
from detectron2.structures import BoxMode

from detpre.errors import DetpreError

__all__ = ["check_training_images", "boxes_outside", "unusable_annotations", "explain_unusable"]

logger = logging.getLogger(__name__)


def boxes_outside(record):
    """The annotation boxes (XYXY) of ``record`` that do not overlap its image at all."""
    h, w = record.get("height"), record.get("width")
    if not h or not w:
        return []
    out = []
    for ann in record.get("annotations", ()):
        if "bbox" not in ann:
            continue
        x0, y0, x1, y1 = BoxMode.convert(list(ann["bbox"]), ann.get("bbox_mode", BoxMode.XYWH_ABS),
                                         BoxMode.XYXY_ABS)
        if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h or x1 <= x0 or y1 <= y0:
            out.append([float(x0), float(y0), float(x1), float(y1)])
    return out


def unusable_annotations(dicts):
    """Counts of what detectron2's training drops from ``dicts``: ``images``, ``annotations``,
    ``crowd`` (iscrowd=1, never a training box), ``degenerate`` (zero width or height, removed by
    the mappers), ``usable`` (the rest), ``no_annotations`` and ``only_crowd`` images (dropped by
    ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``)."""
    n = dict(images=len(dicts), annotations=0, crowd=0, degenerate=0, usable=0, no_annotations=0,
             only_crowd=0)
    for d in dicts:
        anns = d.get("annotations") or []
        n["no_annotations"] += not anns
        crowd = 0
        for a in anns:
            n["annotations"] += 1
            if a.get("iscrowd", 0):
                crowd += 1
                continue
            x0, y0, x1, y1 = BoxMode.convert(list(a.get("bbox", (0, 0, 0, 0))),
                                             a.get("bbox_mode", BoxMode.XYWH_ABS), BoxMode.XYXY_ABS)
            ok = x1 - x0 > 1e-5 and y1 - y0 > 1e-5  # detectron2's Boxes.nonempty
            n["usable" if ok else "degenerate"] += 1
        n["crowd"] += crowd
        n["only_crowd"] += bool(anns) and crowd == len(anns)
    return n


def _source_of(name):
    meta = MetadataCatalog.get(name)
    for key, label in (("json_file", "COCO json"), ("dirname", "VOC folder"), ("image_root", "images in")):
        if meta.get(key, None):
            return f"{label} {meta.get(key)}"
    return "registered in code"


def explain_unusable(name, dicts):
    """One clause: ``name``, its file and what of it cannot train (``unusable_annotations``)."""
    if not dicts:
        return f"{name} ({_source_of(name)}): no images"
    n = unusable_annotations(dicts)
    return (f"{name} ({_source_of(name)}): {n['images']} image(s), {n['annotations']} annotation(s) of "
            f"which {n['crowd']} crowd (iscrowd=1) and {n['degenerate']} degenerate (zero width or height) "
            f"are dropped, {n['usable']} usable; {n['no_annotations']} image(s) without annotations and "
            f"{n['only_crowd']} with only crowd ones")


def check_training_images(dicts, max_bad_fraction, what="DATASETS.TRAIN"):
    """``dicts`` without the records whose image file is missing; warns about them and about
    boxes outside their image. Returns ``(kept dicts, {"missing": n, "boxes_outside": n})``."""
    missing = [d["file_name"] for d in dicts if "file_name" in d and not os.path.isfile(d["file_name"])]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        if len(missing) > max_bad_fraction * len(dicts):
            raise DetpreError(
                f"{len(missing)} of {len(dicts)} images of {what} are missing on disk ({shown}); "
                "check the data set's image root / paths, or raise DATALOADER.MAX_BAD_IMAGE_FRACTION")
        logger.warning("%d of %d images of %s are missing on disk and are skipped: %s",
                       len(missing), len(dicts), what, shown)
        gone = set(missing)
        dicts = [d for d in dicts if d.get("file_name") not in gone]
    n_out, example = 0, None
    for d in dicts:
        out = boxes_outside(d)
        if out and example is None:
            example = f"{d['file_name']}: {out[0]} in a {d['width']}x{d['height']} image"
        n_out += len(out)
    if n_out:
        logger.warning("%d box(es) of %s lie entirely outside their image and are ignored in "
                       "training (e.g. %s); check the annotations' bbox format and image sizes",
                       n_out, what, example)
    return dicts, {"missing": len(missing), "boxes_outside": n_out}
