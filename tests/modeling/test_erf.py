import numpy as np
import pytest
import torch
from torch import nn

from detpre.modeling.erf import (
    ERFTable,
    apply_floor,
    effective_receptive_field,
    grid_centres,
    location_regions,
    soft_labels,
)
from detpre.modeling.losses.soft_label_ce import SoftLabelCrossEntropy, soft_label_cross_entropy


def _ones_stack():
    """conv3x3 s1 -> conv3x3 s2 -> conv3x3 s1, all-ones weights, linear: RF 9 px, stride 2."""
    convs = [nn.Conv2d(1, 1, 3, s, 1, bias=False) for s in (1, 2, 1)]
    for c in convs:
        nn.init.ones_(c.weight)
    return nn.Sequential(*convs)


def test_erf_of_tiny_conv_stack_matches_analytic_receptive_field():
    net = _ones_stack()
    erf, (j, k) = effective_receptive_field(net, torch.zeros(2, 1, 21, 21))
    assert (j, k) == (5, 5)
    # paths from each input pixel: [1,1,1] * [1,1,1] = [1,2,3,2,1], then the s1 conv on the
    # stride-2 grid: * [1,0,1,0,1]
    k1d = np.convolve(np.convolve([1, 1, 1], [1, 1, 1]), [1, 0, 1, 0, 1]).astype(float)
    ref = np.zeros((21, 21))
    ref[6:15, 6:15] = np.outer(k1d, k1d)  # centred on input pixel 2 * 5 = 10, 9 px wide
    np.testing.assert_allclose(erf.numpy(), ref / ref.sum(), atol=1e-12)


def test_erf_support_inside_analytic_rf_with_relu_and_random_weights():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, 2, 1), nn.ReLU(),
                        nn.Conv2d(4, 5, 3, 1, 1))
    erf, (j, k) = effective_receptive_field(net, torch.randn(3, 3, 21, 21))
    outside = erf.clone()
    outside[6:15, 6:15] = 0
    assert outside.abs().sum() == 0 and erf[10, 10] > 0
    assert torch.isclose(erf.sum(), torch.tensor(1.0, dtype=erf.dtype))


def test_translated_shares_equal_direct_erf_shares_away_from_border():
    net = _ones_stack()
    size, stride = 24, 2
    table = ERFTable(2 * size, stride)
    erf, index = effective_receptive_field(net, torch.zeros(1, 1, 2 * size, 2 * size))
    table.set_erf(erf, index)
    regions = torch.tensor([[[0, 0, 10, 8], [10, 0, 24, 8], [0, 8, 10, 24], [10, 8, 24, 24]]],
                           dtype=torch.float32)
    shares = table.region_shares(regions, (12, 12), (size, size))[0]
    assert torch.allclose(shares.sum(-1), torch.ones(12, 12, dtype=shares.dtype))
    for j, k in [(3, 3), (4, 7), (6, 5), (8, 8), (3, 8)]:  # RF fully inside the montage
        direct, _ = effective_receptive_field(net, torch.zeros(1, 1, size, size), (j, k))
        want = [direct[y1:y2, x1:x2].sum().item() for x1, y1, x2, y2 in regions[0].long().tolist()]
        np.testing.assert_allclose(shares[j, k].numpy(), want, atol=1e-12)


