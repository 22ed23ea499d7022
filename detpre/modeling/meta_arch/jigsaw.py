"""
``JigsawPretrain``: montage pre-training of a ResNet ("Cheaper Pre-training Lunch", ECCV 2020).

The ResNet's last feature map goes through a 1x1 conv classifier (classes + background) at
every location. Mode "erf" (the paper's): the target of location (j, k) is Σᵢ wᵢ yᵢ over the
montage's four regions, wᵢ = share of region i in (j, k)'s effective receptive field on the
current model (``detpre.modeling.erf``), floored at ``tau`` for the region holding (j, k);
soft-label cross-entropy is averaged within each region's locations, then over regions, so a
small cell weighs as much as a large one. Baselines: "block" (features pooled per region,
hard labels) and "global" (global pooling, area-weighted label).

The ResNet sits at ``backbone.bottom_up`` so its weights load into detectron2's FPN detectors
unchanged. The ERF is measured at the first training step and whenever ``request_erf_refresh``
was called (by the ``ERFRefresh`` hook, every MODEL.JIGSAW.ERF_PERIOD iterations).
"""
import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch import nn

from detpre.method import DemoEntry
from detpre.modeling.backbone import BottomUpContainer, PixelNormalizeMixin, build_bottom_up
from detpre.modeling.erf import (
    ERFTable,
    effective_receptive_field,
    grid_centres,
    location_regions,
    soft_labels,
)
from detpre.modeling.losses.soft_label_ce import soft_label_cross_entropy

__all__ = ["JigsawPretrain"]

MODES = ("erf", "block", "global")


