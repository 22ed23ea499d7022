"""PNGs of images with their pseudo-labels (boxes, masks, class and score) for a quick look."""
import json
import os

import cv2
import numpy as np
from detectron2.utils.visualizer import Visualizer

from detpre.utils.io import write_bytes_atomic

__all__ = ["draw_pseudo_labels", "visualize_pseudo_labels"]


def draw_pseudo_labels(image_rgb, anns, class_names, min_score=0.0):
    """``image_rgb`` (HxWx3 uint8) with ``anns`` (COCO dicts with score) drawn; returns RGB."""
    vis = Visualizer(image_rgb)
    anns = [a for a in anns if a.get("score", 1.0) >= min_score]
    if not anns:
        return vis.output.get_image()
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
    labels = [f"{class_names.get(a['category_id'], a['category_id'])} {a.get('score', 1.0):.2f}" for a in anns]
    masks = [a["segmentation"] for a in anns] if all("segmentation" in a for a in anns) else None
    return vis.overlay_instances(boxes=boxes, labels=labels, masks=masks).get_image()


def _write_png(path, image_rgb):
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image_rgb[:, :, ::-1]))
    if not ok:
        raise RuntimeError(f"cannot encode {path}")
    write_bytes_atomic(path, buf.tobytes())


def visualize_pseudo_labels(json_file, output_dir, image_root=None, num_images=20, min_score=0.0,
                            only_labeled=False):
    """Draw the first ``num_images`` images of a pseudo-label json into ``output_dir``; returns paths."""
    with open(json_file) as f:
        data = json.load(f)
    image_root = image_root or data.get("info", {}).get("image_root")
    if not image_root:
        raise ValueError(f"{json_file} has no info.image_root: pass --image-root")
    names = {c["id"]: c["name"] for c in data["categories"]}
    by_image = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for img in data["images"]:
        if len(written) >= num_images:
            break
        anns = by_image.get(img["id"], [])
        if only_labeled and not anns:
            continue
        path = os.path.join(image_root, img["file_name"])
        bgr = cv2.imread(path)
        if bgr is None:
            raise FileNotFoundError(f"{json_file}: image {path} cannot be read; fix --image-root")
        out = os.path.join(output_dir, os.path.splitext(img["file_name"].replace("/", "__"))[0] + ".png")
        _write_png(out, draw_pseudo_labels(bgr[:, :, ::-1], anns, names, min_score))
        written.append(out)
    return written
