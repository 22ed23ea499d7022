"""
SoCo (Wei et al., "Aligning Pretraining for Detection via Object-Level Contrastive Learning",
NeurIPS 2021) as a detectron2 meta-architecture.

Each proposal is an object: it is pooled with RoIAlign from the FPN level its size selects in
each view (detectron2's ``ROIPooler``: every box pooled once, on one level — SoCo's official
code pools every box on all four levels and masks the loss), encoded by the RoI box head,
projected and predicted (online) or projected (momentum target); BYOL's loss pulls V1's
prediction of a proposal towards the target projections of the same proposal in the other views,
and the other way round. A view with proposals of its own (``INPUT.SOCO.VIEWS`` "official", SoCo's
code) is paired with V1's boxes of those proposals (``"pair_boxes"``), pooled from the same V1
features.

Modules are named as in ``GeneralizedRCNN`` (``backbone.*``, ``roi_heads.box_head.*``), so a
checkpoint fills a Mask R-CNN's backbone, FPN and box head through ``MODEL.WEIGHTS`` after
``tools/convert_pretrained.py`` drops the projector, predictor and ``target.*``.
"""
import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import build_box_head
from detectron2.structures import Boxes, ImageList
from torch import nn

from detpre.method import DemoEntry
from detpre.modeling.backbone import PixelNormalizeMixin
from detpre.modeling.heads import MLP
from detpre.modeling.losses.byol import byol_loss
from detpre.modeling.momentum import MomentumTarget

__all__ = ["SoCo", "ObjectHead"]


class ObjectHead(nn.Module):
    """``roi_heads`` of a detector reduced to what SoCo trains: the scale-aware pooler (no
    parameters) and the box head, under GeneralizedRCNN's names."""

    def __init__(self, box_pooler, box_head):
        super().__init__()
        self.box_pooler = box_pooler
        self.box_head = box_head


