"""
Effective dimension of a backbone's features: the participation ratio (sum λ)² / sum λ² of the
channel covariance's eigenvalues λ, over every location of a batch of images. D channels that
vary independently give ~D; channels that all carry one signal give 1. A pretraining that
collapses its features to a few directions is a worse start than random init, and kNN / linear
probes on pooled features barely show it (docs/findings/transfer.md section 12: Jigsaw at 16x its LR rule,
res4 1.5 against random init's 49).

Measured as fine-tuning first sees the features: BN in training mode (batch statistics), on a
copy of the backbone, so its running statistics are left as they are. In that copy synchronized BN
is local BN (one process measures: the others are not waiting in its all-reduce), and a detectron2
ResNet returns the stages asked for, even one it does not output, and computes none after them.
"""
import copy
from typing import Dict, Sequence

import torch
from detectron2.layers import NaiveSyncBatchNorm
from torch import nn

__all__ = ["participation_ratio", "feature_dimension"]


def participation_ratio(features: torch.Tensor) -> float:
    """(N, C, H, W) or (M, C) features -> the participation ratio of the C x C covariance over the
    N * H * W (or M) samples: between 1 and C; NaN for constant features."""
    x = features.transpose(0, 1).reshape(features.shape[1], -1) if features.dim() == 4 else features.t()
    x = x.double()
    x = x - x.mean(dim=1, keepdim=True)
    eig = torch.linalg.eigvalsh(x @ x.t() / max(1, x.shape[1] - 1)).clamp(min=0)
    total = eig.sum()
    return float(total ** 2 / (eig ** 2).sum()) if total > 0 else float("nan")


@torch.no_grad()
def feature_dimension(backbone: torch.nn.Module, images: torch.Tensor, pixel_mean: Sequence[float],
                      pixel_std: Sequence[float], stages: Sequence[str] = ("res2", "res3", "res4", "res5"),
                      batch_size: int = 64) -> Dict[str, float]:
    """The participation ratio of each of ``stages`` of ``backbone`` (a detectron2 backbone:
    ``forward`` returns a dict) on uint8 ``images`` (N, 3, H, W), in batches of ``batch_size``
    with BN in training mode (even batches of at most ``batch_size``), pooled over the batches."""
    model = _probe_copy(backbone, stages)
    mean = torch.as_tensor(pixel_mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.as_tensor(pixel_std, dtype=torch.float32).view(1, -1, 1, 1)
    device = next(model.parameters(), torch.empty(0)).device
    feats = {s: [] for s in stages}
    # even batches: a trailing batch of one image would leave BN one value per channel at res5
    for batch in torch.tensor_split(images, max(1, -(-len(images) // batch_size))):
        out = model(((batch.float() - mean) / std).to(device))
        for s in stages:
            feats[s].append(out[s].float().cpu())
    return {s: participation_ratio(torch.cat(feats[s])) for s in stages}


def _local_norms(module: nn.Module) -> None:
    """Replace every synchronized BN under ``module`` by a ``BatchNorm2d`` with its state, in place."""
    for name, child in module.named_children():
        if isinstance(child, (nn.SyncBatchNorm, NaiveSyncBatchNorm)):
            bn = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                child.track_running_stats)
            bn.load_state_dict(child.state_dict())
            ref = next(child.parameters(), None)
            ref = ref if ref is not None else next(child.buffers(), None)
            setattr(module, name, bn.to(ref.device) if ref is not None else bn)
        else:
            _local_norms(child)


def _probe_copy(backbone: nn.Module, stages: Sequence[str]) -> nn.Module:
    """A training-mode copy of ``backbone`` with local BN; a detectron2 ResNet (``stage_names``,
    ``_out_features``) outputs exactly ``stages`` and stops after the last of them."""
    model = copy.deepcopy(backbone)
    _local_norms(model)
    names = getattr(model, "stage_names", None)
    if names is not None and hasattr(model, "_out_features") and all(s in names for s in stages):
        last = max(list(names).index(s) for s in stages) + 1
        model._out_features = list(stages)
        model.stage_names, model.stages = tuple(names[:last]), list(model.stages[:last])
    return model.train()
