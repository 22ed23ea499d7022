"""
MoCo v3's InfoNCE: queries against the keys of the whole (global) batch, the positive being the
key of the same image; scaled by ``2 * temperature`` as MoCo v3 does, so the gradient scale does
not depend on the temperature.
"""
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.utils import comm
from torch import nn

from detpre.utils.dist import concat_all_gather

__all__ = ["infonce_loss", "InfoNCELoss"]


def infonce_loss(q, k, temperature=1.0, gather=True, scale=None):
    """
    Args:
        q: (B, d) queries, or (B, C, d) with C queries per image (Fast-MoCo's combinations);
            the loss is the mean over all B*C queries.
        k: (B, d) keys of the same B images (no gradient is needed or kept across processes).
        temperature: tau of ``softmax(q.k / tau)``.
        gather: take the negatives from every process (keys of the global batch), as MoCo v3.
        scale: factor on the cross-entropy; None = MoCo v3's ``2 * tau`` (Fast-MoCo's code: 1).
    Returns:
        ``scale * CE(q.k_all / tau, index of the same image in k_all)``, both L2-normalized.
    """
    if q.dim() == 2:
        q = q.unsqueeze(1)
    if q.dim() != 3 or k.dim() != 2 or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[1]:
        raise ValueError(f"infonce_loss: q {tuple(q.shape)} must be (B, [C,] d) and k (B, d)")
    B, C, _ = q.shape
    q = F.normalize(q, dim=-1)
    k = F.normalize(k, dim=-1)
    offset = 0
    if gather and comm.get_world_size() > 1:
        k = concat_all_gather(k.detach())
        offset = B * comm.get_rank()
    logits = torch.einsum("bcd,md->bcm", q, k) / temperature
    labels = (torch.arange(B, device=q.device) + offset).repeat_interleave(C)
    scale = 2 * temperature if scale is None else scale
    return F.cross_entropy(logits.reshape(B * C, -1), labels) * scale


class InfoNCELoss(nn.Module):
    """``infonce_loss`` as a module."""

    @configurable
    def __init__(self, *, temperature=1.0, gather=True):
        super().__init__()
        self.temperature, self.gather = temperature, gather

    @classmethod
    def from_config(cls, cfg):
        return {"temperature": cfg.MODEL.FASTMOCO.TEMPERATURE}

    def forward(self, q, k):
        return infonce_loss(q, k, self.temperature, self.gather)