@META_ARCH_REGISTRY.register()
class SoCo(PixelNormalizeMixin, nn.Module):
    # what training needs besides this class (detpre.method): the views, the EMA target update
    required_mapper = "SoCoMapper"
    required_hooks = ("MomentumUpdate",)
    config_groups = ("MODEL.SOCO", "INPUT.SOCO", "MODEL.EMA")
    prerequisites = ("proposals",)  # selective search on its training images
    # the demo's Mask R-CNN takes its ResNet + FPN but not its 4conv1fc box head: after minutes of
    # pretraining that head is a worse start than a random one (docs/results.md)
    demo = {"soco": DemoEntry("configs/demo/soco_R18_FPN_tiny.yaml", 1.2, detector="backbone_fpn")}

    @configurable
    def __init__(self, *, backbone, box_pooler, box_head, projector, predictor, in_features,
                 pixel_mean, pixel_std, loss_reduction="mean"):
        """
        Args:
            backbone: a detectron2 FPN backbone whose ``in_features`` outputs are pooled.
            box_pooler: a ``ROIPooler`` over ``in_features`` (its level rule is SoCo's ranges).
            box_head: RoI box head (SoCo: 4conv1fc), ``output_shape.channels`` = its feature size.
            projector / predictor: MLPs (box feature -> d, d -> d).
            loss_reduction: "mean" over matched proposals (official code) or "sum" over K.
        """
        super().__init__()
        self.backbone = backbone
        self.roi_heads = ObjectHead(box_pooler, box_head)
        self.projector, self.predictor = projector, predictor
        self.in_features = tuple(in_features)
        self.loss_reduction = loss_reduction
        self.target = MomentumTarget(self, ["backbone", "roi_heads.box_head", "projector"])
        self.register_pixel_stats(pixel_mean, pixel_std)

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.SOCO
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        missing = [f for f in c.IN_FEATURES if f not in shapes]
        if missing:
            raise ValueError(f"MODEL.SOCO.IN_FEATURES {missing} are not outputs of the backbone "
                             f"({sorted(shapes)}); SoCo needs an FPN backbone (p2-p5).")
        channels = {shapes[f].channels for f in c.IN_FEATURES}
        if len(channels) != 1:
            raise ValueError(f"MODEL.SOCO.IN_FEATURES {list(c.IN_FEATURES)} have different channels")
        res = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        pooler = ROIPooler(
            output_size=res,
            scales=tuple(1.0 / shapes[f].stride for f in c.IN_FEATURES),
            sampling_ratio=cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
            pooler_type=cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE,
            canonical_box_size=c.CANONICAL_BOX_SIZE,
            canonical_level=c.CANONICAL_LEVEL,
        )
        box_head = build_box_head(cfg, ShapeSpec(channels=channels.pop(), height=res, width=res))
        dim = box_head.output_shape.channels
        return {
            "backbone": backbone,
            "box_pooler": pooler,
            "box_head": box_head,
            "projector": MLP(dim, c.HIDDEN_DIM, c.PROJ_DIM, 2, c.HEAD_NORM),
            "predictor": MLP(c.PROJ_DIM, c.HIDDEN_DIM, c.PROJ_DIM, 2, c.HEAD_NORM),
            "in_features": c.IN_FEATURES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "loss_reduction": c.LOSS_REDUCTION,
        }

    def box_features(self, x, boxes, backbone=None, box_head=None):
        """Box-head features (sum over images of K_i, D) of ``boxes`` (list of Boxes) in ``x``."""
        backbone = self.backbone if backbone is None else backbone
        return self.pooled_features(backbone(x), boxes, box_head)

    def pooled_features(self, features, boxes, box_head=None):
        """Box-head features of ``boxes`` pooled from backbone ``features`` (a dict)."""
        box_head = self.roi_heads.box_head if box_head is None else box_head
        return box_head(self.roi_heads.box_pooler([features[f] for f in self.in_features], boxes))

    def online(self, x, boxes):
        return self.predictor(self.projector(self.box_features(x, boxes)))

    @torch.no_grad()
    def momentum_target(self, x, boxes):
        t = self.target
        return t.projector(self.box_features(x, boxes, t.backbone, t.roi_heads.box_head))

    def preprocess(self, batched_inputs, v):
        """View ``v`` of every image, normalized and zero-padded at the bottom/right to the FPN's
        size divisibility (SoCo's 112 px V3 -> 128, as GeneralizedRCNN pads; boxes are unchanged);
        and its boxes as a list of Boxes."""
        images = [self.normalize(d["views"][v]) for d in batched_inputs]
        x = ImageList.from_tensors(images, self.backbone.size_divisibility).tensor
        boxes = [Boxes(torch.as_tensor(d["view_boxes"][v], dtype=torch.float32).to(self.device))
                 for d in batched_inputs]
        return x, boxes

    def loss(self, preds, targets, pair_preds=None, pair_targets=None):
        """Symmetrized BYOL loss between V1 and each other view: ``preds``/``targets`` are lists
        (one per view) of (B, K, d); ``pair_preds``/``pair_targets``: {view: V1's (B, K, d) of
        that view's own proposals}, used instead of V1's ``preds[0]``/``targets[0]`` there."""
        total = 0.0
        r = self.loss_reduction
        for v in range(1, len(preds)):
            p1 = (pair_preds or {}).get(v, preds[0])
            t1 = (pair_targets or {}).get(v, targets[0])
            total = total + byol_loss(p1, targets[v], r) + byol_loss(preds[v], t1, r)
        return total

    def forward(self, batched_inputs):
        """
        Training: ``{"loss_soco"}`` from ``SoCoMapper`` dicts (``"views"``: V1, V2, V3[, V4] as
        CHW tensors; ``"view_boxes"``: one (K, 4) array per view, the same K proposals in
        the same order; optional ``"pair_boxes"``: {view: V1's (K, 4) boxes of that view's own
        proposals}). Inference: ``[{"box_features": (K, D)}]`` of V1's proposals.
        """
        B = len(batched_inputs)
        K = len(batched_inputs[0]["view_boxes"][0])
        if K == 0:
            raise ValueError("SoCo needs at least one proposal per image and view "
                             "(INPUT.SOCO.NUM_PROPOSALS >= 1)")
        if any(len(b) != K for d in batched_inputs
               for b in list(d["view_boxes"]) + list(d.get("pair_boxes", {}).values())):
            raise ValueError("SoCo needs the same number of proposals in every view and image "
                             "(INPUT.SOCO.NUM_PROPOSALS)")
        if not self.training:
            x, boxes = self.preprocess(batched_inputs, 0)
            return [{"box_features": f} for f in self.box_features(x, boxes).split(K)]
        num_views = len(batched_inputs[0]["views"])
        if num_views < 2:
            raise ValueError(f"SoCo needs at least 2 views per image, got {num_views}")
        pair_views = sorted(batched_inputs[0].get("pair_boxes", {}))
        if any(sorted(d.get("pair_boxes", {})) != pair_views for d in batched_inputs):
            raise ValueError("SoCo needs the same views with proposals of their own in every image")
        preds, targets, pair_preds, pair_targets = [], [], {}, {}
        t = self.target
        for v in range(num_views):
            x, boxes = self.preprocess(batched_inputs, v)
            features = self.backbone(x)
            with torch.no_grad():
                target_features = t.backbone(x)
            box_sets = [(None, boxes)]
            if v == 0:  # V1's boxes of the views with proposals of their own
                box_sets += [(u, [Boxes(torch.as_tensor(d["pair_boxes"][u], dtype=torch.float32).to(self.device))
                                  for d in batched_inputs]) for u in pair_views]
            for u, b in box_sets:
                p = self.predictor(self.projector(self.pooled_features(features, b))).view(B, K, -1)
                with torch.no_grad():
                    z = t.projector(self.pooled_features(target_features, b, t.roi_heads.box_head)).view(B, K, -1)
                if u is None:
                    preds.append(p)
                    targets.append(z)
                else:
                    pair_preds[u], pair_targets[u] = p, z
        return {"loss_soco": self.loss(preds, targets, pair_preds, pair_targets)}
