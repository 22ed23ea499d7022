"""
SpCL (Ge et al., NeurIPS 2020): an embedding network trained with the unified contrastive loss
against a hybrid memory of source class centroids and target instance features, whose target
labels the ``ClusterRefresh`` hook rebuilds every epoch by self-paced clustering.

Network: detectron2 ResNet (at ``backbone.bottom_up``, as in FPN detectors) -> ``in_feature`` ->
avg/GeM pooling -> BN neck -> L2-normalized feature. Training inputs carry ``image``,
``memory_index`` and ``domain`` (see ``ReIDMapper``); the loss is ``loss_spcl``. At inference
each output is ``{"feature": (D,) tensor}``, as the ``reid`` evaluator expects.
"""
import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from detpre.modeling.backbone import BottomUpContainer, PixelNormalizeMixin, build_bottom_up
from detpre.modeling.memory import HybridMemory
from detpre.modeling.reid_encoder import (
    BNNeck,
    build_pooling,
    convert_dsbn,
    dsbn_domain,
    dsbn_source_parameters,
    set_last_stride,
)

__all__ = ["SpCL"]


@META_ARCH_REGISTRY.register()
class SpCL(PixelNormalizeMixin, nn.Module):
    # what training needs besides this class (detpre.method): re-ID crops, the periodic clustering
    required_mapper = "ReIDMapper"
    required_hooks = ("ClusterRefresh",)
    config_groups = ("MODEL.SPCL", "INPUT.REID")

    @configurable
    def __init__(self, *, bottom_up, memory, pixel_mean, pixel_std, in_feature="res5",
                 pooling="avg", gem_p=3.0, dsbn=False, loss_per_domain=True, last_stride=2):
        """
        Args:
            bottom_up: a detectron2 ResNet whose ``in_feature`` output is pooled.
            memory: a ``HybridMemory`` of the feature dimension (buffers only, checkpointed).
            dsbn: domain-specific BN in the backbone and neck (source images use their own BN).
            loss_per_domain: with source and target images in the batch, the loss is
                loss_s + loss_t, each the mean over its domain's images (SpCL's UDA trainer);
                False: one mean over the batch.
            last_stride: stride of res5 (SpCL's ResNet: 1; detectron2's: 2).
        """
        super().__init__()
        set_last_stride(bottom_up, last_stride)
        self.backbone = BottomUpContainer(bottom_up)
        self.in_feature = in_feature
        dim = bottom_up.output_shape()[in_feature].channels
        if memory.features.shape[1] != dim:
            raise ValueError(f"memory dimension {memory.features.shape[1]} != feature dimension {dim}")
        self.pool = build_pooling(pooling, gem_p)
        self.neck = BNNeck(dim)
        self.memory = memory
        self.dsbn, self.loss_per_domain = dsbn, loss_per_domain
        if dsbn:
            convert_dsbn(self.backbone)
            convert_dsbn(self.neck)
        self.register_pixel_stats(pixel_mean, pixel_std)

    @classmethod
    def from_config(cls, cfg):
        from detpre.data.datasets.reid import reid_memory_layout

        c = cfg.MODEL.SPCL
        bottom_up = build_bottom_up(cfg, c.IN_FEATURE)  # outputs exactly IN_FEATURE
        shapes = bottom_up.output_shape()
        num_source, num_target = c.NUM_SOURCE_CLASSES, c.NUM_TARGET_INSTANCES
        if num_target <= 0:  # counted from the (registered) training data sets
            layout = reid_memory_layout(cfg.DATASETS.TRAIN, c.SOURCE_DATASETS)
            num_source, num_target = layout.num_source, layout.num_target
        memory = HybridMemory(shapes[c.IN_FEATURE].channels, num_source, num_target,
                              temperature=c.TEMPERATURE, momentum=c.MOMENTUM)
        return {
            "bottom_up": bottom_up, "memory": memory,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN, "pixel_std": cfg.MODEL.PIXEL_STD,
            "in_feature": c.IN_FEATURE, "pooling": c.POOLING, "gem_p": c.GEM_P, "dsbn": c.DSBN,
            "loss_per_domain": c.LOSS_PER_DOMAIN, "last_stride": c.LAST_STRIDE,
        }

    def preprocess(self, batched_inputs):
        return self.normalize(torch.stack([b["image"] for b in batched_inputs]))

    def encode(self, images, domain=1):
        """L2-normalized embeddings (B, D) of normalized ``images`` (B, C, H, W)."""
        if not self.dsbn:
            return self.neck(self.pool(self.backbone(images)[self.in_feature]))
        with dsbn_domain(self, domain):
            return self.neck(self.pool(self.backbone(images)[self.in_feature]))

    def forward(self, batched_inputs):
        images = self.preprocess(batched_inputs)
        if not self.training:
            domain = int(batched_inputs[0].get("domain", 1)) if batched_inputs else 1
            return [{"feature": f} for f in self.encode(images, domain)]
        indexes = torch.tensor([b["memory_index"] for b in batched_inputs], device=self.device)
        domains = torch.tensor([int(b.get("domain", 1)) for b in batched_inputs], device=self.device)
        groups = domains if self.loss_per_domain else None
        if not self.dsbn:
            feats = self.encode(images)
            return {"loss_spcl": self.memory(feats, indexes, groups)}
        # DSBN: each domain through its own BN; keep batch order for the memory update
        feats = images.new_zeros(len(batched_inputs), self.neck.bn.num_features)
        extra = 0.0
        for d in (0, 1):
            sel = domains == d
            if sel.any():
                feats = feats.index_copy(0, sel.nonzero()[:, 0], self.encode(images[sel], d))
            else:  # DDP needs a gradient for every parameter: the absent domain's BN get 0
                params = dsbn_source_parameters(self) if d == 0 else self._target_bn_parameters()
                extra = extra + sum(p.sum() for p in params) * 0.0
        return {"loss_spcl": self.memory(feats, indexes, groups) + extra}

    def _target_bn_parameters(self):
        src = {id(p) for p in dsbn_source_parameters(self)}
        return [p for m in self.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))
                for p in m.parameters(recurse=False) if p.requires_grad and id(p) not in src]
