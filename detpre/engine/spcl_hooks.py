"""
``ClusterRefresh``: SpCL's per-epoch step. Before training it fills the hybrid memory (source
class centroids from the mean feature of each identity, target instance features), and every
``period`` iterations it clusters the target entries (k-reciprocal Jaccard on a sparse k-NN
graph, DBSCAN, reliability criterion) and writes the pseudo-labels into the memory. The memory
(features and labels) is a model buffer and the independence threshold is hook state, so a
resumed run continues with the clustering it had. With the P x K loader
(``IdentityBalancedSampler``) the hook hands it the new labels and restarts it at the next
iteration, as the official code builds a new target loader after every clustering.
"""
import logging

import numpy as np
import torch
import torch.distributed as dist
from detectron2.config import configurable
from detectron2.data import DatasetCatalog, DatasetFromList, MapDataset
from detectron2.data.samplers import InferenceSampler
from detectron2.engine import HookBase
from detectron2.utils import comm

from detpre._compat import replace_data_loader_iter
from detpre.clustering import self_paced_cluster, sparse_jaccard_distance
from detpre.data.datasets.reid import reid_memory_layout
from detpre.data.mappers.reid import ReIDMapper
from detpre.data.samplers import IdentityBalancedSampler
from detpre.registry import HOOK_REGISTRY

from .hooks import unwrap_model

