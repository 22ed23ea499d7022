"""
How fast this machine trains the demo's networks: one thread's forward + backward of the demo
detector's ResNet-18 + FPN on a fixed batch. CPUs differ several-fold in it (2.6x between an
AVX2-only and an AVX-512 machine, docs/findings/transfer.md section 12), so a time estimate measured on one
machine is scaled by this ratio before it is printed on another.
"""
import time

import torch

__all__ = ["step_seconds"]


def step_seconds(config: str, reps: int = 3, batch=(2, 3, 128, 192)) -> float:
    """The fastest of ``reps`` forward + backward passes (after one warm-up) of ``config``'s
    backbone on a random ``batch``, in one thread, in seconds. About a second in all."""
    from detectron2.modeling import build_backbone

    from detpre.config import get_detpre_cfg

    from .runner import repo_path

    cfg = get_detpre_cfg(repo_path(config))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            net = build_backbone(cfg).train()
            x = torch.randn(*batch)
        best = float("inf")
        for i in range(reps + 1):
            t = time.perf_counter()
            sum(f.float().mean() for f in net(x).values()).backward()
            if i:  # the first pass allocates and picks kernels
                best = min(best, time.perf_counter() - t)
        return best
    finally:
        torch.set_num_threads(threads)
