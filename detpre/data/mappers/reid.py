"""
``ReIDMapper``: one re-ID image (or a detection box crop) at a fixed size, with SpCL's training
augmentation: resize, random horizontal flip, pad-and-random-crop, random erasing (and, off by
default, a random resized crop, rotation and per-channel colour cast, for object crops whose
cameras differ in scale, pose and colour). All randomness from
``np.random`` (detpre's loaders seed it per sample). Training dicts get their SpCL memory index.
"""
import copy
import math

import cv2
import numpy as np
import torch
from detectron2.config import configurable

from detpre.data.datasets.reid import reid_memory_layout
from detpre.data.image_io import read_image
from detpre.data.transforms.resized_crop import sample_crop
from detpre.registry import MAPPER_REGISTRY

__all__ = ["ReIDMapper", "random_erasing"]


def random_erasing(img, value, area=(0.02, 0.4), min_aspect=0.3, attempts=100):
    """Random Erasing (Zhong et al., AAAI 2020) in place on an HWC image: one rectangle of
    ``area`` fraction and aspect in [min_aspect, 1/min_aspect] filled with ``value``."""
    H, W = img.shape[:2]
    for _ in range(attempts):
        a = np.random.uniform(*area) * H * W
        r = np.random.uniform(min_aspect, 1.0 / min_aspect)
        h, w = int(round(math.sqrt(a * r))), int(round(math.sqrt(a / r)))
        if 0 < h < H and 0 < w < W:
            y, x = np.random.randint(0, H - h + 1), np.random.randint(0, W - w + 1)
            img[y:y + h, x:x + w] = value
            return img
    return img


@MAPPER_REGISTRY.register()
class ReIDMapper:
    """
    Dataset dict -> the dict plus ``"image"`` (uint8 CHW, ``image_format``, ``size``) and, in
    training, ``"memory_index"`` / ``"domain"`` (0 source, 1 target) from ``layout``.
    """

    @configurable
    def __init__(self, *, is_train, size, image_format="RGB", flip_prob=0.5, pad=10,
                 erasing_prob=0.5, erase_value=(0, 0, 0), crop_scale=(1.0, 1.0), rotation=0.0,
                 channel_gain=0.0, layout=None):
        self.rotation, self.channel_gain = float(rotation), float(channel_gain)
        self.is_train, self.size, self.image_format = is_train, tuple(size), image_format
        self.flip_prob, self.pad, self.erasing_prob = flip_prob, pad, erasing_prob
        self.erase_value = np.asarray(erase_value, dtype=np.float32)
        self.crop_scale, self.layout = tuple(crop_scale), layout

    @classmethod
    def from_config(cls, cfg, is_train=True):
        c = cfg.INPUT.REID
        layout = None
        if is_train:
            layout = reid_memory_layout(cfg.DATASETS.TRAIN, cfg.MODEL.SPCL.SOURCE_DATASETS)
        return {
            "is_train": is_train, "size": tuple(c.SIZE), "image_format": cfg.INPUT.FORMAT,
            "flip_prob": c.FLIP_PROB, "pad": c.PAD, "erasing_prob": c.ERASING_PROB,
            "erase_value": [min(max(v, 0), 255) for v in cfg.MODEL.PIXEL_MEAN],
            "crop_scale": tuple(c.CROP_SCALE), "rotation": c.ROTATION,
            "channel_gain": c.CHANNEL_GAIN, "layout": layout,
        }

    def _augment(self, img):
        H, W = self.size
        if self.crop_scale[0] < 1.0:
            x0, y0, x1, y1 = sample_crop(img.shape[0], img.shape[1], self.crop_scale)
            img = img[y0:y1, x0:x1]
        img = cv2.resize(img, (W, H), interpolation=cv2.INTER_LINEAR)
        if self.rotation > 0:
            angle = np.random.uniform(-self.rotation, self.rotation)
            M = cv2.getRotationMatrix2D((W / 2.0, H / 2.0), angle, 1.0)
            img = cv2.warpAffine(img, M, (W, H), borderMode=cv2.BORDER_REFLECT)
        if self.channel_gain > 0:  # per-channel colour cast, as a camera's
            gain = np.random.uniform(1 - self.channel_gain, 1 + self.channel_gain, 3)
            img = np.clip(img * gain, 0, 255).astype(np.uint8)
        if np.random.rand() < self.flip_prob:
            img = img[:, ::-1]
        if self.pad > 0:
            p = self.pad
            img = np.pad(img, ((p, p), (p, p), (0, 0)))
            y, x = np.random.randint(0, 2 * p + 1), np.random.randint(0, 2 * p + 1)
            img = img[y:y + H, x:x + W]
        img = np.ascontiguousarray(img)
        if np.random.rand() < self.erasing_prob:
            img = random_erasing(img, self.erase_value.astype(img.dtype))
        return img

    def __call__(self, dataset_dict):
        d = copy.deepcopy(dataset_dict)
        img = read_image(d["file_name"], format=self.image_format)
        if d.get("crop_box") is not None:
            x0, y0, x1, y1 = d["crop_box"]
            x0, y0 = max(int(math.floor(x0)), 0), max(int(math.floor(y0)), 0)
            x1, y1 = min(int(math.ceil(x1)), img.shape[1]), min(int(math.ceil(y1)), img.shape[0])
            if x1 <= x0 or y1 <= y0:
                raise ValueError(f"{d['file_name']}: crop_box {d['crop_box']} is outside the image")
            img = img[y0:y1, x0:x1]
        if self.is_train:
            img = self._augment(img)
            if self.layout is not None:
                d["memory_index"], d["domain"] = self.layout.index_of(d)
        else:
            img = cv2.resize(img, (self.size[1], self.size[0]), interpolation=cv2.INTER_LINEAR)
        d.pop("annotations", None)
        d["image"] = torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1)))
        return d
