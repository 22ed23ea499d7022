import itertools
import os

import pytest
import torch
from detectron2.engine import HookBase, SimpleTrainer
from detectron2.modeling import build_model

import detpre.modeling.meta_arch.jigsaw  # noqa: F401  (registers JigsawPretrain)
from detpre.checkpoint import coverage_report, export_weights
from detpre.config import get_detpre_cfg
from detpre.engine.hooks import ERFRefresh

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cfg(mode="erf", size=64):
    cfg = get_detpre_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs/demo/jigsaw_R18_tiny.yaml"))
    cfg.MODEL.JIGSAW.MODE = mode
    cfg.INPUT.JIGSAW.SIZE = size
    return cfg


def _batch(n=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        c = 16 + 8 * i
        out.append({
            "image": torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8),
            "jigsaw_regions": torch.tensor([[0, 0, c, c], [c, 0, size, c], [0, c, c, size],
                                            [c, c, size, size]], dtype=torch.float32),
            "jigsaw_labels": torch.randint(0, 6, (4,), generator=g),
        })
    return out


def _model(mode="erf"):
    torch.manual_seed(0)
    model = build_model(_cfg(mode))
    model.train()
    return model


class _Record(HookBase):
    def __init__(self):
        self.counts, self.integrals = [], []

    def after_step(self):
        erf = self.trainer.model.erf
        self.counts.append(int(erf.num_refreshes))
        self.integrals.append(erf.integral.clone())


def test_erf_refreshed_every_k_iterations():
    model = _model()
    batch = _batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    trainer = SimpleTrainer(model, itertools.repeat(batch), opt)
    rec = _Record()
    trainer.register_hooks([ERFRefresh(period=3), rec])
    trainer.train(0, 7)
    assert rec.counts == [1, 1, 1, 2, 2, 2, 3]  # measured at iterations 0, 3 and 6
    assert torch.equal(rec.integrals[0], rec.integrals[2])  # kept between refreshes
    assert not torch.equal(rec.integrals[2], rec.integrals[3])  # re-measured on the new model
    # without the hook: measured once, at the first step
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = SimpleTrainer(model, itertools.repeat(batch), opt)
    trainer.train(0, 3)
    assert int(model.erf.num_refreshes) == 1


def test_erf_refresh_hook_rejects_other_models():
    trainer = SimpleTrainer(torch.nn.Linear(1, 1), [], torch.optim.SGD([torch.zeros(1)], lr=1))
    hook = ERFRefresh(period=2)
    hook.trainer = trainer
    with pytest.raises(TypeError, match="JigsawPretrain"):
        hook.before_train()
    with pytest.raises(ValueError):
        ERFRefresh(period=0)


@pytest.mark.parametrize("mode", ["erf", "block", "global"])
def test_a_few_iterations_lower_the_loss(mode):
    model = _model(mode)
    batch = _batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    losses = []
    for _ in range(8):
        loss = model(batch)["loss_jigsaw"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0], losses
    # every trainable parameter gets a gradient (DDP without find_unused_parameters)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_initial_loss_is_near_log_num_outputs():
    # the classifier starts near zero: every target is a distribution, so the loss ~ log(6)
    model = _model("erf")
    loss = model(_batch())["loss_jigsaw"].item()
    assert abs(loss - torch.log(torch.tensor(6.0)).item()) < 0.5


def test_rejects_wrong_montage_size_and_mode():
    model = _model()
    with pytest.raises(ValueError, match="INPUT.JIGSAW.SIZE"):
        model(_batch(size=96))
    with pytest.raises(ValueError, match="multiple"):
        build_model(_cfg(size=100))
    with pytest.raises(ValueError, match="MODE"):
        build_model(_cfg(mode="dense"))


def test_export_loads_into_the_demo_mask_rcnn():
    model = _model()
    weights = export_weights(model.state_dict(), "mask_rcnn")
    assert weights and all(k.startswith("backbone.bottom_up.") for k in weights)
    cfg = get_detpre_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs/demo/mask_rcnn_R18_FPN_tiny.yaml"))
    report = coverage_report(weights, build_model(cfg))
    assert not report["shape_mismatch"] and not report["unused"]
    assert not [k for k in report["random_init"] if k.startswith("backbone.bottom_up.")]


def test_every_location_belongs_to_exactly_one_region_on_the_demo_network():
    # the demo config as shipped (128 px montages): a ResNet centres output i near i * stride,
    # so the top row's measured ERF centre lies just above the image (y < 0); without clamping
    # it fell in no region and those locations got no loss
    torch.manual_seed(0)
    cfg = get_detpre_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs/demo/jigsaw_R18_tiny.yaml"))
    model = build_model(cfg)
    model.train()
    size = cfg.INPUT.JIGSAW.SIZE
    batch = _batch(n=4, size=size)
    model.refresh_erf(model.preprocess(batch))
    h = w = size // model.stride
    raw_y, raw_x = model.erf.location_centres((h, w))
    assert raw_y.min() < 0 or raw_x.min() < 0 or raw_y.max() >= size or raw_x.max() >= size
    regions = torch.stack([x["jigsaw_regions"] for x in batch])
    members = model._members(regions, torch.zeros(len(batch), 1, h, w))
    assert members.shape == (len(batch), 4, h, w)
    assert torch.equal(members.sum(1), torch.ones(len(batch), h, w))
    # and the floor goes to that same region
    weights = model.erf.location_weights(regions, (h, w), (size, size), model.tau)
    own = members.argmax(1)
    assert (weights.gather(-1, own[..., None].double().long()) >= model.tau - 1e-9).all()
