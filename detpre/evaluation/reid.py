"""
Re-ID retrieval: mAP and CMC top-k, under the protocol the data set's metadata names
(``reid_protocol``, set by the loaders):

- "market" (Market-1501, DukeMTMC-reID, MSMT17, PersonX, VeRi-776): each query against the
  gallery, without the gallery images of the query's own id seen by the query's own camera;
  queries with no valid match are skipped, as in Market's evaluation code.
- "vehicleid" (VehicleID test sizes 800/1600/2400): the test split holds every image of its
  identities; a trial puts one random image per identity in the gallery and queries with the
  rest (no camera filter); the metrics are the mean over 10 trials with fixed seeds.
"""
import itertools
import logging
from collections import OrderedDict

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from detpre.registry import EVALUATOR_REGISTRY

__all__ = ["ReIDEvaluator", "reid_metrics", "vehicleid_trials", "vehicleid_metrics", "reid",
           "REID_PROTOCOLS"]

REID_PROTOCOLS = ("market", "vehicleid")


def _ranks(dist, q_pids, g_pids, q_cams, g_cams):
    """Per evaluated query: (AP, 0-based rank of the first true match). Ties keep gallery order."""
    order = np.argsort(dist, axis=1, kind="stable")
    out = []
    for q in range(dist.shape[0]):
        g = order[q]
        match = g_pids[g] == q_pids[q]
        if q_cams is not None:
            match = match[~(match & (g_cams[g] == q_cams[q]))]
        hits = np.nonzero(match)[0]
        if len(hits):
            out.append((np.mean(np.arange(1, len(hits) + 1) / (hits + 1)), hits[0]))
    return out


def _summary(ranks, topk):
    n = len(ranks)
    if n == 0:
        return {"mAP": 0.0, **{f"top-{k}": 0.0 for k in topk}}, 0
    first = np.array([r[1] for r in ranks])
    res = {"mAP": 100.0 * float(np.mean([r[0] for r in ranks]))}
    res.update({f"top-{k}": 100.0 * float(np.mean(first < k)) for k in topk})
    return res, n


def _as_arrays(*xs):
    return [None if x is None else np.asarray(x) for x in xs]


def reid_metrics(dist, q_pids, g_pids, q_cams=None, g_cams=None, topk=(1, 5, 10)):
    """
    ``dist`` (Q, G) distances (smaller = more similar). Returns ({"mAP": %, "top-k": %...},
    number of queries evaluated). With cameras, same-id same-camera gallery entries are left out
    (Market protocol); without (None), every gallery entry counts.
    """
    q_pids, g_pids, q_cams, g_cams = _as_arrays(q_pids, g_pids, q_cams, g_cams)
    if (q_cams is None) != (g_cams is None):
        raise ValueError("give both query and gallery cameras, or neither")
    return _summary(_ranks(np.asarray(dist, dtype=np.float64), q_pids, g_pids, q_cams, g_cams),
                    topk)


def _feature_ranks(qf, gf, q_pids, g_pids, q_cams=None, g_cams=None, block=256):
    """``_ranks`` of squared Euclidean distances, computed ``block`` queries at a time so that
    MSMT17 (11659 x 82161) never holds the whole matrix."""
    out = []
    for s in range(0, len(qf), block):
        d = torch.cdist(qf[s:s + block].double(), gf.double()).pow(2).numpy()
        sl = slice(s, s + block)
        out += _ranks(d, q_pids[sl], g_pids, None if q_cams is None else q_cams[sl], g_cams)
    return out


def vehicleid_trials(pids, trials=10, seed=0):
    """[(query indexes, gallery indexes)] per trial: one random image per identity is the
    gallery, the others are queries. Trial t draws with ``RandomState(seed + t)``."""
    pids = np.asarray(pids)
    groups = [np.nonzero(pids == p)[0] for p in np.unique(pids)]
    out = []
    for t in range(trials):
        rng = np.random.RandomState(seed + t)
        gallery = np.sort(np.array([rng.choice(g) for g in groups], dtype=np.int64))
        query = np.setdiff1d(np.arange(len(pids)), gallery)
        out.append((query, gallery))
    return out


