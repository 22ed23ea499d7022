"""LARS: one step against a hand computation; biases/norm parameters excluded from wd and adaptation."""
import numpy as np
import pytest
import torch
from torch import nn

from detpre.config import get_detpre_cfg
from detpre.solver import build_optimizer
from detpre.solver.lars import LARS


def test_lars_two_steps_by_hand():
    p = nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = LARS([p], lr=0.5, momentum=0.9, weight_decay=0.1, eta=0.01)
    w, buf = np.array([3.0, 4.0]), np.zeros(2)
    for g in ([0.6, -0.8], [1.0, 2.0]):
        p.grad = torch.tensor(g)
        opt.step()
        d = np.array(g) + 0.1 * w
        trust = 0.01 * np.linalg.norm(w) / np.linalg.norm(d)
        buf = 0.9 * buf + trust * d
        w = w - 0.5 * buf
        assert p.detach().numpy() == pytest.approx(w, rel=1e-6)


def test_zero_weight_gets_trust_one():
    p = nn.Parameter(torch.zeros(3))
    opt = LARS([p], lr=0.1, momentum=0.0, eta=0.001)
    p.grad = torch.tensor([1.0, 2.0, 3.0])
    opt.step()
    assert p.detach().numpy() == pytest.approx([-0.1, -0.2, -0.3])


def test_build_optimizer_excludes_bias_and_norm():
    cfg = get_detpre_cfg()
    cfg.SOLVER.OPTIMIZER = "LARS"
    cfg.SOLVER.BASE_LR, cfg.SOLVER.MOMENTUM, cfg.SOLVER.WEIGHT_DECAY = 0.2, 0.0, 0.5
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, LARS)
    adapted = [g for g in opt.param_groups if g["lars_adapt"]]
    plain = [g for g in opt.param_groups if not g["lars_adapt"]]
    cfg.SOLVER.WEIGHT_DECAY_BIAS = 0.0
    opt = build_optimizer(cfg, model)
    adapted = [g for g in opt.param_groups if g["lars_adapt"]]
    plain = [g for g in opt.param_groups if not g["lars_adapt"]]
    assert [p.ndim for p in adapted[0]["params"]] == [2]
    assert sorted(p.ndim for g in plain for p in g["params"]) == [1, 1, 1]
    assert all(g["weight_decay"] == 0.0 for g in plain) and adapted[0]["weight_decay"] == 0.5
    # an excluded parameter takes a plain SGD step: no decay, no trust ratio
    bias = model[0].bias
    before = bias.detach().clone()
    for q in model.parameters():
        q.grad = torch.ones_like(q)
    opt.step()
    assert torch.allclose(bias.detach(), before - 0.2)


def test_lars_honours_detectron2_bias_and_norm_keys():
    cfg = get_detpre_cfg()
    cfg.SOLVER.OPTIMIZER, cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY = "LARS", 1.0, 0.5
    cfg.SOLVER.WEIGHT_DECAY_NORM, cfg.SOLVER.WEIGHT_DECAY_BIAS = 0.01, None  # None: WEIGHT_DECAY
    cfg.SOLVER.BIAS_LR_FACTOR, cfg.SOLVER.LARS.NON_ADAPTED_LR_FACTOR = 2.0, 0.03
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    groups = {(g["lars_adapt"], round(g["lr"], 6), g["weight_decay"]): g["params"]
              for g in build_optimizer(cfg, model).param_groups}
    assert groups[(True, 1.0, 0.5)] == [model[0].weight]
    assert groups[(False, 0.06, 0.5)] == [model[0].bias]  # 1.0 * 0.03 * BIAS_LR_FACTOR 2
    assert groups[(False, 0.03, 0.01)] == [model[1].weight, model[1].bias]
    # the factor scales the raw step of a norm parameter: lr 0.03, no trust ratio
    opt = build_optimizer(cfg, model)
    for q in model.parameters():
        q.grad = torch.ones_like(q)
    before = model[1].bias.detach().clone()
    opt.step()
    assert torch.allclose(model[1].bias.detach(), before - 0.03 * (1 + 0.01 * before))
