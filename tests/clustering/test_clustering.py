"""SpCL clustering: sparse k-reciprocal Jaccard vs a dense reference, sparse DBSCAN, reliability."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from detpre.clustering import (
    cluster_iou,
    dbscan_sparse,
    knn_search,
    reliable_pseudo_labels,
    self_paced_cluster,
    sparse_jaccard_distance,
)
from detpre.clustering.reliability import independence_threshold


def _blobs(num_ids, per_id, dim, noise, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.nn.functional.normalize(torch.randn(num_ids, dim, generator=g), dim=1)
    x = centers.repeat_interleave(per_id, 0) + noise * torch.randn(num_ids * per_id, dim, generator=g)
    return torch.nn.functional.normalize(x, dim=1), np.repeat(np.arange(num_ids), per_id)


def _dense_jaccard(x, k1, k2):
    """Straightforward dense k-reciprocal Jaccard distance, k1 counted as SpCL's code does."""
    x = x.double().numpy()
    n = len(x)
    d = 2 - 2 * x @ x.T
    sim = x @ x.T
    np.fill_diagonal(sim, np.inf)
    rank = np.argsort(-sim, axis=1, kind="stable")

    # SpCL's faiss_rerank.py: initial_rank holds k1 neighbours (self first) and
    # k_reciprocal_neigh slices [:k + 1] of it, so k1 itself takes k1 columns, k1/2 takes k1/2 + 1
    initial_rank = rank[:, :k1]

    def recip(i, k):
        fwd = initial_rank[i, :k + 1]
        return np.array([j for j in fwd if i in initial_rank[j, :k + 1]])

    V = np.zeros((n, n))
    for i in range(n):
        r = recip(i, k1)
        exp = list(r)
        for c in r:
            cr = recip(c, int(np.around(k1 / 2)))
            if len(np.intersect1d(cr, r)) > 2 / 3 * len(cr):
                exp.extend(cr)
        exp = np.unique(exp)
        w = np.exp(-d[i, exp])
        V[i, exp] = w / w.sum()
    V = np.stack([V[rank[i, :k2]].mean(0) for i in range(n)])
    s = np.minimum(V[:, None, :], V[None, :, :]).sum(-1)
    return 1 - s / (2 - s)


def test_knn_search_is_exact_and_self_first():
    x, _ = _blobs(5, 4, 8, 0.3)
    x = torch.cat([x, x[:1]])  # a duplicate of point 0
    idx = knn_search(x, 4, block_size=7)
    ref = x @ x.t()
    assert (idx[:, 0] == np.arange(len(x))).all()
    for i in range(len(x)):
        s = ref[i].clone()
        s[i] = -2
        top = torch.sort(s, descending=True).values[:3]
        assert torch.allclose(ref[i, idx[i, 1:]], top, atol=1e-6)


@pytest.mark.parametrize("k1,k2", [(6, 3), (8, 1), (7, 2)])
def test_sparse_jaccard_matches_dense(k1, k2):
    x, _ = _blobs(6, 7, 16, 0.4, seed=1)
    dense = _dense_jaccard(x, k1, k2)
    mask = dense <= 0.95
    np.fill_diagonal(mask, False)
    # a small pair budget forces many row blocks
    coo = sp.coo_matrix(sparse_jaccard_distance(x, k1, k2, max_dist=0.95, pair_budget=50))
    got = np.full_like(dense, np.inf)
    got[coo.row, coo.col] = coo.data
    assert np.isinf(np.diag(got)).all()
    assert np.allclose(got[mask], dense[mask], atol=1e-5)
    assert (dense[np.isfinite(got)] <= 0.95 + 1e-6).all()  # nothing stored beyond max_dist
    assert np.allclose(got[np.isfinite(got)], got.T[np.isfinite(got)], atol=1e-6)  # symmetric


def test_dbscan_sparse_hand_example():
    # points on a line: 0-1-2-3 within 1.0 of their neighbours, 4 near 3 only, 5-6 apart, 7 alone
    pos = np.array([0.0, 1.0, 2.0, 3.0, 3.9, 10.0, 10.5, 20.0])
    d = np.abs(pos[:, None] - pos[None])
    g = sp.coo_matrix((d[d <= 1.5], np.nonzero(d <= 1.5)), shape=d.shape)
    labels = dbscan_sparse(g, eps=1.0, min_samples=3)
    # core: 1, 2 (3 neighbours incl. self), 3 has {2, 3, 4} -> core; 0 and 4 are border
    assert labels.tolist() == [0, 0, 0, 0, 0, -1, -1, -1]
    labels = dbscan_sparse(g, eps=1.0, min_samples=2)
    assert labels.tolist() == [0, 0, 0, 0, 0, 1, 1, -1]
    assert (dbscan_sparse(g, eps=0.4, min_samples=2) == -1).all()
    assert dbscan_sparse(sp.csr_matrix((0, 0)), 0.5, 2).shape == (0,)


