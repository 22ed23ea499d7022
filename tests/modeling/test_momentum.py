"""MomentumTarget, BYOL's momentum schedule and the MomentumUpdate hook (incl. resuming)."""
import math

import pytest
import torch
from detectron2.engine import SimpleTrainer
from torch import nn

from detpre.engine.hooks import MomentumUpdate
from detpre.modeling.momentum import MomentumTarget, momentum_at


class Tiny(nn.Module):
    """An online net with a nested head and its momentum target, returning a loss dict."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(3, 4)
        self.heads = nn.Module()
        self.heads.proj = nn.Sequential(nn.Linear(4, 2), nn.BatchNorm1d(2))
        self.target = MomentumTarget(self, ["backbone", "heads.proj"])

    def forward(self, batch):
        return {"loss": self.heads.proj(self.backbone(batch)).pow(2).mean()}


def test_target_copies_under_the_same_paths_without_grad():
    torch.manual_seed(0)
    model = Tiny()
    keys = model.state_dict().keys()
    assert {"target.backbone.weight", "target.heads.proj.0.weight", "target.heads.proj.1.running_mean"} <= set(keys)
    assert all(not p.requires_grad for p in model.target.parameters())
    assert torch.equal(model.target.backbone.weight, model.backbone.weight)
    assert model.target.backbone.weight.data_ptr() != model.backbone.weight.data_ptr()


def test_update_is_the_ema_rule_and_copy_from_copies():
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.mul_(3).add_(1)
    old = model.target.backbone.weight.clone()
    model.target.update(model, 0.75)
    assert torch.allclose(model.target.backbone.weight, 0.75 * old + 0.25 * model.backbone.weight)
    model.target.copy_from(model)
    assert torch.equal(model.target.heads.proj[0].bias, model.heads.proj[0].bias)


def test_momentum_schedule():
    assert momentum_at(0, 100, 0.99) == pytest.approx(0.99)
    assert momentum_at(100, 100, 0.99) == pytest.approx(1.0)
    assert momentum_at(50, 100, 0.99) == pytest.approx(0.995)
    assert momentum_at(25, 100, 0.99) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)
    assert momentum_at(250, 100, 0.99) == pytest.approx(1.0)  # clamped
    assert momentum_at(30, 100, 0.9, schedule="constant") == 0.9
    with pytest.raises(ValueError, match="SCHEDULE"):
        momentum_at(1, 10, 0.9, schedule="linear")


def _train(model, start, stop, max_iter, batches, opt_state=None):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    trainer = SimpleTrainer(model, iter(batches[start:stop]), opt)
    trainer.register_hooks([MomentumUpdate(base=0.9, end=1.0, max_iter=max_iter)])
    trainer.train(start, stop)
    return opt


def test_hook_follows_the_schedule_and_resumes_exactly():
    torch.manual_seed(0)
    batches = [torch.randn(8, 3) for _ in range(6)]
    model = Tiny()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    # replay by hand: after step i the target moves with momentum_at(i + 1)
    ref = Tiny()
    ref.load_state_dict(init)
    opt = torch.optim.SGD([p for p in ref.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    for i, b in enumerate(batches):
        opt.zero_grad()
        ref(b)["loss"].backward()
        opt.step()
        ref.target.update(ref, momentum_at(i + 1, 6, 0.9))
    _train(model, 0, 6, 6, batches)
    for k, v in ref.state_dict().items():
        assert torch.allclose(model.state_dict()[k], v, atol=1e-6), k
    # stop after 3 iterations, restore model + optimizer in fresh objects, continue to 6
    half = Tiny()
    half.load_state_dict(init)
    opt = _train(half, 0, 3, 6, batches)
    resumed = Tiny()
    resumed.load_state_dict(half.state_dict())
    _train(resumed, 3, 6, 6, batches, opt.state_dict())
    for k, v in model.state_dict().items():
        assert torch.allclose(resumed.state_dict()[k], v, atol=1e-6), k


def test_hook_refuses_a_model_without_target():
    trainer = SimpleTrainer(nn.Linear(2, 2), iter([]), torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))
    trainer.register_hooks([MomentumUpdate(base=0.9, end=1.0, max_iter=1)])
    with pytest.raises(TypeError, match="MomentumTarget"):
        trainer.train(0, 1)


def test_copy_from_syncs_parameters_and_bn_statistics():
    import torch
    from torch import nn

    from detpre.modeling.momentum import MomentumTarget

    model = nn.Module()
    model.backbone = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    model.target = MomentumTarget(model, ["backbone"])
    with torch.no_grad():  # as MODEL.WEIGHTS loading the online keys only
        for p in model.backbone.parameters():
            p.add_(1.0)
        model.backbone[1].running_mean.fill_(3.0)
    model.target.copy_from(model)
    for name, t in model.target.backbone.state_dict().items():
        assert torch.equal(t, model.backbone.state_dict()[name]), name


def test_fresh_target_is_its_own_network_and_start_keeps_it():
    """Fast-MoCo's TARGET_INIT "random": modules built on their own replace the copies."""
    torch.manual_seed(0)
    model = Tiny()
    fresh = {"backbone": nn.Linear(3, 4), "heads.proj": nn.Sequential(nn.Linear(4, 2), nn.BatchNorm1d(2))}
    model.target = MomentumTarget(model, ["backbone", "heads.proj"], fresh=fresh)
    assert model.target.init == "random" and model.target.backbone is fresh["backbone"]
    assert not any(p.requires_grad for p in model.target.parameters())
    w = model.target.backbone.weight.clone()
    assert not torch.equal(w, model.backbone.weight)
    model.target.start(model)  # a fresh run: kept as built
    assert torch.equal(model.target.backbone.weight, w)
    model.target.update(model, 0.5)  # then the EMA pulls it towards the online network
    assert torch.allclose(model.target.backbone.weight, 0.5 * w + 0.5 * model.backbone.weight)
    copy = Tiny()
    with torch.no_grad():
        copy.target.backbone.weight.add_(1)
    copy.target.start(copy)  # "copy": becomes the online network
    assert copy.target.init == "copy" and torch.equal(copy.target.backbone.weight, copy.backbone.weight)
    with pytest.raises(ValueError, match="fresh"):
        MomentumTarget(model, ["backbone", "heads.proj"], fresh={"backbone": nn.Linear(3, 4)})
    with pytest.raises(AssertionError, match="structure"):
        MomentumTarget(model, ["backbone"], fresh={"backbone": nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4))})
