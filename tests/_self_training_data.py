"""Tiny images, a COCO json of them and a tiny random-init detector config, for the self-training tests."""
import json
import os

import cv2
import numpy as np

from detpre.config import get_detpre_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_cfg(meta="GeneralizedRCNN", mask=True):
    cfg = get_detpre_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs/demo/mask_rcnn_R18_FPN_tiny.yaml"))
    cfg.MODEL.META_ARCHITECTURE, cfg.MODEL.MASK_ON = meta, mask and meta == "GeneralizedRCNN"
    cfg.MODEL.RETINANET.NUM_CLASSES = 3
    if meta == "RetinaNet":
        cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
        cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64], [128]]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST, cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 32, 32
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 96
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (64,), 96
    cfg.INPUT.SELF_TRAINING.IMAGE_SIZE = 64
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (), ()
    cfg.SEED = 0
    return cfg


def write_images(folder, n, seed=0):
    """``n`` 64x80 images with 1-2 bright rectangles; returns their dataset dicts and boxes."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    dicts = []
    for i in range(n):
        img = rng.randint(0, 60, (64 + 8 * (i % 2), 80, 3)).astype(np.uint8)
        boxes = []
        for _ in range(1 + i % 2):
            x0, y0 = rng.randint(0, 40), rng.randint(0, 30)
            x1, y1 = x0 + rng.randint(12, 36), y0 + rng.randint(12, 30)
            img[y0:y1, x0:x1] = rng.randint(150, 255, 3)
            boxes.append([int(x0), int(y0), int(x1), int(y1)])
        path = os.path.join(folder, f"img_{i:03d}.png")
        cv2.imwrite(path, img)
        dicts.append({"file_name": path, "image_id": f"img_{i:03d}.png", "boxes": boxes,
                      "height": img.shape[0], "width": img.shape[1]})
    return dicts


def write_coco(path, dicts, num_classes=3):
    images, anns = [], []
    for i, d in enumerate(dicts):
        images.append({"id": i + 1, "file_name": os.path.basename(d["file_name"]),
                       "height": d["height"], "width": d["width"]})
        for k, (x0, y0, x1, y1) in enumerate(d["boxes"]):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1 + (i + k) % num_classes,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                         "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]})
    cats = [{"id": c + 1, "name": f"c{c}"} for c in range(num_classes)]
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    return path
