"""
SpCL cost measurements behind ``tools/benchmark_spcl.py``: hybrid-memory loss + update time
against memory size, and clustering (k-NN, sparse Jaccard, DBSCAN x3, reliability) time and peak
memory against the number of target features, next to a dense N x N Jaccard (the reference
implementation's memory footprint) where it fits. Every clustering measurement runs in a fresh
process so that its peak resident memory is its own.
"""
import multiprocessing as mp
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F

from detpre.clustering.jaccard import k_reciprocal_weights, sparse_jaccard_distance
from detpre.clustering.reliability import self_paced_cluster
from detpre.modeling.memory import HybridMemory

__all__ = ["synthetic_features", "time_memory_step", "run_clustering"]


def synthetic_features(n, dim, per_id=17, noise=0.6, seed=0):
    """``n`` L2-normalized features around n / per_id identity centres (Market: ~17 per id)."""
    g = torch.Generator().manual_seed(seed)
    ids = max(n // per_id, 1)
    centers = F.normalize(torch.randn(ids, dim, generator=g), dim=1)
    x = centers[torch.randint(ids, (n,), generator=g)]
    return F.normalize(x + noise / dim ** 0.5 * torch.randn(n, dim, generator=g), dim=1)


def time_memory_step(size, dim=2048, batch=64, num_source=0, steps=5, seed=0):
    """Seconds per forward + backward (loss + momentum update) of a ``size``-entry memory."""
    torch.manual_seed(seed)
    mem = HybridMemory(dim, num_source, size - num_source)
    mem.set_features(torch.randn(size, dim))
    mem.set_target_labels(torch.randint(0, max((size - num_source) // 17, 1), (size - num_source,)))
    mem.initialized.fill_(True)
    times = []
    for _ in range(steps + 1):
        f = F.normalize(torch.randn(batch, dim), dim=1).requires_grad_(True)
        idx = torch.randint(0, size, (batch,))
        t = time.perf_counter()
        mem(f, idx).backward()
        times.append(time.perf_counter() - t)
    return float(np.median(times[1:]))


def _peak_rss_mb():
    """This process's resident high-water mark (VmHWM; ru_maxrss survives exec on Linux, so a
    spawned child would report its parent's peak)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _dense_jaccard(x, k1, k2):
    """The reference layout: dense N x N distance, V and Jaccard matrices (float32)."""
    n = len(x)
    sim = (x @ x.t()).numpy()
    dist = 2.0 - 2.0 * sim
    del sim
    V = k_reciprocal_weights(x, k1, k2).toarray()  # same V, stored dense as the reference does
    inv = [np.nonzero(V[:, j])[0] for j in range(n)]
    jac = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        nz = np.nonzero(V[i])[0]
        tmp = np.zeros(n, dtype=np.float32)
        for j in nz:
            tmp[inv[j]] += np.minimum(V[i, j], V[inv[j], j])
        jac[i] = 1.0 - tmp / (2.0 - tmp)
    del dist
    return jac


def _clustering_worker(n, dim, dense, k1, k2, queue):
    torch.set_num_threads(1)
    x = synthetic_features(n, dim)
    base = _peak_rss_mb()
    t = time.perf_counter()
    if dense:
        _dense_jaccard(x, k1, k2)
        stats = {}
    else:
        graph = sparse_jaccard_distance(x, k1, k2, max_dist=0.62)
        _, stats = self_paced_cluster(graph, 0.6, 0.02, 4)
    queue.put((time.perf_counter() - t, _peak_rss_mb() - base, stats))


def run_clustering(n, dim=128, dense=False, k1=30, k2=6, timeout=3600):
    """(seconds, peak extra resident MiB, stats) of one clustering of ``n`` features, in a fresh process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_clustering_worker, args=(n, dim, dense, k1, k2, queue))
    p.start()
    try:
        return queue.get(timeout=timeout)
    finally:
        p.join(timeout=60)

