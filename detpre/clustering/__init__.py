"""
SpCL's self-paced clustering, in memory that grows linearly with the number of features:
k-reciprocal Jaccard distances on a sparse k-NN graph (``jaccard``), DBSCAN on a sparse
precomputed distance graph (``dbscan``), and the cluster reliability criterion (``reliability``).
"""
from .dbscan import dbscan_sparse
from .jaccard import knn_search, sparse_jaccard_distance
from .reliability import cluster_iou, reliable_pseudo_labels, self_paced_cluster

__all__ = ["knn_search", "sparse_jaccard_distance", "dbscan_sparse", "cluster_iou",
           "reliable_pseudo_labels", "self_paced_cluster"]
