"""
Label-free-pretraining check of a backbone: kNN accuracy (InstDisc / MoCo protocol: cosine
similarity, top-k neighbours weighted by ``exp(sim / T)``) and a linear probe (multinomial
logistic regression on frozen features) on object crops cut from a labeled detection data set's
ground-truth boxes. Features: the global-average-pooled last ResNet stage. Shared by every method.
"""
import logging
import os

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data import detection_utils as utils
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import build_resnet_backbone
from detectron2.structures import BoxMode

from detpre.checkpoint import export_weights, load_detpre_checkpoint
from detpre.utils.safe_load import UntrustedFileError, load_pickle

from .feature_dimension import feature_dimension

__all__ = [
    "extract_crops", "read_backbone_weights", "build_probe_backbone", "extract_features",
    "knn_predict", "linear_probe", "evaluate_backbone", "MIN_PROBE_CROPS",
]

PREFIX = "backbone.bottom_up."
# below this many crops on either side one crop moves top-1 by over 2 points: the probe's
# differences between inits are within that noise, so its numbers are not a verdict
MIN_PROBE_CROPS = 50


def extract_crops(dataset_dicts, size=64, min_box=8, image_format="RGB", dataset_name="data set"):
    """
    Every non-crowd ground-truth box of at least ``min_box`` px per side, cropped and resized to
    ``size`` x ``size``. Returns ``(crops, labels)``: uint8 (N, 3, size, size) in ``image_format``
    and int64 (N,) contiguous category ids.
    """
    crops, labels = [], []
    for d in dataset_dicts:
        anns = [a for a in d.get("annotations", []) if not a.get("iscrowd", 0)]
        if not anns:
            continue
        image = utils.read_image(d["file_name"], format=image_format)
        h, w = image.shape[:2]
        for a in anns:
            x0, y0, x1, y1 = BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS)
            x0, y0 = int(max(0, np.floor(x0))), int(max(0, np.floor(y0)))
            x1, y1 = int(min(w, np.ceil(x1))), int(min(h, np.ceil(y1)))
            if x1 - x0 < min_box or y1 - y0 < min_box:
                continue
            crop = cv2.resize(np.ascontiguousarray(image[y0:y1, x0:x1]), (size, size),
                              interpolation=cv2.INTER_LINEAR)
            crops.append(crop.transpose(2, 0, 1))
            labels.append(int(a["category_id"]))
    if not crops:
        raise ValueError(
            f"{dataset_name}: no ground-truth boxes of at least {min_box} px; the probe needs a "
            "labeled detection data set (e.g. detpre_demo_train / detpre_demo_val).")
    return torch.as_tensor(np.stack(crops)), torch.as_tensor(labels, dtype=torch.long)


def read_backbone_weights(path, use_target=False):
    """
    ResNet weights (keys without ``backbone.bottom_up.``) from a detectron2-format ``.pkl``
    (tools/convert_pretrained.py's export, or any model-zoo file) or a detpre checkpoint ``.pth``,
    read without running code from it (``detpre.utils.safe_load``).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (pass a .pkl export or a detpre .pth checkpoint)")
    if path.endswith(".pkl"):
        try:
            data = load_pickle(path, kind="weights .pkl")
        except UntrustedFileError:
            raise
        except Exception as e:
            raise ValueError(f"{path}: not a readable pickle ({e})") from e
        state = data.get("model", data) if isinstance(data, dict) else None
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a detectron2 model-zoo dict with a 'model' entry")
    else:
        state, _ = load_detpre_checkpoint(path)
        state = export_weights(state, "backbone", use_target=use_target)
    out = {k[len(PREFIX):]: torch.as_tensor(np.asarray(v)) for k, v in state.items() if k.startswith(PREFIX)}
    if not out:
        raise ValueError(f"{path}: no '{PREFIX}*' weights; export it with tools/convert_pretrained.py")
    return out


def build_probe_backbone(cfg, weights="", use_target=False, seed=0):
    """``cfg``'s ResNet (MODEL.RESNETS.*) in eval mode, loaded from ``weights`` ("" = random init,
    drawn with ``seed`` so that the random-init probe is one number, not a fresh draw per run)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = build_resnet_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
    if weights:
        state = read_backbone_weights(weights, use_target)
        own = backbone.state_dict()
        bad = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        if bad or missing:
            raise ValueError(
                f"{weights}: does not fit the config's ResNet (MODEL.RESNETS.*): "
                f"{len(missing)} missing (e.g. {missing[:3]}), {len(bad)} of another shape "
                f"(e.g. {bad[:3]}); use the config the backbone was pretrained with.")
        backbone.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return backbone.eval()


