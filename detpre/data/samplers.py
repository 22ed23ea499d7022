"""
A training stream that ``--resume`` continues where it stopped.

detectron2 v0.6 restarts its sampler from the beginning on resume and seeds augmentation per
worker, so a resumed run sees other samples and other augmentations than an uninterrupted one.
Here every sample carries its position in the stream: the position picks the index (detectron2's
``TrainingSampler`` order) and seeds the mapper's ``np.random``/``random``/torch generator for
that call only (``seeded_rngs``), so a run resumed at iteration ``i`` maps exactly what the
uninterrupted run mapped from iteration ``i`` on.
"""
import contextlib
import itertools
import random

import numpy as np
import torch
from detectron2.utils import comm
from torch.utils.data import Dataset, Sampler

from .image_io import BAD_IMAGES_KEY, bad_image_of

__all__ = ["ResumableTrainingSampler", "SeededMapDataset", "IdentityBalancedSampler", "sample_seed",
           "seeded_rngs"]


def sample_seed(seed, position):
    """The RNG seed of the sample at global ``position`` of a stream seeded with ``seed``."""
    return (int(seed) * 1_000_003 + int(position) * 7_919 + 17) % (2**32)


@contextlib.contextmanager
def seeded_rngs(seed):
    """Inside the block ``np.random``, ``random`` and torch's default (CPU) generator are seeded
    with ``seed``; after it each is back in the state it had, so mapping a sample leaves the
    process's own random streams (the trainer's, with 0 workers) as they were."""
    saved = np.random.get_state(), random.getstate(), torch.random.default_generator.get_state()
    np.random.seed(seed % 2**32)
    random.seed(seed)
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved[0])
        random.setstate(saved[1])
        torch.random.default_generator.set_state(saved[2])


