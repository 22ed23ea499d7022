"""
BYOL's regression loss (Grill et al., 2020): ``2 - 2 * cos(p, z)`` between an online
prediction ``p`` and a target projection ``z`` (no gradient to the target). SoCo applies it per
proposal: its official code averages over the matched proposals (``reduction="mean"``); the
paper writes a sum over an image's proposals (``"sum"``: K times larger gradients, which under
LARS gives the non-adapted bias/BN parameters a K times larger step).
"""
import torch.nn.functional as F
from torch import nn

__all__ = ["byol_loss", "BYOLLoss"]


def byol_loss(p, z, reduction="mean"):
    """
    Args:
        p: (B, d) or (B, K, d) online predictions (B images, K proposals each).
        z: target projections of the same shape; detached here.
        reduction: "mean" over every (image, proposal) pair, or "sum" over an image's K
            proposals then mean over the B images.
    Returns:
        a scalar (float32).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"byol_loss: reduction must be 'mean' or 'sum', got {reduction!r}")
    if p.shape != z.shape or p.dim() not in (2, 3):
        raise ValueError(f"byol_loss: p {tuple(p.shape)} and z {tuple(z.shape)} must both be (B, [K,] d)")
    p = F.normalize(p.float(), dim=-1)
    z = F.normalize(z.detach().float(), dim=-1)
    per = 2 - 2 * (p * z).sum(dim=-1)  # (B,) or (B, K)
    if per.dim() == 2 and reduction == "sum":
        per = per.sum(dim=1)
    return per.mean()


class BYOLLoss(nn.Module):
    """``byol_loss`` as a module."""

    def forward(self, p, z):
        return byol_loss(p, z)
