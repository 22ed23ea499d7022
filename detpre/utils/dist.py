"""
Tensor gathering across processes. detectron2.utils.comm (v0.6) gathers picklable objects only;
contrastive methods need the keys of every process as one tensor, every step.
"""
import torch
import torch.distributed as dist
from detectron2.utils import comm

__all__ = ["concat_all_gather"]


@torch.no_grad()
def concat_all_gather(tensor):
    """
    Concatenate ``tensor`` (same shape on every process) from all processes along dim 0, in rank
    order. No gradient flows back (MoCo's keys need none); a single process returns ``tensor``.
    """
    world = comm.get_world_size()
    if world == 1:
        return tensor
    tensor = tensor.contiguous()
    out = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(out, tensor)
    return torch.cat(out, dim=0)
