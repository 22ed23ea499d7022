"""
The student's train loader: every batch holds ``n_labeled`` human-labeled and ``n_pseudo``
pseudo-labeled images (``PSEUDO_RATIO`` = n_pseudo / n_labeled, 1:1 by default), drawn from two
independent resumable streams (each its own data set, sampler, seed and mapper). Every item
carries ``"stream": "labeled" | "pseudo"`` so the trainer can compute the two losses apart.

Both streams are detpre's resumable streams (``build.py``/``samplers.py``): ``set_start_iter``
continues each where it stopped, and ``refresh_pseudo`` (the PseudoLabel hook) swaps the pseudo
data set in place, continuing at the same position.
"""
import logging

from detectron2.data import DatasetFromList, get_detection_dataset_dicts

from .build import ResumableLoader, train_dataset_dicts
from .samplers import ResumableTrainingSampler, SeededMapDataset

__all__ = ["STREAMS", "split_batch", "TwoStreamLoader", "build_self_training_loader",
           "pseudo_dataset_dicts"]

STREAMS = ("labeled", "pseudo")
_PSEUDO_SEED_OFFSET = 7_777  # the pseudo stream's seed differs from the labeled one's


def split_batch(total, ratio):
    """``(n_labeled, n_pseudo)`` with ``n_pseudo / n_labeled`` closest to ``ratio``, both >= 1."""
    if total < 2:
        raise ValueError(f"SOLVER.IMS_PER_BATCH={total}: self-training needs >= 2 (both streams)")
    if not ratio > 0:
        raise ValueError(f"MODEL.SELF_TRAINING.PSEUDO_RATIO={ratio}: must be positive")
    n_pseudo = int(round(total * ratio / (1.0 + ratio)))
    n_pseudo = min(max(n_pseudo, 1), total - 1)
    return total - n_pseudo, n_pseudo


class _Stream:
    """One resumable stream: dicts -> (sampler, seeded mapped dataset) -> batches of ``batch_size``."""

    def __init__(self, dicts, mapper, batch_size, seed, grouping, num_workers):
        self.mapper, self.batch_size, self.seed = mapper, batch_size, seed
        self.grouping, self.num_workers = grouping, num_workers
        self.reset(dicts, start_iter=0)

    def reset(self, dicts, start_iter):
        sampler = ResumableTrainingSampler(len(dicts), shuffle=True, seed=self.seed)
        dataset = SeededMapDataset(DatasetFromList(dicts, copy=False), self.mapper, sampler.seed)
        self.loader = ResumableLoader(dataset, sampler, self.batch_size, self.grouping, self.num_workers)
        self.loader.set_start_iter(start_iter)
        self.size = len(dicts)


class TwoStreamLoader:
    """Iterable of mixed batches: the labeled items first, then the pseudo-labeled ones."""

    def __init__(self, labeled, pseudo):
        self.streams = {"labeled": labeled, "pseudo": pseudo}
        self.start_iter = 0
        self._consumed = 0  # batches yielded since start_iter
        self._pending = None  # new pseudo dicts to switch to before the next batch

    @property
    def batch_sizes(self):
        return {k: s.batch_size for k, s in self.streams.items()}

    def set_start_iter(self, start_iter):
        self.start_iter, self._consumed = int(start_iter), 0
        for s in self.streams.values():
            s.loader.set_start_iter(self.start_iter)

    def refresh_pseudo(self, dicts):
        """Use ``dicts`` for the pseudo stream from the next batch on (same stream position)."""
        if not dicts:
            raise ValueError("refresh_pseudo: the new pseudo-labeled data set is empty")
        self._pending = list(dicts)

    def __iter__(self):
        its = {k: iter(s.loader) for k, s in self.streams.items()}
        while True:
            if self._pending is not None:
                self.streams["pseudo"].reset(self._pending, self.start_iter + self._consumed)
                its["pseudo"] = iter(self.streams["pseudo"].loader)
                self._pending = None
            batch = []
            for name in STREAMS:
                items = next(its[name])
                for d in items:
                    d["stream"] = name
                batch.extend(items)
            self._consumed += 1
            yield batch


def pseudo_dataset_dicts(names, filter_empty):
    if not names:
        raise ValueError("MODEL.SELF_TRAINING.ENABLED but MODEL.SELF_TRAINING.PSEUDO_DATASETS is empty: name "
                         "the registered pseudo-labeled data set(s) (tools/generate_pseudo_labels.py)")
    return get_detection_dataset_dicts(list(names), filter_empty=filter_empty)


def build_self_training_loader(cfg, labeled_mapper=None, pseudo_mapper=None):
    """
    The two-stream loader of a ``MODEL.SELF_TRAINING.ENABLED`` config: DATASETS.TRAIN (labeled) and
    MODEL.SELF_TRAINING.PSEUDO_DATASETS, mapped by ``StrongAugMapper`` at INPUT.SELF_TRAINING.LABELED_AUGMENT / AUGMENT.
    """
    from .mappers.self_training import StrongAugMapper

    st, aug = cfg.MODEL.SELF_TRAINING, cfg.INPUT.SELF_TRAINING
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        logging.getLogger(__name__).warning(
            "self-training uses its own resumable TrainingSampler; DATALOADER.SAMPLER_TRAIN=%s "
            "is ignored", cfg.DATALOADER.SAMPLER_TRAIN)
    n_lab, n_pse = split_batch(cfg.SOLVER.IMS_PER_BATCH, st.PSEUDO_RATIO)
    labeled_mapper = labeled_mapper or StrongAugMapper(
        cfg, True, level=aug.LABELED_AUGMENT or aug.AUGMENT)
    pseudo_mapper = pseudo_mapper or StrongAugMapper(cfg, True, level=aug.AUGMENT)
    seed_p = cfg.SEED + _PSEUDO_SEED_OFFSET if cfg.SEED >= 0 else None
    common = dict(grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING, num_workers=cfg.DATALOADER.NUM_WORKERS)
    labeled = _Stream(train_dataset_dicts(cfg), labeled_mapper, n_lab, cfg.SEED, **common)
    pseudo = _Stream(pseudo_dataset_dicts(st.PSEUDO_DATASETS, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS),
                     pseudo_mapper, n_pse, seed_p, **common)
    logging.getLogger(__name__).info(
        "self-training loader: %d labeled (%d images) + %d pseudo-labeled (%d images) per batch",
        n_lab, labeled.size, n_pse, pseudo.size)
    return TwoStreamLoader(labeled, pseudo)
