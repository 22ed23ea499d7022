"""HybridMemory: momentum update formula, unified contrastive loss by hand, DDP gather + update."""
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from detpre.modeling.memory import HybridMemory, unified_contrastive_loss


def _memory(seed=0, dim=4, num_source=2, num_target=5, momentum=0.2, temperature=0.05):
    g = torch.Generator().manual_seed(seed)
    mem = HybridMemory(dim, num_source, num_target, temperature=temperature, momentum=momentum)
    mem.set_features(torch.randn(num_source + num_target, dim, generator=g))
    mem.initialized.fill_(True)
    return mem


def test_momentum_update_matches_formula():
    mem = _memory(momentum=0.3)
    before = mem.features.clone()
    f = F.normalize(torch.randn(4, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    idx = torch.tensor([0, 0, 3, 5])  # source class 0 twice: its batch mean is used
    mem.update(f, idx)
    exp0 = 0.3 * before[0] + 0.7 * (f[0] + f[1]) / 2
    exp3 = 0.3 * before[3] + 0.7 * f[2]
    exp5 = 0.3 * before[5] + 0.7 * f[3]
    for j, e in ((0, exp0), (3, exp3), (5, exp5)):
        assert torch.allclose(mem.features[j], e / e.norm(), atol=1e-6)
    for j in (1, 2, 4, 6):  # untouched entries
        assert torch.equal(mem.features[j], before[j])
    assert torch.allclose(mem.features.norm(dim=1), torch.ones(7), atol=1e-6)


def test_unified_loss_by_hand():
    # memory: 2 source centroids (labels 0, 1), target entries 2..6 with pseudo-labels:
    # entries 2, 3 -> cluster A (label 2), 4, 5 -> cluster B (label 3), 6 -> outlier (label 4)
    mem = _memory(temperature=0.5)
    mem.set_target_labels(torch.tensor([0, 0, 1, 1, 2]))
    M = mem.features.double().numpy()
    f = F.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(2)), dim=1)
    idx = torch.tensor([1, 3, 6])  # a source image of class 1, target images 3 and 6
    with torch.no_grad():
        loss = mem(f, idx)
    fd = f.double().numpy()
    groups = [[0], [1], [2, 3], [4, 5], [6]]
    targets = [1, 2, 4]  # class 1, cluster A, the outlier itself
    ref = 0.0
    for i in range(3):
        logits = np.array([np.mean([fd[i] @ M[j] for j in g]) / 0.5 for g in groups])
        ref += -(logits[targets[i]] - np.log(np.exp(logits).sum()))
    assert loss.item() == pytest.approx(ref / 3, rel=1e-5)


def test_unified_loss_skips_empty_labels():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    labels = torch.tensor([0, 2, 2])  # label 1 has no entry: it is not a class
    loss = unified_contrastive_loss(logits, labels, torch.tensor([2]))
    ref = -(2.5 - torch.logsumexp(torch.tensor([1.0, 2.5]), 0))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_loss_uses_memory_before_update_and_backward_updates():
    mem = _memory()
    f = F.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(3)), dim=1)
    f.requires_grad_(True)
    idx = torch.tensor([0, 2, 4])
    before = mem.features.clone()
    loss = mem(f, idx)
    assert torch.equal(mem.features, before)  # no update before backward
    # reference gradient: the same loss with the memory as a constant
    ref_f = f.detach().clone().requires_grad_(True)
    ref = unified_contrastive_loss(ref_f @ before.t() / mem.temperature, mem.labels, mem.labels[idx])
    ref.backward()
    loss.backward()
    assert torch.allclose(f.grad, ref_f.grad, atol=1e-6)
    expected = _memory()
    expected.update(f.detach(), idx)
    assert torch.allclose(mem.features, expected.features, atol=1e-6)


def test_uninitialized_memory_fails_clearly():
    mem = HybridMemory(4, 0, 3)
    with pytest.raises(RuntimeError, match="ClusterRefresh"):
        mem(torch.ones(1, 4), torch.tensor([0]))
    with pytest.raises(ValueError):
        mem.set_target_labels(torch.tensor([0, 1]))


def _batch():
    g = torch.Generator().manual_seed(5)
    f = F.normalize(torch.randn(6, 4, generator=g), dim=1)
    return f, torch.tensor([0, 2, 2, 4, 1, 6])  # duplicates across the two halves


def _worker(rank, world, port, queue):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        torch.set_num_threads(1)
        mem = _memory()
        f, idx = _batch()
        part = f[rank * 3:(rank + 1) * 3].clone().requires_grad_(True)
        loss = mem(part, idx[rank * 3:(rank + 1) * 3])
        loss.backward()
        # a numpy copy travels by value: a torch tensor is shared through a file descriptor that
        # vanishes when this process exits before the parent reads it
        queue.put((rank, loss.item(), mem.features.detach().numpy().copy()))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gather_update_equals_single_process():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    mem = _memory()
    f, idx = _batch()
    f.requires_grad_(True)
    loss = mem(f, idx)
    loss.backward()
    for _, _, feats in results:
        assert torch.allclose(torch.from_numpy(feats), mem.features, atol=1e-6)
    # equal halves: the mean of the per-process losses is the full-batch loss
    assert np.mean([r[1] for r in results]) == pytest.approx(loss.item(), rel=1e-5)
