"""Projector / predictor MLPs of the self-supervised methods (BYOL, SoCo, MoCo v3, Fast-MoCo)."""
import torch.distributed as dist
from torch import nn

__all__ = ["MLP"]


def _norm1d(norm, dim, affine=True):
    if norm == "BN":
        return nn.BatchNorm1d(dim, affine=affine)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(dim, affine=affine)
    if norm in ("", None):
        return None
    raise ValueError(f"MLP norm {norm!r}: use 'BN', 'SyncBN' or ''")


class MLP(nn.Sequential):
    """
    ``num_layers`` Linear layers, each hidden one followed by norm + ReLU:
    BYOL/SoCo use 2 layers (``in -> hidden -> out``); MoCo v3's projector ends in a BN without
    affine (``last_norm=True``), Fast-MoCo's in one with affine (``last_affine=True`` too).
    A Linear followed by a norm has no bias; ``last_bias=False`` drops the last one's too (MoCo
    v3's predictor: every Linear bias-free).
    """

    def __init__(self, in_dim, hidden_dim, out_dim, num_layers=2, norm="BN", last_norm=False,
                 last_affine=False, last_bias=True):
        layers = []
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        for i in range(num_layers):
            last = i == num_layers - 1
            bias = not (norm and (not last or last_norm)) and (last_bias or not last)
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=bias))
            if not last:
                bn = _norm1d(norm, dims[i + 1])
                if bn is not None:
                    layers.append(bn)
                layers.append(nn.ReLU(inplace=True))
            elif last_norm:
                bn = _norm1d(norm or "BN", dims[i + 1], affine=last_affine)
                layers.append(bn)
        super().__init__(*layers)
        self.out_dim = out_dim

    def forward(self, x):
        if self.training and x.shape[0] < 2 and self._batch_stats_are_local():
            raise ValueError(
                f"an MLP head with BatchNorm got {x.shape[0]} row(s) in training; batch "
                "statistics need at least 2 (SoCo: images x proposals per GPU, Fast-MoCo / "
                "MoCo v3: images per GPU). Use more images per GPU, SyncBN heads across "
                "several GPUs, or HEAD_NORM ''.")
        return super().forward(x)

    def _batch_stats_are_local(self):
        """Some BatchNorm normalizes by this process's rows alone (SyncBN syncs only when
        more than one process runs)."""
        bns = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        synced = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        return any(not (synced and isinstance(m, nn.SyncBatchNorm)) for m in bns)
