"""
Re-ID retrieval: mAP and CMC top-k, each query against the gallery, without the gallery images
of the query's own id seen by the query's own camera (Market-1501 protocol; junk images, id -1,
are left out when the data set is loaded). Queries with no valid match are skipped, as in
Market's evaluation code.
"""
import itertools
import logging
from collections import OrderedDict

import numpy as np
import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from detpre.registry import EVALUATOR_REGISTRY

__all__ = ["ReIDEvaluator", "reid_metrics", "reid"]


def reid_metrics(dist, q_pids, g_pids, q_cams, g_cams, topk=(1, 5, 10)):
    """
    ``dist`` (Q, G) distances (smaller = more similar). Returns {"mAP": %, "top-k": %...} and
    the number of queries evaluated. Ties keep gallery order (stable sort).
    """
    dist = np.asarray(dist, dtype=np.float64)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_cams, g_cams = np.asarray(q_cams), np.asarray(g_cams)
    order = np.argsort(dist, axis=1, kind="stable")
    aps, cmc = [], np.zeros(max(topk))
    for q in range(dist.shape[0]):
        g = order[q]
        valid = ~((g_pids[g] == q_pids[q]) & (g_cams[g] == q_cams[q]))
        match = (g_pids[g] == q_pids[q])[valid]
        if not match.any():
            continue
        hits = np.nonzero(match)[0]  # 0-based ranks of the true matches
        aps.append(np.mean(np.arange(1, len(hits) + 1) / (hits + 1)))
        if hits[0] < len(cmc):
            cmc[hits[0]:] += 1
    n = len(aps)
    if n == 0:
        return {"mAP": 0.0, **{f"top-{k}": 0.0 for k in topk}}, 0
    res = {"mAP": 100.0 * float(np.mean(aps))}
    res.update({f"top-{k}": 100.0 * cmc[k - 1] / n for k in topk})
    return res, n


class ReIDEvaluator(DatasetEvaluator):
    """
    Collects ``outputs[i]["feature"]`` (L2-normalized embedding) with each input's ``pid``,
    ``camid`` and ``reid_split`` ("query" or "gallery"), then ranks by Euclidean distance.
    """

    def __init__(self, dataset_name, topk=(1, 5, 10), distributed=True):
        self.dataset_name, self.topk, self.distributed = dataset_name, tuple(topk), distributed
        self._logger = logging.getLogger(__name__)
        self.reset()

    def reset(self):
        self._items = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            self._items.append((inp["reid_split"], int(inp["pid"]), int(inp["camid"]),
                                out["feature"].detach().float().cpu()))

    def evaluate(self):
        items = self._items
        if self.distributed:
            comm.synchronize()
            items = list(itertools.chain(*comm.gather(items, dst=0)))
            if not comm.is_main_process():
                return {}
        q = [x for x in items if x[0] == "query"]
        g = [x for x in items if x[0] == "gallery"]
        if not q or not g:
            raise ValueError(f"{self.dataset_name}: re-ID evaluation needs query and gallery "
                             f"images, got {len(q)} queries and {len(g)} gallery images")
        qf, gf = torch.stack([x[3] for x in q]), torch.stack([x[3] for x in g])
        dist = torch.cdist(qf.double(), gf.double()).pow(2).numpy()
        res, n = reid_metrics(dist, [x[1] for x in q], [x[1] for x in g],
                              [x[2] for x in q], [x[2] for x in g], self.topk)
        self._logger.info("%s: %d queries evaluated of %d, %d gallery images",
                          self.dataset_name, n, len(q), len(g))
        return OrderedDict(reid=res)


@EVALUATOR_REGISTRY.register()
def reid(cfg, dataset_name, output_folder):
    return ReIDEvaluator(dataset_name)