def test_dbscan_border_point_joins_nearest_core():
    # groups A (0-3) and B (4-7); point 8 is within eps of one core of each: 0.7 from A's, 0.75
    # from B's, so it is a border point and joins A, whichever is visited first
    pos = np.array([0.0, 0.1, 0.2, 0.3, 1.75, 1.85, 1.95, 2.05, 1.0])
    d = np.abs(pos[:, None] - pos[None])
    r, c = np.nonzero(d <= 1.0)
    labels = dbscan_sparse(sp.coo_matrix((d[r, c], (r, c)), shape=d.shape), eps=0.75, min_samples=4)
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0]
    rev = np.arange(9)[::-1]  # same points in reverse order: same assignment of the border
    dr = d[rev][:, rev]
    r, c = np.nonzero(dr <= 1.0)
    labels = dbscan_sparse(sp.coo_matrix((dr[r, c], (r, c)), shape=d.shape), 0.75, 4)
    assert labels.tolist() == [0, 1, 1, 1, 1, 0, 0, 0, 0]


def test_cluster_iou_and_reliability_by_hand():
    normal = np.array([0, 0, 0, 0, 1, 1, 1, -1, -1])
    tight = np.array([0, 0, 1, 1, 2, 2, 2, -1, -1])   # cluster 0 splits in two halves
    loose = np.array([0, 0, 0, 0, 1, 1, 1, 1, -1])    # cluster 1 absorbs point 7
    assert np.allclose(cluster_iou(normal, tight), [0.5, 0.5, 0.5, 0.5, 1, 1, 1, 1, 1])
    assert np.allclose(cluster_iou(normal, loose), [1, 1, 1, 1, 0.75, 0.75, 0.75, 0.25, 1])
    # 1 - IoU_indep per multi-member cluster: [0, 0.25] -> 90th percentile index round(1.8)=2 -> 0.25
    assert independence_threshold(normal, loose, 0.9) == pytest.approx(0.25)
    assert independence_threshold(normal, loose, 0.5) == pytest.approx(0.25)
    assert independence_threshold(normal, loose, 0.0) == pytest.approx(0.0)
    # threshold 0: cluster 1 (not independent) goes back to outliers; cluster 0 stays (all its
    # members equally compact)
    pl, kept = reliable_pseudo_labels(normal, tight, loose, 0.0)
    assert kept == 1
    assert pl.tolist() == [0, 0, 0, 0, 1, 2, 3, 4, 5]
    pl, kept = reliable_pseudo_labels(normal, tight, loose, 0.25)
    assert kept == 2 and pl.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 3]
    # compactness: a member whose tight sub-cluster is smaller than its cluster-mates' leaves
    tight2 = np.array([0, 0, 0, 1, 2, 2, 2, -1, -1])
    pl, kept = reliable_pseudo_labels(normal, tight2, loose, 0.25)
    assert pl.tolist() == [0, 0, 0, 2, 1, 1, 1, 3, 4] and kept == 2
    pl, kept = reliable_pseudo_labels(normal, tight, loose, None)  # no threshold: nothing kept
    assert kept == 0 and len(set(pl.tolist())) == 9


def test_self_paced_cluster_recovers_well_separated_identities():
    x, ids = _blobs(8, 6, 32, 0.15, seed=2)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, ids = x[perm], ids[perm.numpy()]
    graph = sparse_jaccard_distance(x, k1=8, k2=3, max_dist=0.62)
    labels, stats = self_paced_cluster(graph, eps=0.6, eps_gap=0.02, min_samples=4)
    assert stats["clusters"] == 8 and stats["kept"] == 8 and stats["outliers"] == 0
    # the partition equals the identities
    pairs = set(zip(labels.tolist(), ids.tolist()))
    assert len(pairs) == 8 and len({p[0] for p in pairs}) == 8
    again, _ = self_paced_cluster(graph, 0.6, 0.02, 4, stats["indep_thresh"])
    assert (again == labels).all()
