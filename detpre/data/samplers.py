"""
A training stream that ``--resume`` continues where it stopped.

detectron2 v0.6 restarts its sampler from the beginning on resume and seeds augmentation per
worker, so a resumed run sees other samples and other augmentations than an uninterrupted one.
Here every sample carries its position in the stream: the position picks the index (detectron2's
``TrainingSampler`` order) and seeds the mapper's ``np.random``/``random``, so a run resumed at
iteration ``i`` maps exactly what the uninterrupted run mapped from iteration ``i`` on.
"""
import itertools
import random

import numpy as np
import torch
from detectron2.utils import comm
from torch.utils.data import Dataset, Sampler

from .image_io import BAD_IMAGES_KEY, bad_image_of

__all__ = ["ResumableTrainingSampler", "SeededMapDataset", "sample_seed"]


def sample_seed(seed, position):
    """The RNG seed of the sample at global ``position`` of a stream seeded with ``seed``."""
    return (int(seed) * 1_000_003 + int(position) * 7_919 + 17) % (2**32)


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
    """``dataset[(position, index)]`` = ``mapper(dataset[index])`` with the RNGs seeded by position.
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
            s = sample_seed(self.seed, position) + attempt
            np.random.seed(s % 2**32)
            random.seed(s)
            record = self.dataset[(idx + attempt) % len(self.dataset)]
            try:
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
