"""detpre.solver.lr_scheduler: the official codes' cosine after the warm-up, fixed-LR groups."""
import math

import pytest
import torch

from detpre.config import get_detpre_cfg
from detpre.solver import build_lr_scheduler, build_optimizer
from detpre.solver.lr_scheduler import GroupLRMultiplier, keep_lr_fixed


def _cfg(name="WarmupThenCosineLR", lr=8.0, factor=0.01, warmup=10, max_iter=100):
    cfg = get_detpre_cfg()
    s = cfg.SOLVER
    s.LR_SCHEDULER_NAME, s.BASE_LR, s.WARMUP_FACTOR = name, lr, factor
    s.WARMUP_ITERS, s.MAX_ITER, s.STEPS = warmup, max_iter, ()
    return cfg


def _lrs(cfg, model=None, groups=False):
    """The LR each iteration runs with (detectron2 steps the scheduler after every iteration)."""
    model = model or torch.nn.Linear(2, 2)
    opt = build_optimizer(cfg, model)
    sched = build_lr_scheduler(cfg, opt)
    out = []
    for _ in range(cfg.SOLVER.MAX_ITER):
        out.append([g["lr"] for g in opt.param_groups] if groups else opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_then_cosine_is_the_official_formula():
    """Linear warm-up from factor x LR over W iterations, then a half cosine over T - W."""
    T, W, f, lr = 100, 10, 0.01, 8.0
    got = _lrs(_cfg(lr=lr, factor=f, warmup=W, max_iter=T))
    for t, x in enumerate(got):
        want = lr * (f + (1 - f) * t / W) if t < W else lr * 0.5 * (1 + math.cos(math.pi * (t - W) / (T - W)))
        assert x == pytest.approx(want, rel=1e-6, abs=1e-9), t
    # SoCo's GradualWarmupScheduler (multiplier m = 100) + CosineAnnealingLR(T_max = T - W), written out
    m = 100
    for t in range(T):
        soco = lr / m * ((m - 1) * t / W + 1) if t <= W else lr * (1 + math.cos(math.pi * (t - W) / (T - W))) / 2
        assert got[t] == pytest.approx(soco, rel=1e-6, abs=1e-9), t


def test_detectron2s_cosine_is_lower_after_the_warmup():
    ours = _lrs(_cfg())
    d2 = _lrs(_cfg("WarmupCosineLR"))
    assert d2[50] < 0.86 * ours[50]  # ~15% lower at mid-run with 10 of 100 iterations of warm-up
    assert all(a <= b + 1e-9 for a, b in zip(d2[10:], ours[10:]))


def test_constant_warmup_and_no_warmup():
    got = _lrs(_cfg(factor=0.5, warmup=0))
    assert got[0] == pytest.approx(8.0) and got[50] == pytest.approx(4.0)
    cfg = _cfg(factor=0.5)
    cfg.SOLVER.WARMUP_METHOD = "constant"
    got = _lrs(cfg)
    assert got[:10] == pytest.approx([4.0] * 10) and got[10] == pytest.approx(8.0)


@pytest.mark.parametrize("name", ["WarmupThenCosineLR", "WarmupCosineLR", "WarmupMultiStepLR"])
def test_fixed_lr_groups_keep_their_lr_under_any_schedule(name):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model.fixed_lr_parameters = lambda: list(model[1].parameters())
    cfg = _cfg(name, lr=0.1, factor=0.25)
    cfg.SOLVER.STEPS = (50,)
    lrs = _lrs(cfg, model, groups=True)
    opt = build_optimizer(cfg, model)
    fixed = [i for i, g in enumerate(opt.param_groups) if g.get("fixed_lr")]
    in_fixed = {id(p) for i in fixed for p in opt.param_groups[i]["params"]}
    assert fixed and in_fixed == {id(p) for p in model[1].parameters()}
    plain = _lrs(cfg, torch.nn.Linear(2, 2))  # no fixed group: detectron2's schedule
    for t, row in enumerate(lrs):
        for i, lr in enumerate(row):
            assert lr == pytest.approx(0.1 if i in fixed else plain[t], rel=1e-6), (t, i)


def test_keep_lr_fixed_splits_groups_and_keeps_their_hyper_parameters():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [a, b], "lr": 0.3, "weight_decay": 0.1}], lr=1.0)
    keep_lr_fixed(opt, [b])
    assert [len(g["params"]) for g in opt.param_groups] == [1, 1]
    assert opt.param_groups[1]["fixed_lr"] and opt.param_groups[1]["params"][0] is b
    assert (opt.param_groups[1]["lr"], opt.param_groups[1]["weight_decay"]) == (0.3, 0.1)
    assert "fixed_lr" not in opt.param_groups[0]