def test_location_regions_uses_location_centres():
    regions = torch.tensor([[[0, 0, 8, 8], [8, 0, 16, 8], [0, 8, 8, 16], [8, 8, 16, 16]]]).float()
    c = grid_centres(4, 4)  # 2, 6, 10, 14
    own = location_regions(regions, c, c)
    assert own[0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    assert location_regions(regions[:, :1], c, c)[0, 3, 3] == -1
    # split at 9: the block centres 2, 6 | 10, 14 and a ResNet's i * stride 0, 4, 8 | 12 differ
    at9 = torch.tensor([[[0, 0, 9, 9], [9, 0, 16, 9], [0, 9, 9, 16], [9, 9, 16, 16]]]).float()
    assert location_regions(at9, c, c)[0, 0].tolist() == [0, 0, 1, 1]
    c0 = torch.arange(4.0) * 4
    assert location_regions(at9, c0, c0)[0].tolist() == [
        [0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 1], [2, 2, 2, 3]]


def test_floor_and_soft_labels_sum_to_one():
    torch.manual_seed(0)
    shares = torch.softmax(torch.randn(2, 3, 3, 4, dtype=torch.float64) * 3, -1)
    own = torch.randint(0, 4, (2, 3, 3))
    tau = 0.6
    w = apply_floor(shares, own, tau)
    mine = w.gather(-1, own[..., None])[..., 0]
    old = shares.gather(-1, own[..., None])[..., 0]
    assert torch.allclose(w.sum(-1), torch.ones(2, 3, 3, dtype=w.dtype))
    assert (mine >= tau - 1e-12).all()
    assert torch.equal(w[old >= tau], shares[old >= tau])  # already above the floor: unchanged
    # by hand: shares (0.1, 0.3, 0.6), own 0, tau 0.5 -> (0.5, 0.3 * 0.5 / 0.9, 0.6 * 0.5 / 0.9)
    hand = apply_floor(torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64), torch.tensor(0), 0.5)
    np.testing.assert_allclose(hand.numpy(), [0.5, 0.3 * 0.5 / 0.9, 0.6 * 0.5 / 0.9])
    labels = torch.tensor([[0, 2, 2, 5], [5, 1, 3, 0]])
    y = soft_labels(w, labels, 6)
    assert torch.allclose(y.sum(-1), torch.ones(2, 3, 3, dtype=y.dtype))
    np.testing.assert_allclose(y[0, ..., 2].numpy(), (w[0, ..., 1] + w[0, ..., 2]).numpy())
    with pytest.raises(ValueError):
        apply_floor(shares, own, 1.5)


def test_table_weights_respect_tau():
    net = _ones_stack()
    table = ERFTable(32, 2)
    table.set_erf(*effective_receptive_field(net, torch.zeros(1, 1, 32, 32)))
    regions = torch.tensor([[[0, 0, 4, 4], [4, 0, 16, 4], [0, 4, 4, 16], [4, 4, 16, 16]]]).float()
    w = table.location_weights(regions, (8, 8), (16, 16), tau=0.7)
    cy, cx = table.location_centres((8, 8))
    # the ones stack centres location i on input pixel 2 i (continuous centre 2 i + 0.5)
    assert torch.allclose(cy, torch.arange(8.0, dtype=cy.dtype) * 2 + 0.5)
    assert torch.allclose(cy, cx)
    own = location_regions(regions, cy, cx)
    assert torch.allclose(w.sum(-1), torch.ones_like(w.sum(-1)))
    assert (w.gather(-1, own[..., None]) >= 0.7 - 1e-12).all()
    assert table.num_refreshes == 1 and table.ready
    with pytest.raises(RuntimeError, match="no ERF"):
        ERFTable(32, 2).region_shares(regions, (8, 8), (16, 16))


def test_soft_label_ce_matches_numpy_and_hard_ce():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 7))
    t = rng.random((5, 7))
    t /= t.sum(1, keepdims=True)
    zs = z - z.max(1, keepdims=True)
    logp = zs - np.log(np.exp(zs).sum(1, keepdims=True))
    ref = -(t * logp).sum(1)
    got = soft_label_cross_entropy(torch.tensor(z), torch.tensor(t))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)
    hard = torch.tensor([1, 0, 6, 3, 3])
    onehot = nn.functional.one_hot(hard, 7).double()
    assert torch.isclose(SoftLabelCrossEntropy()(torch.tensor(z), onehot),
                         nn.functional.cross_entropy(torch.tensor(z), hard))
    with pytest.raises(ValueError):
        soft_label_cross_entropy(torch.zeros(2, 3), torch.zeros(2, 4))
