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
import logging
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
    SpCL's batches (the official ``RandomMultipleGallerySampler`` behind an ``IterLoader`` that
    is rebuilt every epoch) in the resumable stream. Each iteration's batch over all processes
    is W x ``batch_size``: W x ``batch_size // 2`` source images, then the rest target images
    (all target without a source domain: unsupervised SpCL); process ``r`` takes the r-th slice
    of each part, so what an iteration sees does not depend on W (the official code runs one
    process). Each domain is a stream of passes. A pass visits every identity (source: its label;
    target: its pseudo-label of ``set_target_labels``) in random order and emits an anchor image
    and ``num_instances - 1`` companions from the anchor's OTHER cameras (from its other images
    when it has one camera), drawn without replacement only when there are at least
    ``num_instances`` of them, as the official code does; an identity of one image (a target
    outlier, which the official pseudo-labelled set makes a class of its own) emits that image
    alone. A batch part is the next chunk of its stream; the tail of a pass shorter than a
    chunk is dropped (the official ``drop_last``; passes shorter than a chunk are joined).
    Training is cut into epochs of ``epoch_length`` iterations (SpCL's epoch: one clustering,
    ``MODEL.SPCL.CLUSTER_PERIOD``; 0 = one endless epoch): both streams restart at an epoch,
    seeded by (seed, epoch, domain), and its target passes use the labels set when the loader
    starts (``ClusterRefresh`` sets them and restarts the loader after every clustering). A
    batch is thus a function of (seed, iteration, the epoch's labels), so a resumed run draws
    what the uninterrupted one drew. A sample's position, which seeds its mapping as in
    ``ResumableTrainingSampler``, is ``(iteration * W + r) * batch_size + slot``.
    detectron2's loader deals samples round-robin to its ``num_workers`` workers, each batching
    its own share: the samples of ``num_workers`` consecutive batches are emitted interleaved so
    that each worker receives one whole batch, and the loader yields them in order.

    Args:
        source: ``(dataset index, identity[, camera])`` per source image (may be empty).
        target: ``(dataset index, label slot[, camera])`` per target image, or dataset indices
            (slot = position); ``set_target_labels`` gives one label per slot.
        batch_size: images per process and iteration.
    """

    def __init__(self, source, target, batch_size, num_instances=4, seed=None, num_workers=0,
                 epoch_length=0):
        source = [(int(e[0]), int(e[1]), e[2] if len(e) > 2 else 0) for e in source]
        target = [(int(e), k, 0) if np.ndim(e) == 0 else
                  (int(e[0]), int(e[1]), e[2] if len(e) > 2 else 0) for k, e in enumerate(target)]
        if not target or batch_size < 2 or num_instances < 1:
            raise ValueError(
                f"IdentityBalancedSampler: needs target images, a per-process batch of at least "
                f"2 (got {batch_size}) and MODEL.SPCL.NUM_INSTANCES >= 1 (got {num_instances})")
        super().__init__(len(source) + len(target), shuffle=True, seed=seed)
        self.batch_size, self.num_instances = int(batch_size), int(num_instances)
        self.num_workers = max(1, int(num_workers))
        self.epoch_length = max(0, int(epoch_length))
        self.source_share = self.batch_size // 2 if source else 0  # per process
        self._target = target
        self._source_groups = self._group((i, p, c) for i, p, c in source)
        self.set_target_labels(np.arange(max(t[1] for t in target) + 1))  # all singletons
        for name, n in (("source", self.source_share), ("target", self.batch_size - self.source_share)):
            if n and (n * self._world) % self.num_instances:
                logging.getLogger(__name__).warning(
                    "IdentityBalancedSampler: %d %s images per iteration are not a multiple of "
                    "MODEL.SPCL.NUM_INSTANCES=%d: identities straddle batches", n * self._world,
                    name, self.num_instances)

    @staticmethod
    def _group(items):
        """[(dataset indices, cameras)] per identity, identities in sorted order."""
        by_id = {}
        for i, ident, cam in items:
            by_id.setdefault(ident, ([], []))
            by_id[ident][0].append(i)
            by_id[ident][1].append(cam)
        return [by_id[k] for k in sorted(by_id)]

    def set_target_labels(self, labels):
        """Target classes = equal ``labels[slot]`` (the current pseudo-labels); a negative label
        (un-clustered) is a class of its own, as the official pseudo-labelled data set makes
        every outlier. Epochs the loader starts after this call sample by these classes."""
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        slots = [t[1] for t in self._target]
        if max(slots) >= len(labels):
            raise ValueError(f"{len(labels)} target labels for label slots up to {max(slots)}")
        top = int(labels.max()) + 1 if len(labels) else 0
        self._target_groups = self._group(
            (i, int(labels[k]) if labels[k] >= 0 else top + k, c) for i, k, c in self._target)

    def _one_pass(self, groups, rng):
        """One ``RandomMultipleGallerySampler`` pass over ``groups``."""
        k, out = self.num_instances, []
        for g in rng.permutation(len(groups)).tolist():
            members, cams = groups[g]
            a = int(rng.integers(len(members)))
            out.append(members[a])
            if k == 1 or len(members) == 1:
                continue  # a single image: the anchor alone
            pool = ([j for j, c in enumerate(cams) if c != cams[a]]
                    or [j for j in range(len(members)) if j != a])
            pick = rng.choice(len(pool), k - 1, replace=len(pool) < k)
            out.extend(members[pool[j]] for j in pick.tolist())
        return out

    def _chunks(self, groups, n, rng):
        buf = []
        while True:
            p = self._one_pass(groups, rng)
            if len(p) >= n:  # drop_last
                yield from (p[s:s + n] for s in range(0, len(p) - n + 1, n))
                continue
            buf.extend(p)  # a pass shorter than a chunk: join passes
            while len(buf) >= n:
                yield buf[:n]
                del buf[:n]

    def _iterations(self, first):
        """(iteration, source part, target part) of the global batches from ``first`` on."""
        length, n_s = self.epoch_length, self.source_share * self._world
        n_t = self.batch_size * self._world - n_s
        epoch = first // length if length else 0
        it = epoch * length
        while True:
            def rng(domain, epoch=epoch):
                return np.random.default_rng([self.seed, epoch, domain])

            src = self._chunks(self._source_groups, n_s, rng(0)) if n_s else None
            tgt = self._chunks(self._target_groups, n_t, rng(1))
            end = it + length if length else None
            while end is None or it < end:
                parts = next(src) if src is not None else [], next(tgt)
                if it >= first:
                    yield (it, *parts)
                it += 1
            epoch += 1

    def __iter__(self):
        first, skip = divmod(self.start, self.batch_size)
        if skip:
            raise ValueError(f"resume at {self.start} samples: not a whole number of batches "
                             f"of {self.batch_size}")
        r, w, ns = self._rank, self._world, self.source_share
        nt = self.batch_size - ns
        numbered = ((it * w + r, s[r * ns:(r + 1) * ns] + t[r * nt:(r + 1) * nt])
                    for it, s, t in self._iterations(first))
        while True:
            group = list(itertools.islice(numbered, self.num_workers))
            for slot in range(self.batch_size):
                for number, batch in group:
                    yield number * self.batch_size + slot, batch[slot]
