"""
Cross-entropy with soft targets, the loss of montage pre-training's dense classification: the
target of a location is a distribution over classes (the ERF-weighted mix of its regions'
labels), so ``-Σ_c t_c log softmax(z)_c`` replaces the hard-label form.
"""
import torch
from torch import nn

__all__ = ["soft_label_cross_entropy", "SoftLabelCrossEntropy"]


def soft_label_cross_entropy(logits, targets, dim=-1):
    """Per-element loss (``logits``' shape without ``dim``); ``targets`` sum to 1 along ``dim``."""
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    return -(targets.to(logits.dtype) * torch.log_softmax(logits, dim=dim)).sum(dim=dim)


class SoftLabelCrossEntropy(nn.Module):
    """Mean soft-label cross-entropy over every element; classes along ``dim``."""

    def __init__(self, dim=-1):
        super().__init__()
        self.dim = dim

    def forward(self, logits, targets):
        return soft_label_cross_entropy(logits, targets, self.dim).mean()
