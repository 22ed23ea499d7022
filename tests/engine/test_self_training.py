"""Two-stream loader (mix ratio, resume, refresh) and the paper's loss normalization."""
import numpy as np
import pytest

from detpre.data.self_training import STREAMS, TwoStreamLoader, _Stream, split_batch
from detpre.engine.self_training import LossNormalizer


def _mapper(d):
    return {"id": d["id"], "r": float(np.random.rand())}


def _loader(n_lab, n_pse, lab=10, pse=30, seed=0):
    common = dict(grouping=False, num_workers=0)
    return TwoStreamLoader(
        _Stream([{"id": f"L{i}"} for i in range(lab)], _mapper, n_lab, seed, **common),
        _Stream([{"id": f"P{i}"} for i in range(pse)], _mapper, n_pse, seed + 1, **common))


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("total,ratio,expected", [(4, 1.0, (2, 2)), (8, 3.0, (2, 6)), (6, 0.5, (4, 2)),
                                                  (2, 100.0, (1, 1)), (3, 1.0, (1, 2))])
def test_split_batch(total, ratio, expected):
    assert split_batch(total, ratio) == expected


def test_split_batch_rejects_bad_input():
    with pytest.raises(ValueError):
        split_batch(1, 1.0)
    with pytest.raises(ValueError):
        split_batch(4, 0.0)


@pytest.mark.parametrize("n_lab,n_pse", [(2, 2), (1, 3), (3, 1)])
def test_every_batch_mixes_streams_at_the_ratio(n_lab, n_pse):
    for batch in _take(_loader(n_lab, n_pse), 12):
        tags = [d["stream"] for d in batch]
        assert tags == ["labeled"] * n_lab + ["pseudo"] * n_pse
        # items come from their own data set: the streams do not share a buffer
        assert all(d["id"][0] == ("L" if d["stream"] == "labeled" else "P") for d in batch)
    assert set(STREAMS) == {"labeled", "pseudo"}


def test_streams_cover_their_data_sets_independently():
    batches = _take(_loader(2, 2, lab=10, pse=30), 15)  # 30 labeled draws, 30 pseudo draws
    lab = [d["id"] for b in batches for d in b if d["stream"] == "labeled"]
    pse = [d["id"] for b in batches for d in b if d["stream"] == "pseudo"]
    assert sorted(set(pse)) == sorted(f"P{i}" for i in range(30))  # one full epoch of the pseudo set
    assert all(lab.count(f"L{i}") == 3 for i in range(10))  # three epochs of the labeled set


def test_resume_continues_both_streams():
    full = _take(_loader(2, 2), 8)
    resumed = _loader(2, 2)
    resumed.set_start_iter(5)
    assert _take(resumed, 3) == full[5:]


def test_refresh_pseudo_switches_only_the_pseudo_stream():
    loader = _loader(2, 2)
    it = iter(loader)
    before = [next(it) for _ in range(3)]
    loader.refresh_pseudo([{"id": f"N{i}"} for i in range(5)])
    after = [next(it) for _ in range(3)]
    assert all(d["id"][0] == "N" for b in after for d in b if d["stream"] == "pseudo")
    ref = _take(_loader(2, 2), 6)
    assert [d for b in after for d in b if d["stream"] == "labeled"] == \
        [d for b in ref[3:] for d in b if d["stream"] == "labeled"]
    assert before == ref[:3]
    with pytest.raises(ValueError):
        loader.refresh_pseudo([])


def test_loss_normalization_matches_reference():
    alpha, m = 2.0, 0.9
    norm = LossNormalizer(alpha, m)
    rng = np.random.RandomState(0)
    hs, ps = rng.uniform(0.5, 2.0, 20), rng.uniform(0.05, 0.3, 20)  # pseudo loss ~10x smaller
    for t, (lh, lp) in enumerate(zip(hs, ps)):
        norm.update(lh, lp)
        if t < 10:  # 1 / (1 - m) steps: the running mean
            avg_h, avg_p = hs[: t + 1].mean(), ps[: t + 1].mean()
        else:
            avg_h, avg_p = m * avg_h + (1 - m) * lh, m * avg_p + (1 - m) * lp
        total = norm.human_weight * lh + norm.pseudo_weight * lp
        expected = (lh + alpha * (avg_h / avg_p) * lp) / (1 + alpha)
        assert total == pytest.approx(expected, rel=1e-12)
    assert norm.human_weight == pytest.approx(1 / 3)


def test_near_zero_first_pseudo_loss_gives_a_bounded_weight():
    # the old rule (averages = the first values) gave w_p = 0.5 * 1.0 / 1e-12 = 5e11 on step 1
    norm = LossNormalizer(alpha=1.0, momentum=0.99, warmup=100)
    norm.update(1.0, 1e-12)
    assert norm.pseudo_weight == pytest.approx(0.5)  # warm-up: ratio 1
    weights = [norm.pseudo_weight]
    for _ in range(199):
        norm.update(1.0, 0.1)
        weights.append(norm.pseudo_weight)
    assert max(weights) < 0.5 * 10.0 * 1.02  # never far above the steady ratio avg_h/avg_p = 10
    # after the warm-up the average is the mean of 100 steps, the near-zero one 1/100 of it
    assert weights[100] == pytest.approx(0.5 * 1.0 / ((1e-12 + 99 * 0.1) / 100) , rel=1e-3)
    assert weights[-1] == pytest.approx(5.0, rel=1e-2)


def test_loss_normalization_balances_streams():
    # with constant losses the averages equal them: the pseudo term is a/(1+a) of L_h's scale
    norm = LossNormalizer(alpha=1.0, momentum=0.5)
    for _ in range(3):
        norm.update(3.0, 0.03)
    assert norm.pseudo_weight * 0.03 == pytest.approx(norm.human_weight * 3.0)
    off = LossNormalizer(alpha=0.5, enabled=False)
    assert (off.human_weight, off.pseudo_weight) == (1.0, 0.5)  # plain L_h + a * L_p


def test_loss_normalizer_state_round_trip():
    a = LossNormalizer(1.0, 0.9)
    a.update(2.0, 1.0)
    a.update(1.0, 0.5)
    b = LossNormalizer(1.0, 0.9)
    b.load_state_dict(a.state_dict())
    assert b.pseudo_weight == a.pseudo_weight
    b.update(3.0, 0.2)
    a.update(3.0, 0.2)
    assert (b.avg_h, b.avg_p, b.steps) == (a.avg_h, a.avg_p, 3)
    old = LossNormalizer(1.0, 0.9, warmup=5)  # a checkpoint from before the step count
    old.load_state_dict({"avg_h": 2.0, "avg_p": 0.5})
    assert old.pseudo_weight == pytest.approx(0.5 * 4.0)
    with pytest.raises(RuntimeError):
        LossNormalizer().pseudo_weight
