"""
SpCL's k-reciprocal Jaccard distance (Zhong et al., CVPR 2017 re-ranking, as SpCL uses it for
clustering), computed on a sparse k-nearest-neighbour graph.

The reference implementation fills dense N x N matrices (original distance, V, Jaccard), which
runs out of memory on large target sets. Every quantity it needs is local, though: row i of V
is non-zero only on i's expanded k-reciprocal set, query expansion averages k2 such rows, and
the Jaccard overlap of rows i and k is non-zero only where their supports meet. So here V is a
sparse matrix with O(k1) entries per row, the Jaccard sums are accumulated by shared column in
row blocks of bounded size, and only distances <= ``max_dist`` are kept: memory is O(N * k1 * k2)
plus one block, never O(N^2).
"""
import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["knn_search", "k_reciprocal_weights", "sparse_jaccard_distance"]


@torch.no_grad()
def knn_search(features, k, block_size=1024):
    """
    Exact k nearest neighbours by cosine similarity of L2-normalized ``features`` (N, D), the
    point itself first. Blockwise (block_size x N similarities at a time).
    Returns an int64 numpy array (N, k).
    """
    x = torch.as_tensor(features).float()
    n = x.shape[0]
    k = min(k, n)
    out = np.empty((n, k), dtype=np.int64)
    for s in range(0, n, block_size):
        sim = x[s:s + block_size] @ x.t()
        rows = torch.arange(sim.shape[0])
        sim[rows, rows + s] = float("inf")  # self first even with duplicate features
        out[s:s + block_size] = sim.topk(k, dim=1).indices.numpy()
    return out


def _reciprocal_mask(rank, k, chunk=4096):
    """M[i, a] = (i is among the k+1 nearest of rank[i, a]), for a < k+1."""
    r = rank[:, :k + 1]
    mask = np.empty(r.shape, dtype=bool)
    for s in range(0, len(r), chunk):
        ids = np.arange(s, min(s + chunk, len(r)))[:, None, None]
        mask[s:s + chunk] = (r[r[s:s + chunk]] == ids).any(-1)
    return mask


def _expanded_sets(rank, k1, chunk=1024):
    """
    SpCL's expanded k-reciprocal sets as (rows, cols) pairs, unique per row: i's k1-reciprocal
    neighbours, plus the round(k1/2)-reciprocal set of each of them that shares more than 2/3
    of its members with i's set. k1 counts as SpCL's code does (faiss_rerank.py): its neighbour
    list holds k1 entries, the point itself included, so ``[:k1 + 1]`` takes k1 of them; the
    half sets take round(k1/2) + 1.
    """
    n = len(rank)
    kh = int(np.around(k1 / 2.0))
    R, M = rank[:, :k1], _reciprocal_mask(rank, k1 - 1)
    Rh, Mh = rank[:, :kh + 1], _reciprocal_mask(rank, kh)
    nh = Mh.sum(1)
    rows, cols = [], []
    for s in range(0, n, chunk):
        r, m = R[s:s + chunk], M[s:s + chunk]
        cand_sets, cand_mask = Rh[r], Mh[r]  # (B, k1+1, kh+1)
        in_set = ((cand_sets[..., None] == r[:, None, None, :]) & m[:, None, None, :]).any(-1)
        inter = (in_set & cand_mask).sum(-1)
        grow = m & (inter > 2.0 / 3.0 * nh[r])  # (B, k1+1)
        ids = np.arange(s, s + len(r))
        b, a = np.nonzero(m)
        rows.append(ids[b]), cols.append(r[b, a])
        b, a = np.nonzero(grow)
        sel = cand_mask[b, a]  # (G, kh+1)
        rows.append(np.repeat(ids[b], sel.sum(1))), cols.append(cand_sets[b, a][sel])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    key = np.unique(rows * n + cols)
    return key // n, key % n


