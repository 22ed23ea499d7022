"""Projector / predictor MLPs of the self-supervised methods (BYOL, SoCo, MoCo v3, Fast-MoCo)."""
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
    BYOL/SoCo use 2 layers (``in -> hidden -> out``); MoCo v3 uses 3-layer projectors with a
    BN without affine after the last layer (``last_norm=True``).
    """

    def __init__(self, in_dim, hidden_dim, out_dim, num_layers=2, norm="BN", last_norm=False):
        layers = []
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        for i in range(num_layers):
            last = i == num_layers - 1
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=not (norm and (not last or last_norm))))
            if not last:
                bn = _norm1d(norm, dims[i + 1])
                if bn is not None:
                    layers.append(bn)
                layers.append(nn.ReLU(inplace=True))
            elif last_norm:
                bn = _norm1d(norm or "BN", dims[i + 1], affine=False)
                layers.append(bn)
        super().__init__(*layers)
        self.out_dim = out_dim