@META_ARCH_REGISTRY.register()
class JigsawPretrain(PixelNormalizeMixin, nn.Module):
    # what training needs besides this class (detpre.method): montages, and in "erf" mode the
    # periodic ERF re-measurement
    required_mapper = "JigsawMapper"
    config_groups = ("MODEL.JIGSAW", "INPUT.JIGSAW")
    prerequisites = ("jigsaw_samples",)  # the objects, cut out once (the trainer does it if missing)
    trains_on_labels = True  # objects cut out by their annotated boxes
    demo = {"jigsaw": DemoEntry("configs/demo/jigsaw_R18_tiny.yaml", 0.3)}

    @classmethod
    def required_hooks(cls, cfg):
        return ("ERFRefresh",) if cfg.MODEL.JIGSAW.MODE == "erf" else ()

    @configurable
    def __init__(self, *, backbone, in_feature, num_classes, montage_size, pixel_mean, pixel_std,
                 mode="erf", tau=0.5, erf_batch=8):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"MODEL.JIGSAW.MODE={mode!r}: use one of {MODES}")
        shape = backbone.output_shape()
        if in_feature not in shape:
            raise ValueError(f"MODEL.JIGSAW.IN_FEATURE={in_feature!r} is not a backbone output "
                             f"({sorted(shape)})")
        self.backbone, self.in_feature = backbone, in_feature
        self.stride = shape[in_feature].stride
        if montage_size % self.stride:
            raise ValueError(f"INPUT.JIGSAW.SIZE={montage_size} must be a multiple of the "
                             f"{in_feature} stride {self.stride}")
        self.num_classes, self.montage_size = num_classes, montage_size
        self.mode, self.tau, self.erf_batch = mode, float(tau), int(erf_batch)
        self.classifier = nn.Conv2d(shape[in_feature].channels, num_classes + 1, kernel_size=1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)
        # the canvas is twice the montage so the reference ERF covers every translation needed
        self.erf = ERFTable(2 * montage_size, self.stride)
        self._refresh_requested = False
        self.register_pixel_stats(pixel_mean, pixel_std)

    @classmethod
    def from_config(cls, cfg):
        bottom_up = build_bottom_up(cfg, cfg.MODEL.JIGSAW.IN_FEATURE)
        return {
            "backbone": BottomUpContainer(bottom_up),
            "in_feature": cfg.MODEL.JIGSAW.IN_FEATURE,
            "num_classes": cfg.MODEL.JIGSAW.NUM_CLASSES,
            "montage_size": cfg.INPUT.JIGSAW.SIZE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "mode": cfg.MODEL.JIGSAW.MODE,
            "tau": cfg.MODEL.JIGSAW.TAU,
            "erf_batch": cfg.MODEL.JIGSAW.ERF_BATCH,
        }

    def request_erf_refresh(self):
        """Re-measure the ERF at the next training step (on that step's montages)."""
        self._refresh_requested = True

    def features(self, images):
        return self.backbone(images)[self.in_feature]

    @torch.no_grad()
    def refresh_erf(self, images):
        """
        Measure the reference ERF on the current model: a 2 x 2 tiling of real montages (a
        canvas with image content everywhere), the backbone in eval mode so BatchNorm neither
        couples the batch nor updates its statistics; averaged over processes.
        """
        x = images[: self.erf_batch]
        canvas = torch.cat([torch.cat([x, x.roll(1, 0)], dim=3),
                            torch.cat([x.roll(2, 0), x.roll(3, 0)], dim=3)], dim=2)
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            erf, index = effective_receptive_field(self.features, canvas)
        finally:
            self.backbone.train(was_training)
        if comm.get_world_size() > 1:
            erf = erf.to(self.device)
            torch.distributed.all_reduce(erf)
            erf = erf / comm.get_world_size()
        self.erf.set_erf(erf.cpu(), index)
        self._refresh_requested = False

    def preprocess(self, batched_inputs):
        images = [x["image"].to(self.device) for x in batched_inputs]
        sizes = {tuple(im.shape[-2:]) for im in images}
        if sizes != {(self.montage_size, self.montage_size)}:
            raise ValueError(f"montages of sizes {sizes}; expected INPUT.JIGSAW.SIZE="
                             f"{self.montage_size} (use DATALOADER.MAPPER JigsawMapper)")
        return self.normalize(torch.stack(images))

    def forward(self, batched_inputs):
        images = self.preprocess(batched_inputs)
        if self.training and self.mode == "erf" and (self._refresh_requested or not self.erf.ready):
            self.refresh_erf(images)
        logits = self.classifier(self.features(images))
        if not self.training:
            return [{"jigsaw_logits": z} for z in logits]
        regions = torch.stack([x["jigsaw_regions"] for x in batched_inputs]).cpu()
        labels = torch.stack([x["jigsaw_labels"] for x in batched_inputs]).to(self.device)
        loss, acc = getattr(self, f"_loss_{self.mode}")(logits, regions, labels)
        try:
            get_event_storage().put_scalar("jigsaw/accuracy", acc)
        except AssertionError:  # no EventStorage outside a trainer
            pass
        return {"loss_jigsaw": loss}

    def _members(self, regions, logits):
        """
        B x R x h x w float mask of the locations whose centre lies in each region: the ERF
        centre in "erf" mode (consistent with the floor), the stride block's centre otherwise.
        """
        h, w = logits.shape[-2:]
        if self.mode == "erf":
            centres = self.erf.location_centres((h, w), (self.montage_size,) * 2)
        else:
            centres = grid_centres(h, self.stride), grid_centres(w, self.stride)
        own = location_regions(regions, *centres).to(self.device)
        r = regions.shape[1]
        return (own[:, None] == torch.arange(r, device=self.device)[None, :, None, None]).float()

    def _loss_erf(self, logits, regions, labels):
        weights = self.erf.location_weights(regions, logits.shape[-2:],
                                            (self.montage_size,) * 2, self.tau)
        targets = soft_labels(weights.to(self.device).float(), labels, self.num_classes + 1)
        per_loc = soft_label_cross_entropy(logits.permute(0, 2, 3, 1), targets)  # B x h x w
        members = self._members(regions, logits)
        count = members.sum((2, 3))  # B x R
        per_region = (members * per_loc[:, None]).sum((2, 3)) / count.clamp_min(1)
        present = (count > 0).float()
        loss = ((per_region * present).sum(1) / present.sum(1).clamp_min(1)).mean()
        hard = (logits.argmax(1)[:, None] == labels[:, :, None, None]).float()
        acc = ((members * hard).sum() / members.sum().clamp_min(1)).item()
        return loss, acc

    def _loss_block(self, logits, regions, labels):
        members = self._members(regions, logits)
        count = members.sum((2, 3))
        # the classifier is linear: pooling its logits = classifying the pooled features
        pooled = torch.einsum("brhw,bchw->brc", members, logits) / count.clamp_min(1)[..., None]
        present = count > 0
        loss = nn.functional.cross_entropy(pooled[present], labels[present])
        acc = (pooled.argmax(-1) == labels)[present].float().mean().item()
        return loss, acc

    def _loss_global(self, logits, regions, labels):
        area = ((regions[:, :, 2] - regions[:, :, 0]) * (regions[:, :, 3] - regions[:, :, 1]))
        weights = (area / area.sum(1, keepdim=True)).to(self.device)
        targets = torch.einsum("br,brc->bc", weights,
                               nn.functional.one_hot(labels, self.num_classes + 1).float())
        pooled = logits.mean((2, 3))
        loss = soft_label_cross_entropy(pooled, targets).mean()
        acc = (pooled.argmax(-1) == targets.argmax(-1)).float().mean().item()
        return loss, acc