def test_scheduler_state_resumes_and_the_trainer_uses_it():
    from detpre.engine.trainer import Trainer

    cfg = _cfg()
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(cfg, model)
    sched = Trainer.build_lr_scheduler(cfg, opt)
    assert isinstance(sched, GroupLRMultiplier)
    for _ in range(37):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = build_optimizer(cfg, model)
    sched2 = build_lr_scheduler(cfg, opt2)
    sched2.load_state_dict(state)
    opt2.step()
    sched2.step()
    opt.step()
    sched.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    with pytest.raises(ValueError, match="WARMUP_METHOD"):
        bad = _cfg()
        bad.SOLVER.WARMUP_METHOD = "cosine"
        build_lr_scheduler(bad, build_optimizer(bad, model))


def _paper(name):
    import os

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return get_detpre_cfg(os.path.join(repo, "configs", name)).SOLVER


def _multiplier(s):
    from detpre.solver.lr_scheduler import warmup_then_cosine

    sched = warmup_then_cosine(s.WARMUP_FACTOR, s.WARMUP_ITERS / s.MAX_ITER, s.WARMUP_METHOD)
    return lambda t: sched(t / s.MAX_ITER)


def test_paper_configs_give_the_official_lr_at_every_step():
    # Fast-MoCo, core/lr_scheduler/lambda_scheduler.py WCosConLR; iterations counted from 1
    s = _paper("fastmoco/fastmoco_R50_100ep.yaml")
    mult, W, T = _multiplier(s), 2503, 250300
    for t in list(range(0, 2600)) + list(range(2600, T, 997)):
        c = t + 1
        lr = (0.025 + (0.1 - 0.025) * (c - 1) / (W - 1) if c <= W
              else 0.1 * 0.5 * (1 + math.cos(math.pi * (c - W) / (T - W))))
        # the same up to one step in 247,797 of the cosine (< 1e-5 of the peak LR)
        assert 0.1 * mult(t) == pytest.approx(lr, abs=1e-6), t
    # MoCo v3, main_moco.py adjust_learning_rate(epoch + i / iters_per_epoch)
    s = _paper("fastmoco/mocov3_R50_100ep.yaml")
    mult, ipe = _multiplier(s), 312
    for t in range(0, 31200, 7):
        e = t / ipe
        lr = 9.6 * e / 10 if e < 10 else 9.6 * 0.5 * (1 + math.cos(math.pi * (e - 10) / 90))
        assert 9.6 * mult(t) == pytest.approx(lr, rel=1e-9, abs=1e-9), t
    # SoCo, contrast/lr_scheduler.py (eta_min 1e-6 left out: docs/recipes.md)
    for name, epochs in (("soco/soco_R50_FPN_100ep.yaml", 100), ("soco/soco_star_R50_FPN_400ep.yaml", 400)):
        s = _paper(name)
        mult, W, T = _multiplier(s), 6250, 625 * epochs
        for t in range(0, T, 13):
            lr = 8.0 / 100 * (99 * t / W + 1) if t <= W else 8.0 * (1 + math.cos(math.pi * (t - W) / (T - W))) / 2
            assert 8.0 * mult(t) == pytest.approx(lr, rel=1e-9, abs=1e-9), (name, t)
