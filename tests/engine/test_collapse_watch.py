"""CollapseWatch: the effective dimension of a known spectrum, a collapse caught while it happens
(warning with the config keys, scalars), the model left as it was, and the start kept on resume."""
import json
import logging
import math
import os

import numpy as np
import pytest
import torch
from _reliability_data import random_images, register_list, tiny_cfg
from detectron2.engine import HookBase, SimpleTrainer
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import build_resnet_backbone
from torch import nn

from detpre.config import get_detpre_cfg
from detpre.engine import Trainer
from detpre.engine.collapse import CollapseWatch, collapse_advice, read_watch_images
from detpre.evaluation.feature_dimension import feature_dimension, participation_ratio
from detpre.modeling.backbone import BottomUpContainer

MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def test_known_spectrum_by_hand():
    # samples whose channel covariance is exactly diag(4, 2, 1, 1, 0, 0) in a rotated basis:
    # participation ratio (sum l)^2 / sum l^2 = 8^2 / (16 + 4 + 1 + 1) = 64 / 22
    g = torch.Generator().manual_seed(0)
    n, lam = 48, torch.tensor([4.0, 2.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    a = torch.randn(n, 6, generator=g, dtype=torch.float64)
    q = torch.linalg.qr(a - a.mean(0))[0]  # orthonormal columns, each of mean 0
    rot = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0]
    x = (q * (lam * (n - 1)).sqrt()) @ rot.t()
    assert torch.allclose(torch.cov(x.t()), rot @ torch.diag(lam) @ rot.t(), atol=1e-9)
    assert participation_ratio(x) == pytest.approx(64 / 22, rel=1e-9)
    # the same samples as (N, C, H, W) maps: 48 = 3 images x 4 x 4 locations
    maps = x.view(3, 4, 4, 6).permute(0, 3, 1, 2).float()
    assert participation_ratio(maps) == pytest.approx(64 / 22, rel=1e-5)
    # D equal eigenvalues give D; one direction gives 1
    flat = q[:, :5] * math.sqrt(n - 1)
    assert participation_ratio(flat) == pytest.approx(5.0, rel=1e-9)
    assert participation_ratio(q[:, :1] @ torch.ones(1, 6, dtype=torch.float64)) == pytest.approx(1.0)


def _resnet(norm="BN", out=("res5",)):
    cfg = get_detpre_cfg()
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 18, 64
    cfg.MODEL.RESNETS.NORM, cfg.MODEL.BACKBONE.FREEZE_AT = norm, 0
    cfg.MODEL.RESNETS.OUT_FEATURES = list(out)
    return build_resnet_backbone(cfg, ShapeSpec(channels=3))


class TinyNet(nn.Module):
    """A ResNet-18 at ``backbone.bottom_up`` (as detpre's ResNet-only methods) cut after res5,
    trained to spread its pooled res5 features."""

    def __init__(self):
        super().__init__()
        self.backbone = BottomUpContainer(_resnet())

    def forward(self, images):
        f = self.backbone((images.float() - 128.0) / 64.0)["res5"].mean(dim=(2, 3))
        return {"loss": -f.std(0).mean()}


def _images(n=8, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def _batches(n, seed=1):
    return [_images(4, 32, seed + i) for i in range(n)]


class _Collapse(HookBase):
    """After iteration ``at`` every res4 convolution's weights are zeroed: constant res4 features."""

    def __init__(self, at):
        self.at = at

    def after_step(self):
        if self.trainer.iter == self.at:
            with torch.no_grad():
                for m in self.trainer.model.backbone.bottom_up.res4.modules():
                    if isinstance(m, nn.Conv2d):
                        m.weight.zero_()


class _Log(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.warnings = []

    def emit(self, record):
        if record.levelno >= logging.WARNING:
            self.warnings.append(record.getMessage())

    def __enter__(self):
        logging.getLogger("detpre.engine.collapse").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("detpre.engine.collapse").removeHandler(self)


def _watch(advice="", **kw):
    return CollapseWatch(images=_images(), pixel_mean=MEAN, pixel_std=STD, feature="res4",
                         advice=advice, **{"period": 2, "threshold": 0.1, **kw})


def _trainer(model, batches, hooks, lr=0.0):
    trainer = SimpleTrainer(model, iter(batches), torch.optim.SGD(model.parameters(), lr=lr))
    trainer.register_hooks(hooks)
    return trainer


def test_a_collapse_mid_run_warns_once_with_the_keys_and_logs_the_scalars(repo_root):
    torch.manual_seed(0)
    cfg = get_detpre_cfg(os.path.join(repo_root, "configs/demo/soco_R18_FPN_tiny.yaml"))
    watch = _watch(advice=collapse_advice(cfg))
    trainer = _trainer(TinyNet(), _batches(8), [_Collapse(at=4), watch])
    with _Log() as log:
        trainer.train(0, 8)
    values = lambda key: [v for v, _ in trainer.storage.history(key).values()]  # noqa: E731
    hist = values("collapse/res4_dim")
    # before the first step, after 2, 4 (before the collapse at iteration 4), 6 and 8 iterations
    assert [it for it, _ in watch.history] == [0, 2, 4, 6, 8] and len(hist) == 5
    assert hist[0] > 10 and hist[1:3] == pytest.approx([hist[0]] * 2)  # LR 0: nothing moves
    assert hist[3:] == [0.0, 0.0]  # constant features
    assert values("collapse/collapsed") == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert values("collapse/res4_dim_ratio")[-1] == 0.0
    assert len(log.warnings) == 1  # once per drop, not at every measurement
    msg = log.warnings[0]
    assert "after 6 iterations" in msg and "DETPRE.COLLAPSE.THRESHOLD" in msg
    for key in ("SOLVER.BASE_LR", "SOLVER.LARS.NON_ADAPTED_LR_FACTOR", "SOLVER.LARS.ETA", "SOLVER.WARMUP_ITERS"):
        assert key in msg, key


def test_a_recovery_rearms_the_warning():
    watch = _watch(threshold=0.5)
    watch.trainer = type("T", (), {"storage": type("S", (), {"put_scalars": lambda *a, **k: None})()})()
    watch.start, watch.start_iter = 40.0, 0
    with _Log() as log:
        for done, dim in enumerate([10.0, 5.0, 25.0, 31.0, 10.0]):
            watch._record(done, dim)
    assert len(log.warnings) == 2  # 10 (below 20), then 31 (above 1.5 x 20) re-arms, then 10


def test_the_model_its_mode_and_bn_statistics_are_left_as_they_were():
    torch.manual_seed(0)
    model = TinyNet()
    watch = _watch()
    watch.trainer = type("T", (), {"model": model})()
    for mode in (True, False):
        model.train(mode)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        dim = watch.measure()
        assert dim > 10 and model.training is mode
        assert all(m.training is mode for m in model.modules())
        for k, v in model.state_dict().items():  # weights, BN running stats, num_batches_tracked
            assert torch.equal(v, before[k]), k
    # and a run trains to the same weights with the hook or without (it draws no random number)
    runs = []
    for hooks in ([], [_watch(period=1)]):
        torch.manual_seed(0)
        m = TinyNet()
        _trainer(m, _batches(3), hooks, lr=0.1).train(0, 3)
        runs.append(m.state_dict())
    for k, v in runs[0].items():
        assert torch.equal(v, runs[1][k]), k


def test_sync_bn_is_measured_as_local_bn_and_a_stage_not_output_is_reached():
    torch.manual_seed(0)
    net = _resnet("SyncBN", out=("res5",))  # a run of several processes: one measures alone
    syncs = [m for m in net.modules() if isinstance(m, nn.SyncBatchNorm)]
    assert syncs
    before = {k: v.clone() for k, v in net.state_dict().items()}
    d = feature_dimension(net, _images(), MEAN, STD, stages=("res4",))
    assert set(d) == {"res4"} and d["res4"] > 10
    assert [m for m in net.modules() if isinstance(m, nn.SyncBatchNorm)] == syncs
    assert net._out_features == ["res5"]
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_resume_keeps_the_runs_start_and_catches_a_collapse_before_it():
    torch.manual_seed(0)
    model = TinyNet()
    first = _trainer(model, _batches(4), [_watch()])
    first.train(0, 4)
    state = first.state_dict()
    start = state["hooks"]["CollapseWatch"]["start"]
    assert start > 10 and state["hooks"]["CollapseWatch"]["start_iter"] == 0
    # the run is resumed from a backbone that collapsed in the part that was lost
    with torch.no_grad():
        for m in model.backbone.bottom_up.res4.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
    watch = _watch()
    resumed = _trainer(model, _batches(8)[4:], [watch])
    resumed.load_state_dict(state)  # what DetpreCheckpointer's --resume does
    with _Log() as log:
        resumed.train(state["iteration"], 8)  # SimpleTrainer's iter ends at max_iter
    assert watch.start == start and watch.start_iter == 0  # not the resumed backbone's 0
    assert [it for it, _ in watch.history] == [4, 6, 8]
    assert len(log.warnings) == 1 and "at iteration 0" in log.warnings[0]


def test_images_evenly_spaced_resized_and_cropped(tmp_path):
    paths = random_images(tmp_path / "imgs", 6, size=(48, 64))
    paths += random_images(tmp_path / "tall", 1, size=(80, 40), seed=1)
    register_list("_collapse_imgs", [{"file_name": p, "image_id": i} for i, p in enumerate(paths)])
    os.remove(paths[2])  # unreadable: the next readable image takes its place
    imgs = read_watch_images(("_collapse_imgs",), 3, 32, 1000, "RGB")
    # images 0, 2 (missing -> 1), 4; shorter side 32: 48 x 64 -> 32 x 43
    assert imgs.dtype == torch.uint8 and tuple(imgs.shape) == (3, 3, 32, 43)
    all7 = read_watch_images(("_collapse_imgs",), 16, 32, 1000, "RGB")
    assert tuple(all7.shape) == (6, 3, 32, 32)  # every readable one; the tall one is 32 wide
    # the center of the resized image
    from detectron2.data import transforms as T
    from detectron2.data.detection_utils import read_image
    ref = T.ResizeShortestEdge(32, 1000).get_transform(np.zeros((48, 64, 3))).apply_image(read_image(paths[0], "RGB"))
    assert torch.equal(all7[0], torch.as_tensor(ref[:, 5:37].transpose(2, 0, 1).copy()))


def test_through_the_trainer_metrics_and_checkpoint(tmp_path):
    paths = random_images(tmp_path / "imgs", 4)
    register_list("_collapse_train", [{"file_name": p, "image_id": i, "height": 48, "width": 56}
                                      for i, p in enumerate(paths)])
    cfg = tiny_cfg("fastmoco_R18_tiny.yaml", tmp_path / "run", "DATASETS.TRAIN", ("_collapse_train",),
                   "INPUT.TWO_VIEW.SIZE", 32, "MODEL.FASTMOCO.HIDDEN_DIM", 32, "MODEL.FASTMOCO.PROJ_DIM", 16,
                   "SOLVER.MAX_ITER", 4, "SOLVER.CHECKPOINT_PERIOD", 2, "INPUT.MIN_SIZE_TEST", 64,
                   "DETPRE.HOOKS", ["CollapseWatch"], "DETPRE.COLLAPSE.PERIOD", 2)
    trainer = Trainer(cfg)
    watch = [h for h in trainer._hooks if isinstance(h, CollapseWatch)]
    assert len(watch) == 1 and "MomentumUpdate" in [type(h).__name__ for h in trainer._hooks]
    # every step written (metrics.json keeps the latest value of a key per write; DefaultTrainer's
    # writers write every 20 iterations, the default period's multiple)
    next(h for h in trainer._hooks if type(h).__name__ == "TimedPeriodicWriter")._seconds = 1e-9
    trainer.resume_or_load(resume=False)
    trainer.train()
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.json")]
    dims = {r["iteration"]: r["collapse/res4_dim"] for r in rows if "collapse/res4_dim" in r}
    # before steps 0 and 2, and after the last step (put at its iteration, 3)
    assert sorted(dims) == [0, 2, 3] and all(v > 1 for v in dims.values())
    ckpt = torch.load(tmp_path / "run" / "model_final.pth", weights_only=False)
    assert ckpt["trainer"]["hooks"]["CollapseWatch"]["start"] == pytest.approx(dims[0])
    # period 0: about twenty measurements per run, at a multiple of the writers' 20 iterations
    cfg.defrost()
    cfg.DETPRE.COLLAPSE.PERIOD = 0
    for max_iter, period in ((150, 20), (1000, 60), (31200, 1560)):
        cfg.SOLVER.MAX_ITER = max_iter
        assert CollapseWatch.from_config(cfg)["period"] == period
    assert np.isfinite(watch[0].seconds) and watch[0].seconds > 0
