"""
SpCL's self-paced cluster reliability. A cluster found at ``eps`` is
- independent when it barely grows at a looser ``eps + gap`` (IoU with its looser cluster), and
- compact when it barely splits at a tighter ``eps - gap`` (IoU of a member's cluster with the
  member's tighter sub-cluster).
Clusters whose independence is below the threshold (SpCL: the 10% least independent, i.e.
``1 - IoU`` above its 90th percentile at the first clustering) go back to outliers, and so do the
members of a kept cluster whose compactness is below the best of their cluster.
"""
import numpy as np

from .dbscan import dbscan_sparse

__all__ = ["singletons_to_labels", "cluster_iou", "independence_threshold",
           "reliable_pseudo_labels", "self_paced_cluster"]


def singletons_to_labels(labels):
    """Noise (-1) -> fresh labels after the clusters, one per point (SpCL's outlier instances)."""
    labels = np.asarray(labels, dtype=np.int64).copy()
    noise = labels < 0
    start = labels.max() + 1 if (~noise).any() else 0
    labels[noise] = start + np.arange(int(noise.sum()))
    return labels


def cluster_iou(labels_a, labels_b):
    """Per point i: |A_i & B_i| / |A_i | B_i|, A_i / B_i = i's cluster in a / b (noise = itself)."""
    a, b = singletons_to_labels(labels_a), singletons_to_labels(labels_b)
    size_a, size_b = np.bincount(a)[a], np.bincount(b)[b]
    _, inv, counts = np.unique(a * (b.max() + 1) + b, return_inverse=True, return_counts=True)
    inter = counts[inv]
    return inter / (size_a + size_b - inter)


def _cluster_min(values, labels):
    """Per cluster of ``labels`` (>= 0), the minimum of ``values`` over its members."""
    out = np.full(labels.max() + 1, np.inf)
    np.minimum.at(out, labels, values)
    return out


def independence_threshold(labels, labels_loose, quantile=0.9):
    """SpCL's threshold on 1 - IoU_indep: the ``quantile`` of that value over clusters with > 1
    member (index round(quantile * count), as SpCL). None when there is no such cluster."""
    lab = singletons_to_labels(labels)
    r_indep = _cluster_min(1.0 - cluster_iou(labels, labels_loose), lab)
    multi = np.bincount(lab) > 1
    if not multi.any():
        return None
    vals = np.sort(r_indep[multi])
    return float(vals[min(len(vals) - 1, int(np.round(len(vals) * quantile)))])


def reliable_pseudo_labels(labels, labels_tight, labels_loose, indep_thresh):
    """
    Keep point i in its cluster C when C's 1 - IoU_indep <= ``indep_thresh`` and i's
    1 - IoU_comp is the smallest in C; every other point becomes an outlier instance.
    Returns (pseudo-labels: kept clusters 0..K-1 by first member, then one label per outlier;
    number of kept clusters with > 1 member).
    """
    lab = singletons_to_labels(labels)
    n = len(lab)
    if n == 0:
        return lab, 0
    r_comp = 1.0 - cluster_iou(labels, labels_tight)
    r_indep = _cluster_min(1.0 - cluster_iou(labels, labels_loose), lab)
    clustered = np.asarray(labels) >= 0
    keep = clustered & (r_comp <= _cluster_min(r_comp, lab)[lab])
    keep &= False if indep_thresh is None else r_indep[lab] <= indep_thresh
    out = np.where(keep, lab, -1)
    ids = np.nonzero(keep)[0]
    uniq, first = np.unique(lab[ids], return_index=True)
    remap = np.full(lab.max() + 1, -1, dtype=np.int64)
    remap[uniq[np.argsort(first)]] = np.arange(len(uniq))
    out[ids] = remap[lab[ids]]
    num_kept = int((np.bincount(out[ids]) > 1).sum()) if len(ids) else 0
    return singletons_to_labels(out), num_kept


def self_paced_cluster(dist, eps=0.6, eps_gap=0.02, min_samples=4, indep_thresh=None,
                       indep_quantile=0.9, reliability=True):
    """
    DBSCAN at eps - gap, eps, eps + gap on the sparse distance graph ``dist`` (holding every
    pair within eps + gap), then the reliability criterion. ``indep_thresh`` None computes it
    from this clustering (SpCL fixes it at the first epoch; pass it back afterwards).
    Returns (pseudo-labels (N,), stats dict with clusters / outliers / kept / indep_thresh).
    """
    labels = dbscan_sparse(dist, eps, min_samples)
    stats = {"clusters": int(labels.max() + 1) if len(labels) else 0,
             "unclustered": int((labels < 0).sum())}
    if reliability:
        tight = dbscan_sparse(dist, eps - eps_gap, min_samples)
        loose = dbscan_sparse(dist, eps + eps_gap, min_samples)
        if indep_thresh is None:
            indep_thresh = independence_threshold(labels, loose, indep_quantile)
        pseudo, kept = reliable_pseudo_labels(labels, tight, loose, indep_thresh)
    else:
        pseudo = singletons_to_labels(labels)
        kept = stats["clusters"]
    counts = np.bincount(pseudo) if len(pseudo) else np.zeros(0, np.int64)
    stats.update(outliers=int((counts[pseudo] == 1).sum()) if len(pseudo) else 0, kept=kept,
                 indep_thresh=indep_thresh)
    return pseudo, stats