def _mean_trials(per_trial, topk):
    results = [_summary(r, topk) for r in per_trial]
    keys = results[0][0].keys()
    return {k: float(np.mean([r[0][k] for r in results])) for k in keys}, \
        int(round(np.mean([r[1] for r in results])))


def vehicleid_metrics(dist, pids, trials=10, seed=0, topk=(1, 5, 10)):
    """VehicleID protocol on an (N, N) distance matrix among all test images: the mean of
    ``reid_metrics`` (no camera filter) over ``vehicleid_trials``."""
    dist, pids = np.asarray(dist, dtype=np.float64), np.asarray(pids)
    return _mean_trials([_ranks(dist[np.ix_(q, g)], pids[q], pids[g], None, None)
                         for q, g in vehicleid_trials(pids, trials, seed)], topk)


class ReIDEvaluator(DatasetEvaluator):
    """
    Collects ``outputs[i]["feature"]`` (L2-normalized embedding) with each input's ``pid``,
    ``camid`` and ``reid_split`` ("query" / "gallery"; "test" under the vehicleid protocol),
    then ranks by Euclidean distance under ``protocol`` (default: the data set's metadata).
    """

    def __init__(self, dataset_name, topk=(1, 5, 10), distributed=True, protocol=None,
                 trials=10, seed=0):
        if protocol is None:
            protocol = MetadataCatalog.get(dataset_name).get("reid_protocol", "market") \
                if dataset_name else "market"
        if protocol not in REID_PROTOCOLS:
            raise ValueError(f"{dataset_name}: unknown reid_protocol {protocol!r}; "
                             f"known: {REID_PROTOCOLS}")
        self.dataset_name, self.topk, self.distributed = dataset_name, tuple(topk), distributed
        self.protocol, self.trials, self.seed = protocol, trials, seed
        self._logger = logging.getLogger(__name__)
        self.reset()

    def reset(self):
        self._items = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            self._items.append((inp["reid_split"], int(inp["pid"]), int(inp["camid"]),
                                out["feature"].detach().float().cpu(),
                                int(inp.get("index", len(self._items)))))

    def _market(self, items):
        q = [x for x in items if x[0] == "query"]
        g = [x for x in items if x[0] == "gallery"]
        if not q or not g:
            raise ValueError(f"{self.dataset_name}: re-ID evaluation needs query and gallery "
                             f"images, got {len(q)} queries and {len(g)} gallery images")
        ranks = _feature_ranks(torch.stack([x[3] for x in q]), torch.stack([x[3] for x in g]),
                               *_as_arrays([x[1] for x in q], [x[1] for x in g],
                                           [x[2] for x in q], [x[2] for x in g]))
        res, n = _summary(ranks, self.topk)
        self._logger.info("%s: %d queries evaluated of %d, %d gallery images",
                          self.dataset_name, n, len(q), len(g))
        return res

    def _vehicleid(self, items):
        if len(items) < 2:
            raise ValueError(f"{self.dataset_name}: the vehicleid protocol needs the test "
                             f"images of at least one identity, got {len(items)} images")
        items = sorted(items, key=lambda x: x[4])  # the draws must not depend on gather order
        feats, pids = torch.stack([x[3] for x in items]), np.array([x[1] for x in items])
        res, n = _mean_trials([_feature_ranks(feats[q], feats[g], pids[q], pids[g])
                               for q, g in vehicleid_trials(pids, self.trials, self.seed)],
                              self.topk)
        self._logger.info("%s: %d trials, %d identities, about %d queries each",
                          self.dataset_name, self.trials, len(np.unique(pids)), n)
        return res

    def evaluate(self):
        items = self._items
        if self.distributed:
            comm.synchronize()
            items = list(itertools.chain(*comm.gather(items, dst=0)))
            if not comm.is_main_process():
                return {}
        res = self._vehicleid(items) if self.protocol == "vehicleid" else self._market(items)
        return OrderedDict(reid=res)


@EVALUATOR_REGISTRY.register()
def reid(cfg, dataset_name, output_folder):
    return ReIDEvaluator(dataset_name)