@torch.no_grad()
def extract_features(backbone, crops, pixel_mean, pixel_std, in_feature="res5", batch_size=64):
    """L2-normalized global-average-pooled ``in_feature`` of uint8 crops: (N, D) float32."""
    device = next(backbone.parameters()).device
    mean = torch.as_tensor(pixel_mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.as_tensor(pixel_std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    feats = []
    for i in range(0, len(crops), batch_size):
        x = (crops[i:i + batch_size].to(device).float() - mean) / std
        feats.append(backbone(x)[in_feature].mean(dim=(2, 3)).float().cpu())
    return F.normalize(torch.cat(feats), dim=1)


def knn_predict(train_feats, train_labels, test_feats, num_classes, k=200, temperature=0.07):
    """InstDisc's weighted kNN on L2-normalized features: class score = sum over the top-k
    neighbours of that class of ``exp(cos / T)``. Returns (N_test,) predicted labels."""
    sim = test_feats @ train_feats.t()
    k = min(k, train_feats.shape[0])
    top_sim, top_idx = sim.topk(k, dim=1)
    weights = (top_sim / temperature).exp()
    scores = torch.zeros(test_feats.shape[0], num_classes, dtype=weights.dtype)
    scores.scatter_add_(1, train_labels[top_idx], weights)
    return scores.argmax(dim=1)


def linear_probe(train_feats, train_labels, test_feats, num_classes, weight_decay=1e-4, max_iter=100):
    """Multinomial logistic regression (L2-regularized, L-BFGS, features standardized with the
    training statistics) on frozen features. Returns (N_test,) predicted labels."""
    mean, std = train_feats.mean(0), train_feats.std(0).clamp_min(1e-6)
    x, xt = (train_feats - mean) / std, (test_feats - mean) / std
    with torch.enable_grad():
        W = torch.zeros(x.shape[1], num_classes, requires_grad=True)
        b = torch.zeros(num_classes, requires_grad=True)
        opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(x @ W + b, train_labels) + weight_decay * (W * W).sum()
            loss.backward()
            return loss

        opt.step(closure)
    with torch.no_grad():
        return (xt @ W + b).argmax(dim=1)


def evaluate_backbone(cfg, weights, train_dicts, test_dicts, crop_size=64, k=20, temperature=0.07,
                      linear=True, use_target=False, in_feature="res5", backbone=None):
    """
    kNN (and linear-probe) top-1 accuracy of ``weights`` (or of a given ``backbone`` module) with
    ``cfg``'s ResNet definition, crops from ``train_dicts`` as the labeled memory / training set
    and ``test_dicts``' crops as queries. Returns a dict of metrics (accuracies in %).
    ``k`` is capped at a tenth of the memory: InstDisc's 200 neighbours are for 1.28M images; on
    a few hundred crops they are nearly the whole memory and kNN only predicts the class prior.
    ``feature_dim``: each ResNet stage's participation ratio on the query crops (``feature_dimension``).
    ``cannot_discriminate``: why the accuracies tell inits apart by nothing but chance (one class in
    the memory: every query gets it; fewer than ``MIN_PROBE_CROPS`` crops on a side), else None.
    """
    fmt = cfg.INPUT.FORMAT
    tr_x, tr_y = extract_crops(train_dicts, crop_size, image_format=fmt, dataset_name="train set")
    te_x, te_y = extract_crops(test_dicts, crop_size, image_format=fmt, dataset_name="test set")
    num_classes = int(max(tr_y.max(), te_y.max())) + 1
    if backbone is None:
        backbone = build_probe_backbone(cfg, weights, use_target)
    was_training = backbone.training
    backbone.eval()
    try:
        f_tr = extract_features(backbone, tr_x, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, in_feature)
        f_te = extract_features(backbone, te_x, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, in_feature)
        # what fine-tuning starts from: the effective dimension of every stage (a collapse, which
        # pooled-feature probes barely show), on the query crops
        dims = feature_dimension(backbone, te_x, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD,
                                 list(backbone.output_shape()))
    finally:
        backbone.train(was_training)
    res = {"num_train": len(tr_y), "num_test": len(te_y), "num_classes": num_classes, "feature_dim": dims,
           "cannot_discriminate": _cannot_discriminate(tr_y, te_y)}
    k = max(1, min(k, len(tr_y) // 10))
    res["knn_k"] = k
    pred = knn_predict(f_tr, tr_y, f_te, num_classes, k, temperature)
    res["knn_top1"] = 100.0 * (pred == te_y).float().mean().item()
    if linear:
        pred = linear_probe(f_tr, tr_y, f_te, num_classes)
        res["linear_top1"] = 100.0 * (pred == te_y).float().mean().item()
    logging.getLogger(__name__).info("backbone probe: %s", res)
    if res["cannot_discriminate"]:
        logging.getLogger(__name__).warning("backbone probe: its top-1 tells nothing: %s", res["cannot_discriminate"])
    return res


def _cannot_discriminate(train_labels, test_labels):
    """Why a probe on these crops cannot rank backbones (see ``evaluate_backbone``), or None."""
    if len(torch.unique(train_labels)) < 2:
        return "one class in the probe's crops (every query gets it)"
    if min(len(train_labels), len(test_labels)) < MIN_PROBE_CROPS:
        return (f"too few crops ({len(train_labels)} train, {len(test_labels)} test; the probe needs "
                f"{MIN_PROBE_CROPS} of each)")
    return None
