"""
Teacher predictions -> COCO-format pseudo-label entries: score thresholds (one, or one per
class), boxes as [x, y, w, h], masks as polygons (so both streams share detectron2's polygon
mask format and every geometric augmentation transforms them exactly), written atomically.
"""
import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from detpre.utils.io import write_json_atomic

__all__ = ["resolve_thresholds", "mask_to_polygons", "instances_to_annotations",
           "categories_from_metadata", "write_compact_json"]


def resolve_thresholds(score_threshold, class_thresholds, num_classes):
    """Per-class score thresholds (contiguous class order) as a float array of ``num_classes``."""
    if class_thresholds:
        if len(class_thresholds) != num_classes:
            raise ValueError(f"{len(class_thresholds)} per-class thresholds given for "
                             f"{num_classes} classes: give one per class, in class order")
        out = np.asarray(class_thresholds, dtype=np.float64)
    else:
        out = np.full(num_classes, float(score_threshold))
    if not np.all((out >= 0) & (out <= 1)):
        raise ValueError(f"score thresholds must be in [0, 1], got {out.tolist()}")
    return out


def mask_to_polygons(mask):
    """Outer contours of a binary mask as flat [x0, y0, x1, y1, ...] lists (>= 3 points),
    through the boundary pixels' centers (continuous coordinates)."""
    mask = np.ascontiguousarray(np.asarray(mask, dtype=np.uint8))
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        c = c.reshape(-1, 2).astype(np.float64) + 0.5
        if len(c) >= 3:
            polys.append([round(float(v), 2) for v in c.reshape(-1)])
    return polys


def _box_polygon(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def instances_to_annotations(instances, thresholds, category_ids, with_masks=True):
    """
    COCO annotations (no ``id``/``image_id`` yet) of the predictions of one image whose score is
    >= the threshold of their class. ``category_ids[c]`` is the json id of contiguous class ``c``.
    A mask too small to give a polygon is replaced by its box, so every entry has one.
    """
    inst = instances.to("cpu")
    if len(inst) == 0:
        return []
    scores = inst.scores.numpy().astype(np.float64)
    classes = inst.pred_classes.numpy().astype(np.int64)
    boxes = inst.pred_boxes.tensor.numpy().astype(np.float64)
    masks = inst.pred_masks.numpy() if with_masks and inst.has("pred_masks") else None
    anns = []
    for i in np.nonzero(scores >= thresholds[classes])[0]:
        x0, y0, x1, y1 = (round(float(v), 2) for v in boxes[i])
        ann = {"category_id": int(category_ids[classes[i]]), "bbox": [x0, y0, round(x1 - x0, 2),
               round(y1 - y0, 2)], "score": float(scores[i]), "iscrowd": 0}
        ann["area"] = round(ann["bbox"][2] * ann["bbox"][3], 2)
        if masks is not None:
            polys = mask_to_polygons(masks[i])
            ann["segmentation"] = polys or _box_polygon(x0, y0, x1, y1)
            area = int(np.count_nonzero(masks[i]))
            ann["area"] = float(area) if area else ann["area"]
        anns.append(ann)
    return anns


def categories_from_metadata(dataset_names, num_classes):
    """COCO ``categories`` of the teacher's classes: names and json ids of its training data set
    (so ids round-trip through detectron2's contiguous mapping), else ids 1..K."""
    for name in dataset_names:
        meta = MetadataCatalog.get(name)
        if meta.get("thing_classes", None) is None and name in DatasetCatalog.list():
            DatasetCatalog.get(name)  # COCO-format loaders set the class metadata on load
        classes = meta.get("thing_classes", None)
        if classes and len(classes) == num_classes:
            id_map = meta.get("thing_dataset_id_to_contiguous_id", None)
            inv = {v: k for k, v in id_map.items()} if id_map else {i: i + 1 for i in range(num_classes)}
            return [{"id": int(inv[i]), "name": str(classes[i])} for i in range(num_classes)]
    return [{"id": i + 1, "name": f"class_{i}"} for i in range(num_classes)]


def write_compact_json(data, path):
    write_json_atomic(path, data, separators=(",", ":"))
