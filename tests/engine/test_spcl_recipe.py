"""SpCL's official recipe pieces: per-domain loss, last stride 1, P x K sampler, Adam + L2, configs."""
import itertools
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, ResNet

from detpre.config import get_detpre_cfg
from detpre.data.samplers import IdentityBalancedSampler
from detpre.modeling.memory import HybridMemory
from detpre.modeling.reid_encoder import set_last_stride

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _official_memory_loss(f, idx, features, labels, t):
    """SpCL's HybridMemory.forward: logits against every entry, summed per label and divided by
    the label's count, cross-entropy over labels that have entries."""
    logits = f @ features.T / t
    num = int(labels.max()) + 1
    sim = torch.zeros(num, len(f)).index_add_(0, labels, logits.T.contiguous())
    nums = torch.zeros(num, 1).index_add_(0, labels, torch.ones(len(labels), 1))
    mask = (nums > 0).float()
    sim = sim / (mask * nums + (1 - mask))
    masked = torch.exp(sim.T) * mask.T
    p = masked / (masked.sum(1, keepdim=True) + 1e-6)
    return F.nll_loss(torch.log(p + 1e-6), labels[idx])


def test_per_domain_loss_is_loss_s_plus_loss_t_of_the_official_memory():
    torch.manual_seed(0)
    mem = HybridMemory(8, num_source=3, num_target=5, temperature=0.5)  # eps-free probabilities
    mem.set_features(torch.randn(8, 8))
    mem.set_target_labels(torch.tensor([0, 0, 1, 2, 1]))
    mem.initialized.fill_(True)
    f = F.normalize(torch.randn(6, 8), dim=1)
    idx = torch.tensor([0, 2, 2, 3, 5, 7])
    dom = torch.tensor([0, 0, 0, 1, 1, 1])
    with torch.no_grad():
        both = mem(f, idx, dom).item()
        mean = mem(f, idx).item()
    ref = sum(_official_memory_loss(f[dom == d], idx[dom == d], mem.features, mem.labels, 0.5)
              for d in (0, 1)).item()
    assert both == pytest.approx(ref, rel=1e-4)
    assert mean == pytest.approx(_official_memory_loss(f, idx, mem.features, mem.labels, 0.5).item(),
                                 rel=1e-4)
    assert both == pytest.approx(2 * mean, rel=0.5) and both != pytest.approx(mean)


def test_last_stride_one_keeps_weights_and_halves_nothing_else():
    stem = BasicStem(3, 8, norm="BN")
    stages = [ResNet.make_stage(BasicBlock, 1, stride_per_block=[s], in_channels=i, out_channels=o,
                                norm="BN")
              for s, i, o in ((1, 8, 8), (2, 8, 16), (2, 16, 32), (2, 32, 64))]
    net = ResNet(stem, stages, out_features=["res5"])
    keys = {k: v.shape for k, v in net.state_dict().items()}
    x = torch.randn(1, 3, 64, 64)
    assert net(x)["res5"].shape[-2:] == (2, 2)
    set_last_stride(net, 1)
    assert {k: v.shape for k, v in net.state_dict().items()} == keys
    assert net(x)["res5"].shape[-2:] == (4, 4)
    assert net.output_shape()["res5"].stride == 16
    with pytest.raises(ValueError):
        set_last_stride(net, 3)


def _sampler(**kw):
    # 5 source identities of 2-3 images and one of a single image, 10 target images
    source = [(i, i % 5) for i in range(12)] + [(12, 9)]
    args = dict(source=source, target=range(100, 110), batch_size=8, num_instances=2, seed=3)
    args.update(kw)
    return IdentityBalancedSampler(**args)


def test_balanced_batches_are_p_by_k_source_then_target_and_resume_exactly(caplog):
    s = _sampler()
    stream = list(itertools.islice(iter(s), 8 * 20))
    pid = dict([(i, i % 5) for i in range(12)] + [(12, 9)])
    assert [p for p, _ in stream] == list(range(8 * 20))  # one process: positions 0, 1, 2, ...
    seen = []
    for b in range(20):
        batch = [i for _, i in stream[8 * b: 8 * b + 8]]
        src, tgt = batch[:4], batch[4:]
        assert all(i in pid for i in src) and all(100 <= i < 110 for i in tgt)
        seen += [pid[i] for i in src]
    assert set(seen) == {0, 1, 2, 3, 4, 9}  # every identity
    # a pass (11 images: 5 identities x 2, the single-image one alone, as the official sampler)
    # gives two batches' source halves; its tail is dropped
    assert seen.count(9) < seen.count(0) / 1.5
    resumed = _sampler()
    resumed.start = 8 * 7
    assert list(itertools.islice(iter(resumed), 8 * 13)) == stream[8 * 7:]
    # with 2 loader workers, two batches interleave so that each worker gets a whole one
    w = list(itertools.islice(iter(_sampler(num_workers=2)), 8 * 20))
    for worker in (0, 1):
        mine = w[worker::2]
        assert [i for _, i in mine[:8]] == [i for _, i in stream[8 * worker: 8 * worker + 8]]
    with caplog.at_level("WARNING"):
        _sampler(batch_size=6, num_instances=4)  # identities then straddle batches
    assert "NUM_INSTANCES" in caplog.text