class ResumableTrainingSampler(Sampler):
    """
    detectron2's ``TrainingSampler`` index order (an infinite stream of shuffled epochs), yielding
    ``(global_position, index)``; rank ``r`` of ``W`` takes positions ``r, r + W, ...`` from
    ``start`` (a per-rank count of samples already consumed, set on resume).
    """

    def __init__(self, size, shuffle=True, seed=None):
        if size <= 0:
            raise ValueError(f"training set is empty (size={size}): check DATASETS.TRAIN")
        self._size, self._shuffle = int(size), shuffle
        self.seed = int(comm.shared_random_seed() if seed is None or seed < 0 else seed)
        self._rank, self._world = comm.get_rank(), comm.get_world_size()
        self.start = 0

    def set_start_iter(self, start_iter, total_batch_size):
        """Continue at training iteration ``start_iter`` of batches of ``total_batch_size``
        (over all processes): skip this process's share of the samples before it."""
        self.start = int(start_iter) * (int(total_batch_size) // self._world)

    def _infinite_indices(self):
        g = torch.Generator()
        g.manual_seed(self.seed)
        while True:
            if self._shuffle:
                yield from torch.randperm(self._size, generator=g).tolist()
            else:
                yield from range(self._size)

    def __iter__(self):
        first = self.start * self._world + self._rank
        stream = itertools.islice(self._infinite_indices(), first, None, self._world)
        for k, idx in enumerate(stream):
            yield first + k * self._world, idx


class SeededMapDataset(Dataset):
    """``dataset[(position, index)]`` = ``mapper(dataset[index])`` with the RNGs seeded by position
    for the call (``seeded_rngs``).
    A sample the mapper drops (returns None) or whose image cannot be read (``OSError``) is
    replaced by the next index, deterministically; the unreadable files ride along in the sample
    under ``BAD_IMAGES_KEY`` for the loader's ``BadImageLog``."""

    def __init__(self, dataset, mapper, seed):
        self.dataset, self.mapper, self.seed = dataset, mapper, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        position, idx = key
        bad = []
        # at least a few tries: a mapper that draws other images too (jigsaw) may fail on any index
        for attempt in range(max(len(self.dataset), 16)):
            record = self.dataset[(idx + attempt) % len(self.dataset)]
            try:
                with seeded_rngs(sample_seed(self.seed, position) + attempt):
                    out = self.mapper(record)
            except OSError as e:  # missing / truncated / not an image
                bad.append(bad_image_of(e, record))
                continue
            if out is not None:
                if bad and isinstance(out, dict):
                    out[BAD_IMAGES_KEY] = bad
                return out
        if bad:
            raise RuntimeError(f"no training image could be read; e.g. {bad[0][0]}: {bad[0][1]}")
        raise RuntimeError("the mapper dropped every sample of the training set")


class IdentityBalancedSampler(ResumableTrainingSampler):
    """
    SpCL's domain-adaptive batches in the resumable stream: every per-process batch of
    ``batch_size`` holds ``batch_size // 2`` source images, P identities x ``num_instances`` each
    (SpCL's ``RandomMultipleGallerySampler``: identities in a random order, K images of each,
    drawn with replacement when an identity has fewer), then as many target images at random
    (shuffled epochs). Batches are numbered globally and process ``r`` takes batches
    ``r, r + W, ...``; a sample's position is ``batch * batch_size + slot``, which seeds its
    mapping as in ``ResumableTrainingSampler`` (``start`` counts per-process samples).
    detectron2's loader deals samples round-robin to its ``num_workers`` workers, each batching
    its own share: the samples of ``num_workers`` consecutive batches are emitted interleaved so
    that each worker receives one whole batch, and the loader yields them in order.
    ``source_pids``: (dataset index, identity) pairs; ``target_indices``: dataset indices.
    """

    def __init__(self, source_pids, target_indices, batch_size, num_instances=4, seed=None,
                 num_workers=0):
        source_pids = {int(i): int(p) for i, p in source_pids}
        target = [int(i) for i in target_indices]
        half = batch_size // 2
        if not source_pids or not target or half < 1 or half % num_instances:
            raise ValueError(
                f"IdentityBalancedSampler: needs source and target images and a per-GPU batch "
                f"({batch_size}) whose half is a multiple of MODEL.SPCL.NUM_INSTANCES ({num_instances})")
        super().__init__(len(source_pids) + len(target), shuffle=True, seed=seed)
        self.batch_size, self.num_instances, self.half = int(batch_size), int(num_instances), half
        self.num_workers = max(1, int(num_workers))
        by_pid = {}
        for i, p in sorted(source_pids.items()):
            by_pid.setdefault(p, []).append(i)
        self._pids = sorted(by_pid)
        self._by_pid = [by_pid[p] for p in self._pids]
        self._target = target

    def _source_stream(self, g):
        k = self.num_instances
        while True:
            for p in torch.randperm(len(self._pids), generator=g).tolist():
                members = self._by_pid[p]
                if len(members) >= k:
                    pick = torch.randperm(len(members), generator=g)[:k].tolist()
                else:
                    pick = torch.randint(len(members), (k,), generator=g).tolist()
                yield from (members[j] for j in pick)

    def _target_stream(self, g):
        while True:
            for j in torch.randperm(len(self._target), generator=g).tolist():
                yield self._target[j]

    def _batches(self):
        gs, gt = torch.Generator(), torch.Generator()
        gs.manual_seed(self.seed)
        gt.manual_seed(self.seed + 1)
        src, tgt = self._source_stream(gs), self._target_stream(gt)
        n_t = self.batch_size - self.half
        while True:
            yield ([next(src) for _ in range(self.half)] + [next(tgt) for _ in range(n_t)])

    def __iter__(self):
        first_batch, skip = divmod(self.start, self.batch_size)
        if skip:
            raise ValueError(f"resume at {self.start} samples: not a whole number of batches "
                             f"of {self.batch_size}")
        batches = itertools.islice(self._batches(), first_batch * self._world + self._rank, None,
                                   self._world)
        numbered = ((((first_batch + b) * self._world + self._rank), batch)
                    for b, batch in enumerate(batches))
        while True:
            group = list(itertools.islice(numbered, self.num_workers))
            for slot in range(self.batch_size):
                for number, batch in group:
                    yield number * self.batch_size + slot, batch[slot]
