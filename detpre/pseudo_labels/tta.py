"""
Test-time augmentation for better pseudo-labels: horizontal flip x several shortest-edge sizes.
R-CNNs use detectron2's ``GeneralizedRCNNWithTTA`` (boxes merged by NMS, masks averaged); other
detectors (RetinaNet) get ``BoxTTA``: the same views, boxes mapped back and merged by class-wise NMS.
"""
import copy

import torch
from detectron2.data import transforms as T
from detectron2.layers import batched_nms
from detectron2.modeling import GeneralizedRCNN, GeneralizedRCNNWithTTA
from detectron2.structures import Boxes, Instances
from torch import nn

__all__ = ["BoxTTA", "build_tta_model"]


class BoxTTA(nn.Module):
    """Views of each (un-resized) input at ``min_sizes`` x {no flip, flip}; predictions merged."""

    def __init__(self, model, min_sizes, max_size, flip=True, nms_thresh=0.5, max_dets=100):
        super().__init__()
        self.model = model
        self.min_sizes, self.max_size, self.flip = tuple(min_sizes), max_size, flip
        self.nms_thresh, self.max_dets = nms_thresh, max_dets

    def _views(self, inp):
        img = inp["image"].permute(1, 2, 0).numpy()
        for s in self.min_sizes:
            resized = T.ResizeShortestEdge(s, self.max_size).get_transform(img).apply_image(img)
            for flip in (False, True) if self.flip else (False,):
                arr = resized[:, ::-1] if flip else resized
                view = {k: v for k, v in inp.items() if k != "image"}
                view["image"] = torch.as_tensor(arr.copy()).permute(2, 0, 1)
                yield flip, view

    def forward(self, batched_inputs):
        outs = []
        for inp in batched_inputs:
            flips, views = zip(*self._views(inp))
            h, w = inp["height"], inp["width"]
            boxes, scores, classes = [], [], []
            for flip, out in zip(flips, self.model(list(views))):
                inst = out["instances"].to("cpu")
                b = inst.pred_boxes.tensor.clone()
                if flip:
                    b[:, [0, 2]] = w - b[:, [2, 0]]
                boxes.append(b), scores.append(inst.scores), classes.append(inst.pred_classes)
            b, s, c = torch.cat(boxes), torch.cat(scores), torch.cat(classes)
            keep = batched_nms(b, s, c, self.nms_thresh)[: self.max_dets]
            merged = Instances((h, w))
            merged.pred_boxes, merged.scores, merged.pred_classes = Boxes(b[keep]), s[keep], c[keep]
            outs.append({"instances": merged})
        return outs


def build_tta_model(cfg, model, min_sizes, max_size, flip=True):
    """The TTA wrapper of ``model`` (inputs must be the original, un-resized images)."""
    if isinstance(model, GeneralizedRCNN):
        cfg = copy.deepcopy(cfg)
        cfg.defrost()
        cfg.TEST.AUG.MIN_SIZES, cfg.TEST.AUG.MAX_SIZE, cfg.TEST.AUG.FLIP = tuple(min_sizes), max_size, flip
        return GeneralizedRCNNWithTTA(cfg, model)
    return BoxTTA(model, min_sizes, max_size, flip, max_dets=cfg.TEST.DETECTIONS_PER_IMAGE)
