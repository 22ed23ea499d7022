"""
Keys gathered across processes (2-process gloo): the InfoNCE of each process, averaged as DDP
averages, equals the single-process loss on the global batch, gradients included.
"""
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detpre.modeling.losses.infonce import InfoNCELoss, infonce_loss
from detpre.utils.dist import concat_all_gather

WORLD, B, C, D, T = 2, 3, 4, 5, 0.3


def _global_inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(WORLD * B, C, D, generator=g), torch.randn(WORLD * B, D, generator=g)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        q, k = _global_inputs()
        sl = slice(rank * B, (rank + 1) * B)
        q_local = q[sl].clone().requires_grad_(True)
        gathered = concat_all_gather(k[sl])
        loss = infonce_loss(q_local, k[sl], T)
        loss.backward()
        no_gather = InfoNCELoss(temperature=T, gather=False)(q_local, k[sl])
        torch.save({"loss": loss.detach(), "grad": q_local.grad, "gathered": gathered,
                    "no_gather": no_gather.detach()}, f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_loss_and_gradient_equal_the_global_batch(tmp_path):
    try:
        mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    except Exception as e:  # pragma: no cover - environment without localhost sockets
        if "Address" in str(e) or "connect" in str(e):
            pytest.skip(f"no localhost gloo: {e}")
        raise
    res = [torch.load(tmp_path / f"{r}.pt") for r in range(WORLD)]
    q, k = _global_inputs()
    for r in res:
        torch.testing.assert_close(r["gathered"], k)  # rank order
    q = q.clone().requires_grad_(True)
    ref = infonce_loss(q, k, T, gather=False)  # one process, the whole batch
    ref.backward()
    mean_loss = sum(r["loss"] for r in res) / WORLD
    torch.testing.assert_close(mean_loss, ref.detach())
    # DDP averages gradients over processes: each local grad / WORLD is the global grad's slice
    torch.testing.assert_close(torch.cat([r["grad"] for r in res]) / WORLD, q.grad)
    # without gathering the negatives differ: the test above is not vacuous
    assert not torch.allclose(sum(r["no_gather"] for r in res) / WORLD, ref.detach())


def test_single_process_gather_is_identity_and_2d_queries_are_one_combination():
    k = torch.randn(4, 3)
    assert concat_all_gather(k) is k
    q = torch.randn(4, 3)
    torch.testing.assert_close(infonce_loss(q, k, 0.5), infonce_loss(q[:, None], k, 0.5))
    with pytest.raises(ValueError, match="must be"):
        infonce_loss(torch.randn(4, 3), torch.randn(5, 3))