__all__ = ["ClusterRefresh", "extract_features"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def extract_features(model, dicts, mapper, domain=1, batch_size=64, num_workers=0):
    """Embeddings (len(dicts), D) of ``dicts`` in order, in eval mode, split over processes."""
    loader = torch.utils.data.DataLoader(
        MapDataset(DatasetFromList(dicts, copy=False), mapper),
        sampler=InferenceSampler(len(dicts)), batch_size=batch_size, num_workers=num_workers,
        collate_fn=lambda batch: batch)
    was_training = model.training
    model.eval()
    feats, order = [], []
    try:
        for batch in loader:
            feats.append(model.encode(model.preprocess(batch), domain).cpu())
            order.extend(b["_pos"] for b in batch)
    finally:
        model.train(was_training)
    feats = torch.cat(feats) if feats else torch.zeros(0)
    parts = comm.all_gather((order, feats)) if comm.get_world_size() > 1 else [(order, feats)]
    dim = next(f.shape[1] for _, f in parts if f.numel())
    out = torch.zeros(len(dicts), dim)
    for o, f in parts:
        if len(o):
            out[torch.as_tensor(o)] = f
    return out


class _Positioned:
    """Mapper wrapper that records each dict's position (for reassembly after sharding)."""

    def __init__(self, mapper):
        self.mapper = mapper

    def __call__(self, d):
        out = self.mapper(d)
        out["_pos"] = d["_pos"]
        return out


@HOOK_REGISTRY.register()
class ClusterRefresh(HookBase):
    @configurable
    def __init__(self, *, layout, mapper, period, k1=30, k2=6, eps=0.6, eps_gap=0.02,
                 min_samples=4, reliability=True, indep_quantile=0.9, extract="first",
                 batch_size=64, num_workers=0):
        if extract not in ("first", "every"):
            raise ValueError(f"MODEL.SPCL.EXTRACT={extract!r}: use 'first' or 'every'")
        self.layout, self.mapper, self.period = layout, _Positioned(mapper), int(period)
        self.k1, self.k2, self.eps, self.eps_gap = k1, k2, eps, eps_gap
        self.min_samples, self.reliability, self.indep_quantile = min_samples, reliability, indep_quantile
        self.extract, self.batch_size, self.num_workers = extract, batch_size, num_workers
        self.indep_thresh = None

    @classmethod
    def from_config(cls, cfg, trainer=None):
        c = cfg.MODEL.SPCL
        return {
            "layout": reid_memory_layout(cfg.DATASETS.TRAIN, c.SOURCE_DATASETS),
            "mapper": ReIDMapper(cfg, is_train=False), "period": c.CLUSTER_PERIOD,
            "k1": c.K1, "k2": c.K2, "eps": c.EPS, "eps_gap": c.EPS_GAP,
            "min_samples": c.MIN_SAMPLES, "reliability": c.RELIABILITY,
            "indep_quantile": c.INDEP_QUANTILE, "extract": c.EXTRACT,
            "batch_size": c.EXTRACT_BATCH_SIZE, "num_workers": cfg.DATALOADER.NUM_WORKERS,
        }

    # ---- state (the memory itself is in the model checkpoint) ----
    def state_dict(self):
        return {} if self.indep_thresh is None else {"indep_thresh": float(self.indep_thresh)}

    def load_state_dict(self, state):
        self.indep_thresh = state.get("indep_thresh")

    # ---- steps ----
    def _model(self):
        model = unwrap_model(self.trainer.model)
        memory = getattr(model, "memory", None)
        if memory is None:
            raise TypeError("DETPRE.HOOKS has ClusterRefresh but the model has no hybrid "
                            "`memory`; use MODEL.META_ARCHITECTURE: SpCL")
        if (memory.num_source, memory.num_target) != (self.layout.num_source, self.layout.num_target):
            raise ValueError(
                f"the model's memory has {memory.num_source} source / {memory.num_target} target "
                f"entries but DATASETS.TRAIN has {self.layout.num_source} source identities / "
                f"{self.layout.num_target} target images: set MODEL.SPCL.NUM_SOURCE_CLASSES and "
                "NUM_TARGET_INSTANCES to these numbers, or to 0 to count them")
        return model, memory

    def _dicts(self, name):
        return [dict(d, _pos=i) for i, d in enumerate(DatasetCatalog.get(name))]

    def _extract_target(self, model, memory):
        for name, _, offset, _ in self.layout.target_entries():
            f = extract_features(model, self._dicts(name), self.mapper, 1, self.batch_size,
                                 self.num_workers)
            memory.set_features(f.to(memory.features.device), offset)

    def initialize(self):
        """Source centroids = normalized mean feature per identity; target = each image's."""
        model, memory = self._model()
        for name, _, offset, size in self.layout.source_entries():
            dicts = self._dicts(name)
            f = extract_features(model, dicts, self.mapper, 0, self.batch_size, self.num_workers)
            pids = torch.tensor([d["pid"] for d in dicts])
            sums = torch.zeros(size, f.shape[1]).index_add_(0, pids, f)
            memory.set_features((sums / torch.bincount(pids, minlength=size)[:, None]).to(
                memory.features.device), offset)
        self._extract_target(model, memory)
        memory.initialized.fill_(True)

    def refresh(self):
        """Cluster the target memory entries and store the pseudo-labels (all processes)."""
        model, memory = self._model()
        if self.extract == "every" and memory.initialized:
            self._extract_target(model, memory)
        result = [None]
        if comm.is_main_process():
            feats = memory.features[memory.num_source:].detach().float().cpu()
            graph = sparse_jaccard_distance(feats, self.k1, self.k2, max_dist=self.eps + self.eps_gap)
            result = [self_paced_cluster(graph, self.eps, self.eps_gap, self.min_samples,
                                         self.indep_thresh, self.indep_quantile, self.reliability)]
        if comm.get_world_size() > 1:
            dist.broadcast_object_list(result, src=0)
        labels, stats = result[0]
        memory.set_target_labels(torch.from_numpy(np.asarray(labels)))
        self.indep_thresh = stats["indep_thresh"]
        storage = self.trainer.storage
        storage.put_scalars(spcl_clusters=stats["clusters"], spcl_outliers=stats["outliers"],
                            spcl_kept=stats["kept"], smoothing_hint=False)
        logger.info("SpCL clustering at iteration %d: %d clusters, %d kept, %d outliers of %d "
                    "(independence threshold %s)", self.trainer.iter, stats["clusters"],
                    stats["kept"], stats["outliers"], len(labels), stats["indep_thresh"])
        return stats

    def follow_labels(self, memory, start_iter):
        """Give the train loader's P x K sampler the memory's target labels and restart the loader
        at ``start_iter``: batches drawn ahead (loader workers prefetch) with the old labels are
        dropped, so iteration ``start_iter`` on samples by the new ones, resumed or not. A loader
        without that sampler (random batches) is left alone."""
        step = getattr(self.trainer, "_trainer", self.trainer)  # DefaultTrainer -> SimpleTrainer
        loader = getattr(step, "data_loader", None)
        sampler = getattr(loader, "sampler", None)
        if not isinstance(sampler, IdentityBalancedSampler):
            return
        sampler.set_target_labels((memory.labels[memory.num_source:] - memory.num_source).cpu().numpy())
        loader.set_start_iter(start_iter)
        old = replace_data_loader_iter(step, iter(loader))
        if hasattr(old, "close"):  # ends the old loader's worker processes now
            old.close()

    def before_train(self):
        _, memory = self._model()
        if self.trainer.iter == 0 or not bool(memory.initialized):
            self.initialize()
            self.refresh()
        self.follow_labels(memory, self.trainer.iter)  # resumed: the checkpoint's labels

    def after_step(self):
        nxt = self.trainer.iter + 1
        if self.period > 0 and nxt % self.period == 0 and nxt < self.trainer.max_iter:
            self.refresh()
            self.follow_labels(self._model()[1], nxt)