@torch.no_grad()
def k_reciprocal_weights(features, k1=30, k2=6, rank=None):
    """
    The sparse matrix V (N x N, float32, rows sum to 1): row i is softmax(-||x_i - x_j||^2)
    over i's expanded k-reciprocal set, then averaged over i's k2 nearest rows (query expansion).
    ``rank`` (N, >= k1) may be passed to reuse a neighbour search. k1 is SpCL's: k1 nearest
    neighbours, the point itself the first of them.
    """
    if k1 < 1:
        raise ValueError(f"MODEL.SPCL.K1={k1}: must be >= 1")
    x = torch.as_tensor(features).float()
    n = x.shape[0]
    if rank is None:
        rank = knn_search(x, max(k1, k2))
    if rank.shape[1] < min(k1, n):
        raise ValueError(f"rank has {rank.shape[1]} neighbours per row, need k1 = {k1}")
    k1 = min(k1, rank.shape[1])
    rows, cols = _expanded_sets(rank, k1)
    logits = np.empty(len(rows), dtype=np.float32)
    for s in range(0, len(rows), 1 << 20):
        r, c = torch.from_numpy(rows[s:s + (1 << 20)]), torch.from_numpy(cols[s:s + (1 << 20)])
        # -squared distance of unit vectors: -(2 - 2 cos)
        logits[s:s + len(r)] = ((x[r] * x[c]).sum(1) * 2.0 - 2.0).numpy()
    w = np.exp(logits)  # logits lie in [-4, 0]: no overflow
    w /= np.bincount(rows, weights=w, minlength=n)[rows]
    V = sp.csr_matrix((w.astype(np.float32), (rows, cols)), shape=(n, n))
    if k2 > 1:
        k2 = min(k2, rank.shape[1])
        qe = sp.csr_matrix((np.full(n * k2, 1.0 / k2, dtype=np.float32),
                            (np.repeat(np.arange(n), k2), rank[:, :k2].ravel())), shape=(n, n))
        V = (qe @ V).tocsr()
    V.sort_indices()
    return V


def sparse_jaccard_distance(features, k1=30, k2=6, max_dist=1.0, pair_budget=1 << 22):
    """
    SpCL's Jaccard distance d(i, k) = 1 - s / (2 - s), s = sum_j min(V_ij, V_kj), for every
    pair with d <= ``max_dist`` (i != k), as a symmetric scipy CSR matrix of distances (an
    explicit entry per kept pair, zeros included). Pairs absent are farther than ``max_dist``.
    Work is done in row blocks of about ``pair_budget`` (row, shared column, row) triples.
    """
    V = k_reciprocal_weights(features, k1, k2)
    n = V.shape[0]
    Vc = V.tocsc()
    col_start, col_count = Vc.indptr[:-1], np.diff(Vc.indptr)
    # triples produced by each row: sum over its columns of that column's support size
    per_entry = col_count[V.indices]
    per_row = np.add.reduceat(per_entry, V.indptr[:-1]) if V.nnz else np.zeros(n, np.int64)
    per_row[np.diff(V.indptr) == 0] = 0
    bounds = [0]
    acc = 0
    for i, c in enumerate(per_row):  # row blocks holding about pair_budget triples each
        if acc and acc + c > pair_budget:
            bounds.append(i)
            acc = 0
        acc += c
    bounds.append(n)
    out_r, out_c, out_d = [], [], []
    for r0, r1 in zip(bounds[:-1], bounds[1:]):
        e0, e1 = V.indptr[r0], V.indptr[r1]
        if e0 == e1:
            continue
        i = np.repeat(np.arange(r0, r1), np.diff(V.indptr[r0:r1 + 1]))
        j, v = V.indices[e0:e1], V.data[e0:e1]
        cnt = col_count[j]
        total = int(cnt.sum())
        pos = np.repeat(col_start[j] - (np.cumsum(cnt) - cnt), cnt) + np.arange(total)
        k, w = Vc.indices[pos], Vc.data[pos]
        mins = np.minimum(np.repeat(v, cnt), w)
        block = sp.coo_matrix((mins, (np.repeat(i - r0, cnt), k)), shape=(r1 - r0, n)).tocsr()
        block.sum_duplicates()
        s = block.data.astype(np.float64)
        d = np.clip(1.0 - s / (2.0 - s), 0.0, None)
        br = np.repeat(np.arange(r0, r1), np.diff(block.indptr))
        keep = (d <= max_dist) & (br != block.indices)
        out_r.append(br[keep]), out_c.append(block.indices[keep])
        out_d.append(d[keep].astype(np.float32))
    if not out_r:
        return sp.csr_matrix((n, n), dtype=np.float32)
    rows, cols, dist = map(np.concatenate, (out_r, out_c, out_d))
    return sp.csr_matrix((dist, (rows, cols)), shape=(n, n))
