"""
Fast-MoCo (Ci et al., ECCV 2022) and, with ``combine="off"``, MoCo v3 (Chen et al., ICCV 2021).

Online branch: divide each view into m x m patches -> encode every patch with the backbone
(global-pooled ``in_feature``) -> combine every n-subset of a view's patch embeddings ->
projector -> predictor. Target branch: momentum backbone + projector on the whole other view.
Each combination is a query against the global batch's keys (MoCo v3's InfoNCE), so one
backbone pass yields C(m*m, n) positive pairs per view at about MoCo v3's cost.
"""
import itertools

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from detpre.method import DemoEntry
from detpre.modeling.backbone import BottomUpContainer, PixelNormalizeMixin, build_bottom_up
from detpre.modeling.heads import MLP
from detpre.modeling.losses.infonce import infonce_loss
from detpre.modeling.momentum import MomentumTarget

__all__ = ["FastMoCo", "COMBINE_MODES"]

COMBINE_MODES = ("mean", "weighted", "max", "off")


@META_ARCH_REGISTRY.register()
class FastMoCo(PixelNormalizeMixin, nn.Module):
    # what training needs besides this class (detpre.method): two views, the EMA target update
    required_mapper = "TwoViewMapper"
    required_hooks = ("MomentumUpdate",)
    config_groups = ("MODEL.FASTMOCO", "INPUT.TWO_VIEW", "MODEL.EMA")
    demo = {"fastmoco": DemoEntry("configs/demo/fastmoco_R18_tiny.yaml", 1.7),
            "mocov3": DemoEntry("configs/demo/mocov3_R18_tiny.yaml", 1.5)}

    @configurable
    def __init__(self, *, bottom_up, projector, predictor, pixel_mean, pixel_std, in_feature="res5",
                 combine="mean", num_splits=2, combine_size=2, target_view="other", temperature=1.0,
                 gather_keys=True, loss_scale=0.0, pred_constant_lr=False, target_bottom_up=None,
                 target_projector=None):
        """
        Args:
            bottom_up: a detectron2 ResNet (Backbone) whose ``in_feature`` output is pooled.
            projector / predictor: MLPs (embedding -> d, d -> d).
            combine: "mean" | "weighted" (random convex weights) | "max" | "off" (MoCo v3:
                whole views, no division).
            num_splits: m (m x m patches per view). combine_size: n (patches per combination).
            target_view: "other" (queries of view 1 vs keys of view 2, symmetrized) or "same".
            loss_scale: s in ``s * (ctr_1 + ctr_2) / 2``, each ctr the InfoNCE averaged over
                combinations; 0 = each method's official value: 1 for Fast-MoCo (its code),
                ``4 * tau`` for MoCo v3 (``combine="off"``: 2 tau per direction, summed).
            pred_constant_lr: the predictor's LR stays constant (``fixed_lr_parameters``).
            target_bottom_up / target_projector: the momentum target's own, independently
                initialized modules (Fast-MoCo's code); None: copies of the online ones.
        """
        super().__init__()
        if combine not in COMBINE_MODES:
            raise ValueError(f"MODEL.FASTMOCO.COMBINE={combine!r}: use one of {COMBINE_MODES}")
        if target_view not in ("other", "same"):
            raise ValueError(f"MODEL.FASTMOCO.TARGET_VIEW={target_view!r}: use 'other' or 'same'")
        if combine == "off":
            num_splits, combine_size = 1, 1
        if num_splits < 1 or not 1 <= combine_size <= num_splits ** 2:
            raise ValueError(
                f"MODEL.FASTMOCO: COMBINE_SIZE={combine_size} must be in 1..NUM_SPLITS**2 "
                f"({num_splits}**2) and NUM_SPLITS >= 1")
        self.backbone = BottomUpContainer(bottom_up)
        self.projector, self.predictor = projector, predictor
        if (target_bottom_up is None) != (target_projector is None):
            raise ValueError("FastMoCo: give both target_bottom_up and target_projector, or neither")
        fresh = None if target_bottom_up is None else {
            "backbone": BottomUpContainer(target_bottom_up), "projector": target_projector}
        self.target = MomentumTarget(self, ["backbone", "projector"], fresh=fresh)
        self.pred_constant_lr = bool(pred_constant_lr)
        self.in_feature, self.combine_mode = in_feature, combine
        self.num_splits, self.target_view = num_splits, target_view
        self.temperature, self.gather_keys = temperature, gather_keys
        if loss_scale < 0:
            raise ValueError(f"MODEL.FASTMOCO.LOSS_SCALE={loss_scale}: must be >= 0 (0 = official)")
        if loss_scale == 0:
            loss_scale = 4.0 * temperature if combine == "off" else 1.0
        self.loss_scale = float(loss_scale)
        combos = list(itertools.combinations(range(num_splits ** 2), combine_size))
        self.register_buffer("combinations", torch.tensor(combos, dtype=torch.long), persistent=False)
        self.register_pixel_stats(pixel_mean, pixel_std)

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.FASTMOCO
        if c.TARGET_INIT not in ("copy", "random"):
            raise ValueError(f"MODEL.FASTMOCO.TARGET_INIT={c.TARGET_INIT!r}: use 'copy' or 'random'")
        bottom_up = build_bottom_up(cfg, c.IN_FEATURE)  # outputs exactly IN_FEATURE
        dim = bottom_up.output_shape()[c.IN_FEATURE].channels

        def projector():
            return MLP(dim, c.HIDDEN_DIM, c.PROJ_DIM, c.PROJ_LAYERS, c.HEAD_NORM,
                       last_norm=True, last_affine=c.PROJ_LAST_AFFINE)

        ret = {
            "bottom_up": bottom_up,
            "projector": projector(),
            "predictor": MLP(c.PROJ_DIM, c.PRED_HIDDEN_DIM or c.HIDDEN_DIM, c.PROJ_DIM,
                             c.PRED_LAYERS, c.HEAD_NORM, last_bias=c.PRED_LAST_BIAS),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "in_feature": c.IN_FEATURE,
            "combine": c.COMBINE,
            "num_splits": c.NUM_SPLITS,
            "combine_size": c.COMBINE_SIZE,
            "target_view": c.TARGET_VIEW,
            "temperature": c.TEMPERATURE,
            "gather_keys": c.GATHER_KEYS,
            "loss_scale": c.LOSS_SCALE,
            "pred_constant_lr": c.PRED_CONSTANT_LR,
        }
        if c.TARGET_INIT == "random":  # built after the online parts: their init is as with "copy"
            ret["target_bottom_up"] = build_bottom_up(cfg, c.IN_FEATURE)
            ret["target_projector"] = projector()
        return ret

    def fixed_lr_parameters(self):
        """Parameters whose LR does not follow the schedule (detpre.solver): Fast-MoCo's predictor."""
        return list(self.predictor.parameters()) if self.pred_constant_lr else []

    # ---- the three steps of the online branch ----
    def divide(self, x):
        """(B, C, H, W) -> (B * m * m, C, H // m, W // m); patch p of image b is row b*m*m + p,
        patches in row-major order (p = i * m + j). Remainder rows/columns are dropped."""
        m = self.num_splits
        if m == 1:
            return x
        B, C, H, W = x.shape
        h, w = H // m, W // m
        if h == 0 or w == 0:
            raise ValueError(f"a {H}x{W} view cannot be divided into {m}x{m} patches")
        x = x[:, :, : h * m, : w * m].reshape(B, C, m, h, m, w)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(B * m * m, C, h, w)

    def embed(self, x, backbone=None):
        """Global-average-pooled ``in_feature`` of ``backbone`` (default the online one): (N, D)."""
        backbone = self.backbone if backbone is None else backbone
        return backbone(x)[self.in_feature].mean(dim=(2, 3))

    def combine(self, emb):
        """(B, P, D) patch embeddings -> (B, C, D), combination c over patches ``combinations[c]``."""
        parts = emb[:, self.combinations]  # (B, C, n, D)
        if self.combine_mode == "max":
            return parts.amax(dim=2)
        if self.combine_mode == "weighted":
            w = torch.rand(parts.shape[:3], device=emb.device, dtype=emb.dtype)
            w = w / w.sum(dim=2, keepdim=True)
            return (parts * w.unsqueeze(-1)).sum(dim=2)
        return parts.mean(dim=2)

    def query(self, x):
        """Online branch for one view: (B, C, d) predictions, one per combination."""
        B = x.shape[0]
        emb = self.embed(self.divide(x)).view(B, self.num_splits ** 2, -1)
        z = self.combine(emb)
        C = z.shape[1]
        q = self.predictor(self.projector(z.flatten(0, 1)))
        return q.view(B, C, -1)

    @torch.no_grad()
    def key(self, x):
        """Target branch for one view: (B, d) momentum projections of the whole view."""
        return self.target.projector(self.embed(x, self.target.backbone))

    def loss(self, q1, q2, k1, k2):
        """``loss_scale * (ctr_1 + ctr_2) / 2``: the symmetrized InfoNCE, each direction averaged
        over its combinations (Fast-MoCo's code: the mean of all 2C losses)."""
        if self.target_view == "same":
            k1, k2 = k2, k1
        t, g = self.temperature, self.gather_keys
        ctr = infonce_loss(q1, k2, t, g, scale=1.0) + infonce_loss(q2, k1, t, g, scale=1.0)
        return ctr * (self.loss_scale / 2)

    def preprocess(self, batched_inputs, i):
        x = torch.stack([d["views"][i] if "views" in d else d["image"] for d in batched_inputs])
        return self.normalize(x)

    def forward(self, batched_inputs):
        """Training: ``{"loss_infonce"}`` from dicts with ``"views"`` (two CHW tensors, see
        ``TwoViewMapper``). Inference: ``[{"embedding": (D,)}]`` of the first view (or of
        ``"image"``), undivided."""
        x1 = self.preprocess(batched_inputs, 0)
        if not self.training:
            return [{"embedding": e} for e in self.embed(x1)]
        x2 = self.preprocess(batched_inputs, 1)
        q1, q2 = self.query(x1), self.query(x2)
        k1, k2 = self.key(x1), self.key(x2)
        return {"loss_infonce": self.loss(q1, q2, k1, k2)}
