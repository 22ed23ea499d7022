import itertools

import numpy as np
from detectron2.data.samplers import TrainingSampler

from detpre.data.build import ResumableLoader
from detpre.data.samplers import ResumableTrainingSampler, SeededMapDataset


def test_sampler_follows_detectron2_order_and_positions():
    ours = ResumableTrainingSampler(7, shuffle=True, seed=3)
    d2 = TrainingSampler(7, shuffle=True, seed=3)
    got = list(itertools.islice(iter(ours), 20))
    assert [p for p, _ in got] == list(range(20))
    assert [i for _, i in got] == list(itertools.islice(iter(d2), 20))


def test_sampler_start_skips_consumed_samples():
    full = list(itertools.islice(iter(ResumableTrainingSampler(5, seed=1)), 30))
    s = ResumableTrainingSampler(5, seed=1)
    s.start = 12
    assert list(itertools.islice(iter(s), 18)) == full[12:]


def _random_mapper(d):
    # draws from np.random like detectron2 augmentations do
    return (d["id"], int(np.random.randint(1_000_000)))


def _loader(start_iter=None):
    dicts = [{"id": i} for i in range(6)]
    sampler = ResumableTrainingSampler(len(dicts), seed=5)
    ds = SeededMapDataset(dicts, _random_mapper, sampler.seed)
    loader = ResumableLoader(ds, sampler, total_batch_size=2, aspect_ratio_grouping=False, num_workers=0)
    it = iter(loader)  # like SimpleTrainer: iter() before resume_or_load
    if start_iter is not None:
        loader.set_start_iter(start_iter)
    return it


def test_resumed_stream_equals_uninterrupted_stream():
    full = list(itertools.islice(_loader(), 10))
    resumed = list(itertools.islice(_loader(start_iter=4), 6))
    assert resumed == full[4:]
    # augmentation randomness differs between samples (the seed depends on position)
    assert len({x[1] for batch in full for x in batch}) > 10


def test_dropped_sample_is_replaced_deterministically():
    dicts = [{"id": i} for i in range(4)]
    ds = SeededMapDataset(dicts, lambda d: None if d["id"] == 1 else d["id"], seed=0)
    assert ds[(3, 1)] == 2 and ds[(3, 1)] == ds[(3, 1)]


def test_mapping_a_sample_leaves_the_process_random_streams_alone():
    import random

    import numpy as np
    import torch

    def mapper(d):
        return (np.random.rand(), random.random(), torch.rand(1).item())

    ds = SeededMapDataset([{"id": i} for i in range(4)], mapper, seed=3)
    np.random.seed(11)
    random.seed(11)
    torch.manual_seed(11)
    expected = (np.random.rand(), random.random(), torch.rand(1).item())
    np.random.seed(11)
    random.seed(11)
    torch.manual_seed(11)
    first = ds[(5, 1)]
    assert (np.random.rand(), random.random(), torch.rand(1).item()) == expected  # untouched
    assert ds[(5, 1)] == first != ds[(6, 1)]  # seeded by position, torch's generator included
