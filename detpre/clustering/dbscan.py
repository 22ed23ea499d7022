"""
DBSCAN on a sparse precomputed distance graph. DBSCAN only asks which points lie within eps of
each other, so a graph holding every pair closer than some bound >= eps is all it needs: memory
and time are linear in the number of stored pairs.
"""
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

__all__ = ["dbscan_sparse"]


def dbscan_sparse(dist, eps, min_samples):
    """
    Args:
        dist: (N, N) scipy sparse matrix of distances; an entry (i, k) is a pair at that
            distance (explicit zeros count), absent pairs are farther than eps. The diagonal is
            ignored: every point is its own neighbour, as in scikit-learn.
        eps: neighbourhood radius (inclusive). min_samples: neighbours (self included) a core
            point needs.
    Returns:
        int64 labels (N,): clusters 0..C-1 numbered by their smallest member, -1 for noise.
        A border point (not core, within eps of a core) joins its nearest core's cluster
        (ties: the smaller index), which makes the result independent of visiting order.
    """
    g = sp.coo_matrix(dist)
    n = g.shape[0]
    keep = (g.data <= eps) & (g.row != g.col)
    r, c, d = g.row[keep], g.col[keep], g.data[keep]
    # symmetrize: a pair stored once is a neighbour of both
    r, c, d = np.concatenate([r, c]), np.concatenate([c, r]), np.concatenate([d, d])
    key, first = np.unique(r.astype(np.int64) * n + c, return_index=True)
    r, c, d = key // n, key % n, d[first]
    degree = np.bincount(r, minlength=n) + 1
    core = degree >= min_samples
    labels = np.full(n, -1, dtype=np.int64)
    if not core.any():
        return labels
    cc = core[r] & core[c]
    graph = sp.csr_matrix((np.ones(int(cc.sum()), np.int8), (r[cc], c[cc])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    core_ids = np.nonzero(core)[0]
    # number clusters by their smallest core member (core_ids ascending)
    uniq, first = np.unique(comp[core_ids], return_index=True)
    order = np.empty(comp.max() + 1, dtype=np.int64)
    order[uniq[np.argsort(first)]] = np.arange(len(uniq))
    labels[core_ids] = order[comp[core_ids]]
    # border points: nearest core neighbour (ties by index: lexsort on (c, d, r))
    b = ~core[r] & core[c]
    if b.any():
        br, bc, bd = r[b], c[b], d[b]
        o = np.lexsort((bc, bd, br))
        br, bc = br[o], bc[o]
        head = np.concatenate([[True], br[1:] != br[:-1]])
        labels[br[head]] = labels[bc[head]]
    # renumber so that clusters are ordered by their smallest member (border points included)
    clustered = np.nonzero(labels >= 0)[0]
    uniq, first = np.unique(labels[clustered], return_index=True)
    remap = np.empty(labels.max() + 1, dtype=np.int64)
    remap[uniq[np.argsort(first)]] = np.arange(len(uniq))
    labels[clustered] = remap[labels[clustered]]
    return labels
