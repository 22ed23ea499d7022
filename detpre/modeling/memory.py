"""
SpCL's hybrid memory: one L2-normalized feature per entry, entries
``[0, num_source)`` = source-domain class centroids and ``[num_source, size)`` = target-domain
instance features, each with a label (source class, or target pseudo-label offset by
``num_source``; an un-clustered instance has a label of its own).

The unified contrastive loss of a feature f with memory label y is
    -log( exp(<f, c_y>/t) / sum_z exp(<f, c_z>/t) ),
c_z the mean of the memory entries labelled z: a source centroid, the centroid of a target
cluster, or an un-clustered target instance. The loss sees the memory before this step's update;
the update (momentum m, per memory index, from the batch's mean feature for that index: a source
class's per-class mean, a target instance's feature) happens in the backward pass, once the
gradient has been taken from the memory, so no copy of the memory is ever needed. Under DDP the
batch is gathered from every process first, so all copies of the memory stay identical.

Under autocast (SOLVER.AMP) the memory product, the loss and the update run in fp32 whatever
the features' dtype: the memory stays an fp32 bank, and the gradient reaches the encoder cast
back to the features' dtype.
"""
import torch
import torch.nn.functional as F
from torch import nn

from detpre.utils.dist import concat_all_gather

__all__ = ["HybridMemory", "unified_contrastive_loss"]


def unified_contrastive_loss(logits, labels, targets, groups=None):
    """
    ``logits`` (B, N) = <f, memory_j> / t, ``labels`` (N,) memory labels, ``targets`` (B,) the
    label of each feature. Similarities to a label are averaged over its entries (= similarity
    to their mean), then cross-entropy over the labels present in memory: the mean over the
    batch, or with ``groups`` (B,) the sum over groups of each group's mean (SpCL's UDA
    ``loss_s + loss_t``).
    """
    num = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=num).to(logits.dtype)
    sums = logits.new_zeros(num, logits.shape[0]).index_add_(0, labels, logits.t())
    present = counts > 0
    sim = (sums[present] / counts[present, None]).t()  # (B, labels present)
    # targets re-indexed among the present labels
    index = torch.cumsum(present.long(), 0) - 1
    if groups is None:
        return F.cross_entropy(sim, index[targets])
    ce = F.cross_entropy(sim, index[targets], reduction="none")
    return sum(ce[groups == g].mean() for g in torch.unique(groups))


class _MemoryMatmul(torch.autograd.Function):
    """f @ memory.T whose backward takes the gradient, then applies the pending update."""

    @staticmethod
    def forward(ctx, inputs, memory, update):
        ctx.memory, ctx.update = memory, update
        return inputs.mm(memory.features.t())

    @staticmethod
    def backward(ctx, grad_out):
        grad_in = grad_out.mm(ctx.memory.features) if ctx.needs_input_grad[0] else None
        if ctx.update is not None:
            ctx.memory.update(*ctx.update)
        return grad_in, None, None


class HybridMemory(nn.Module):
    """No trainable parameters; ``features``/``labels`` are buffers, so they are checkpointed."""

    def __init__(self, dim, num_source, num_target, temperature=0.05, momentum=0.2):
        super().__init__()
        self.num_source, self.num_target = int(num_source), int(num_target)
        self.temperature, self.momentum = float(temperature), float(momentum)
        size = self.num_source + self.num_target
        self.register_buffer("features", torch.zeros(size, dim))
        # each entry starts as its own label (source classes are 0..S-1 by construction)
        self.register_buffer("labels", torch.arange(size))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def __len__(self):
        return self.features.shape[0]

    @torch.no_grad()
    def set_features(self, features, start=0):
        """Overwrite entries ``start:start+len(features)`` with L2-normalized ``features``."""
        f = torch.as_tensor(features, dtype=self.features.dtype, device=self.features.device)
        self.features[start:start + len(f)] = F.normalize(f, dim=1)

    @torch.no_grad()
    def set_target_labels(self, pseudo_labels):
        """Target pseudo-labels (N_target,), 0-based; stored offset by ``num_source``."""
        pl = torch.as_tensor(pseudo_labels, dtype=torch.long, device=self.labels.device)
        if pl.shape != (self.num_target,) or (pl.numel() and pl.min() < 0):
            raise ValueError(f"expected {self.num_target} non-negative pseudo-labels, got {tuple(pl.shape)}")
        self.labels[self.num_source:] = pl + self.num_source

    @torch.no_grad()
    def update(self, features, indexes):
        """
        memory[j] <- normalize(m * memory[j] + (1 - m) * mean of ``features`` with index j),
        for every index j in the batch.
        """
        idx, inverse = torch.unique(indexes, return_inverse=True)
        sums = features.new_zeros(len(idx), features.shape[1]).index_add_(0, inverse, features)
        counts = torch.bincount(inverse, minlength=len(idx)).to(features.dtype)
        mean = sums / counts[:, None]
        new = self.momentum * self.features[idx] + (1.0 - self.momentum) * mean.to(self.features.dtype)
        self.features[idx] = F.normalize(new, dim=1)

    def forward(self, features, indexes, groups=None):
        """
        Unified contrastive loss of the L2-normalized ``features`` (B, D) whose memory entries are
        ``indexes`` (B,) (per ``groups``, see ``unified_contrastive_loss``); schedules the
        momentum update (with every process's batch) for backward. One memory product for the
        whole batch, so every group's gradient sees the memory before the update.
        """
        if not bool(self.initialized):
            raise RuntimeError("HybridMemory used before its features were initialized; "
                               "list 'ClusterRefresh' in DETPRE.HOOKS to fill it before training")
        indexes = indexes.to(self.labels.device)
        features = features.to(self.features.dtype)  # autograd casts the gradient back
        update = None
        if torch.is_grad_enabled() and features.requires_grad:
            update = (concat_all_gather(features.detach()), concat_all_gather(indexes))
        with torch.autocast(features.device.type, enabled=False):
            logits = _MemoryMatmul.apply(features, self, update) / self.temperature
            return unified_contrastive_loss(logits, self.labels, self.labels[indexes], groups)