def test_adam_is_coupled_l2_on_every_parameter():
    from detpre.solver.build import build_optimizer

    cfg = get_detpre_cfg(os.path.join(REPO, "configs/spcl/Base-SpCL.yaml"))
    assert cfg.SOLVER.OPTIMIZER == "Adam"
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    p0 = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    build_optimizer(cfg, model).step()
    lr, wd = cfg.SOLVER.BASE_LR, 5e-4
    for p, q in zip(model.parameters(), p0):
        g = 1.0 + wd * q  # L2 enters the gradient, then Adam's first step moves by lr * sign
        torch.testing.assert_close(p.detach(), q - lr * g / (g.abs() + 1e-8))


@pytest.mark.parametrize("name,period,uda", [
    ("spcl_uda_R50_market1501_to_msmt17.yaml", 800, True),
    ("spcl_uda_R50_msmt17_to_market1501.yaml", 400, True),
    ("spcl_usl_R50_msmt17.yaml", 800, False),
    ("spcl_usl_R50_market1501.yaml", 400, False),
])
def test_spcl_configs_carry_the_official_recipe(name, period, uda):
    cfg = get_detpre_cfg(os.path.join(REPO, "configs/spcl", name))
    c = cfg.MODEL.SPCL
    assert (c.CLUSTER_PERIOD, cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS) == (
        period, 50 * period, (20 * period, 40 * period))
    assert c.LAST_STRIDE == 1 and (c.K1, c.K2) == (30, 6)
    assert (cfg.SOLVER.OPTIMIZER, cfg.SOLVER.WEIGHT_DECAY) == ("Adam", 5e-4)
    assert c.DSBN == uda
    if uda:
        assert cfg.DATALOADER.SAMPLER_TRAIN == "IdentityBalancedSampler" and c.LOSS_PER_DOMAIN
        assert cfg.SOLVER.IMS_PER_BATCH == 128 and c.NUM_INSTANCES == 4


def test_train_loader_wires_the_balanced_sampler(tmp_path):
    from detectron2.data import DatasetCatalog

    from detpre.data.build import build_train_loader

    def dicts(name, n, pids):
        files = [tmp_path / f"{name}_{i}.jpg" for i in range(n)]
        for f in files:  # the loader checks up front that every image exists
            f.write_bytes(b"")
        return [{"file_name": str(f), "reid_dataset": name, "pid": pids(i), "index": i,
                 "image_id": i, "height": 8, "width": 4} for i, f in enumerate(files)]

    names = ("_pk_src", "_pk_tgt")
    for n in names:
        if n in DatasetCatalog.list():
            DatasetCatalog.remove(n)
    DatasetCatalog.register("_pk_src", lambda: dicts("_pk_src", 12, lambda i: i % 3))
    DatasetCatalog.register("_pk_tgt", lambda: dicts("_pk_tgt", 10, lambda i: -1))
    try:
        cfg = get_detpre_cfg()
        cfg.DATASETS.TRAIN = names
        cfg.MODEL.SPCL.SOURCE_DATASETS = ["_pk_src"]
        cfg.DATALOADER.SAMPLER_TRAIN = "IdentityBalancedSampler"
        cfg.DATALOADER.NUM_WORKERS, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = 0, False
        cfg.SOLVER.IMS_PER_BATCH, cfg.MODEL.SPCL.NUM_INSTANCES, cfg.SEED = 8, 2, 1
        batch = next(iter(build_train_loader(cfg, mapper=lambda d: d)))
        assert [d["reid_dataset"] for d in batch] == ["_pk_src"] * 4 + ["_pk_tgt"] * 4
        pids = [d["pid"] for d in batch[:4]]
        assert pids[0] == pids[1] != pids[2] == pids[3]
    finally:
        for n in names:
            DatasetCatalog.remove(n)
