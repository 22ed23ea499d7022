"""Fast-MoCo / MoCo v3 meta-architecture: divide, combine, loss, MoCo v3 equivalence, training."""
import itertools
import os

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, ResNet

from detpre.checkpoint import coverage_report, export_weights
from detpre.config import get_detpre_cfg
from detpre.modeling.heads import MLP
from detpre.modeling.meta_arch.fastmoco import FastMoCo

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_resnet():
    stem = BasicStem(3, 8, norm="BN")
    stages = [
        ResNet.make_stage(BasicBlock, 1, stride_per_block=[1], in_channels=8, out_channels=8, norm="BN"),
        ResNet.make_stage(BasicBlock, 1, stride_per_block=[2], in_channels=8, out_channels=16, norm="BN"),
    ]
    return ResNet(stem, stages, out_features=["res3"])


def tiny_model(**kw):
    torch.manual_seed(0)
    args = dict(bottom_up=tiny_resnet(), projector=MLP(16, 32, 8, 2, "BN", last_norm=True),
                predictor=MLP(8, 32, 8, 2, "BN"), pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3,
                in_feature="res3", gather_keys=False)
    args.update(kw)
    return FastMoCo(**args)


def numpy_infonce(q, k, t):
    """Hand-written loop: q (B, C, d), k (B, d); mean over (b, c) of -log softmax, times 2t."""
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    losses = []
    for b in range(q.shape[0]):
        for c in range(q.shape[1]):
            logits = np.array([q[b, c] @ k[j] / t for j in range(k.shape[0])])
            losses.append(-(logits[b] - np.log(np.exp(logits).sum())))
    return 2 * t * np.mean(losses)


def test_divide_puts_patch_p_of_image_b_at_row_b_m2_plus_p():
    model = tiny_model(num_splits=3, combine_size=2)
    x = torch.randn(2, 3, 13, 12)  # 13 not divisible by 3: the last row is dropped
    patches = model.divide(x)
    assert patches.shape == (2 * 9, 3, 4, 4)
    for b, i, j in itertools.product(range(2), range(3), range(3)):
        torch.testing.assert_close(patches[b * 9 + i * 3 + j], x[b, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4])


def test_combinations_are_every_n_subset_and_each_is_the_mean_of_its_patches():
    model = tiny_model(num_splits=2, combine_size=2)
    assert model.combinations.tolist() == [list(c) for c in itertools.combinations(range(4), 2)]
    emb = torch.randn(3, 4, 5)
    z = model.combine(emb)
    assert z.shape == (3, 6, 5)
    for c, idx in enumerate(model.combinations.tolist()):
        torch.testing.assert_close(z[:, c], (emb[:, idx[0]] + emb[:, idx[1]]) / 2)
    model.combine_mode = "max"
    z = model.combine(emb)
    for c, idx in enumerate(model.combinations.tolist()):
        torch.testing.assert_close(z[:, c], torch.maximum(emb[:, idx[0]], emb[:, idx[1]]))
    model.combine_mode = "weighted"
    z = model.combine(emb)
    parts = emb[:, model.combinations]  # a convex combination lies between min and max
    assert (z >= parts.amin(2) - 1e-6).all() and (z <= parts.amax(2) + 1e-6).all()
    assert not torch.allclose(z, parts.mean(2))
    assert tiny_model(num_splits=2, combine_size=3).combinations.shape == (4, 3)


def test_query_encodes_patches_in_one_batch_and_returns_one_prediction_per_combination():
    model = tiny_model()
    q = model.query(torch.randn(4, 3, 32, 32))
    assert q.shape == (4, 6, 8)
    k = model.key(torch.randn(4, 3, 32, 32))
    assert k.shape == (4, 8) and not k.requires_grad
    assert tiny_model(combine="off").query(torch.randn(4, 3, 32, 32)).shape == (4, 1, 8)


def official_fastmoco_loss(q1, q2, k1, k2, t):
    """Fast-MoCo's code (core/loss_functions/infoNCE.py): the combinations' predictions split
    into C chunks of B rows, one CE(p.z_other / t) per chunk and direction, the 2C summed / 2C."""
    nz = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    total, count = 0.0, 0
    for q, k in ((q1, k2), (q2, k1)):
        for c in range(q.shape[1]):
            logits = nz(q[:, c]) @ nz(k).T / t
            ce = -(np.diag(logits) - np.log(np.exp(logits).sum(1))).mean()
            total, count = total + ce, count + 1
    return total / count


@pytest.mark.parametrize("t", [1.0, 0.2])
def test_loss_is_the_symmetrized_infonce_against_the_other_or_same_view(t):
    torch.manual_seed(1)
    q1, q2 = torch.randn(4, 6, 8), torch.randn(4, 6, 8)
    k1, k2 = torch.randn(4, 8), torch.randn(4, 8)
    n = lambda a: a.double().numpy()  # noqa: E731
    # default LOSS_SCALE 0: Fast-MoCo's official normalization, (ctr_1 + ctr_2) / 2
    other = tiny_model(temperature=t).loss(q1, q2, k1, k2).item()
    assert other == pytest.approx(official_fastmoco_loss(n(q1), n(q2), n(k1), n(k2), t), rel=1e-5)
    assert other == pytest.approx((numpy_infonce(n(q1), n(k2), t) + numpy_infonce(n(q2), n(k1), t))
                                  / (4 * t), rel=1e-5)
    same = tiny_model(temperature=t, target_view="same").loss(q1, q2, k1, k2).item()
    assert same == pytest.approx(official_fastmoco_loss(n(q1), n(q2), n(k2), n(k1), t), rel=1e-5)
    assert other != pytest.approx(same)
    # an explicit scale: 4 tau gives MoCo v3's 2 tau per direction, summed
    scaled = tiny_model(temperature=t, loss_scale=4 * t).loss(q1, q2, k1, k2).item()
    assert scaled == pytest.approx(numpy_infonce(n(q1), n(k2), t) + numpy_infonce(n(q2), n(k1), t), rel=1e-5)
    with pytest.raises(ValueError, match="LOSS_SCALE"):
        tiny_model(loss_scale=-1.0)


def _batch(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"views": [torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
                       for _ in range(2)]} for _ in range(n)]


def test_combine_off_is_moco_v3():
    model = tiny_model(combine="off", temperature=0.5)
    batch = _batch()
    loss = model(batch)["loss_infonce"]
    x1, x2 = (torch.stack([d["views"][i] for d in batch]).float() for i in range(2))
    pool = lambda bb, x: bb(x)["res3"].mean(dim=(2, 3))  # noqa: E731
    q1 = model.predictor(model.projector(pool(model.backbone.bottom_up, x1)))
    q2 = model.predictor(model.projector(pool(model.backbone.bottom_up, x2)))
    with torch.no_grad():
        k1 = model.target.projector(pool(model.target.backbone.bottom_up, x1))
        k2 = model.target.projector(pool(model.target.backbone.bottom_up, x2))
    n = lambda a: a.detach().double().numpy()[:, None] if a.dim() == 2 else a.detach().double().numpy()  # noqa: E731
    ref = numpy_infonce(n(q1), n(k2)[:, 0], 0.5) + numpy_infonce(n(q2), n(k1)[:, 0], 0.5)
    assert loss.item() == pytest.approx(ref, rel=1e-5)


def test_a_few_steps_lower_the_loss_and_move_the_target():
    model = tiny_model()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    batch = _batch(n=8)
    target0 = model.target.backbone.bottom_up.stem.conv1.weight.clone()
    losses = []
    for _ in range(12):
        loss = model(batch)["loss_infonce"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.target.update(model, 0.9)
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < losses[0] - 0.05, losses
    assert not torch.equal(target0, model.target.backbone.bottom_up.stem.conv1.weight)
    # every trainable parameter gets a gradient (DDP without find_unused_parameters)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert not any(p.requires_grad for p in model.target.parameters())


def test_bad_options_fail_clearly():
    with pytest.raises(ValueError, match="COMBINE"):
        tiny_model(combine="median")
    with pytest.raises(ValueError, match="COMBINE_SIZE"):
        tiny_model(num_splits=2, combine_size=5)
    with pytest.raises(ValueError, match="TARGET_VIEW"):
        tiny_model(target_view="both")


def test_demo_config_builds_and_its_backbone_exports_into_the_tiny_mask_rcnn():
    cfg = get_detpre_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs/demo/fastmoco_R18_tiny.yaml"))
    model = build_model(cfg)
    assert isinstance(model, FastMoCo) and model.combinations.shape == (6, 2)
    state = model.state_dict()
    assert any(k.startswith("target.backbone.bottom_up.") for k in state)
    weights = export_weights(state, "backbone")
    det_cfg = get_detpre_cfg()
    det_cfg.merge_from_file(os.path.join(REPO, "configs/demo/mask_rcnn_R18_FPN_tiny.yaml"))
    report = coverage_report(weights, build_model(det_cfg))
    assert not report["shape_mismatch"] and not report["unused"]
    assert len(report["filled"]) == len(weights) > 0
    assert not [k for k in report["random_init"] if k.startswith("backbone.bottom_up.")]


def _paper_cfg(name):
    cfg = get_detpre_cfg(os.path.join(REPO, "configs/fastmoco", name))
    # small enough to build on a CPU: the recipe's keys stay as shipped
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 18, 64
    cfg.MODEL.RESNETS.NORM = cfg.MODEL.FASTMOCO.HEAD_NORM = "BN"
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def test_fastmoco_config_is_the_official_recipe():
    cfg = _paper_cfg("fastmoco_R50_100ep.yaml")
    s = cfg.SOLVER
    assert (s.OPTIMIZER, s.IMS_PER_BATCH, s.BASE_LR, s.WEIGHT_DECAY, s.MOMENTUM) == ("SGD", 512, 0.1, 1e-4, 0.9)
    assert (s.WARMUP_ITERS, s.MAX_ITER, s.WARMUP_FACTOR) == (2502, 250300, 0.25)
    assert s.LR_SCHEDULER_NAME == "WarmupThenCosineLR"
    assert s.CLIP_GRADIENTS.ENABLED and s.CLIP_GRADIENTS.CLIP_TYPE == "full_model"
    assert s.CLIP_GRADIENTS.CLIP_VALUE == 1.0
    assert (cfg.MODEL.EMA.BASE, cfg.MODEL.EMA.SCHEDULE) == (0.99, "constant")
    assert cfg.INPUT.TWO_VIEW.AUGMENT == "mocov2" and tuple(cfg.INPUT.TWO_VIEW.SCALE) == (0.2, 1.0)
    model = build_model(cfg)
    assert model.loss_scale == 1.0 and model.temperature == 1.0
    lin = [m for m in model.projector if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(512, 2048), (2048, 2048), (2048, 2048)]
    bns = [m for m in model.projector if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(bns) == 3 and all(b.affine for b in bns)  # BN with affine after every layer
    lin = [m for m in model.predictor if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(2048, 512), (512, 2048)]
    assert not isinstance(model.predictor[-1], torch.nn.BatchNorm1d)
    assert lin[-1].bias is not None  # prediction_MLP.layer2 = nn.Linear(hidden, out)
    assert model.target.init == "random"
    assert model.fixed_lr_parameters() == list(model.predictor.parameters())


def test_mocov3_config_keeps_moco_v3s_recipe():
    cfg = _paper_cfg("mocov3_R50_100ep.yaml")
    s = cfg.SOLVER
    assert (s.OPTIMIZER, s.IMS_PER_BATCH, s.BASE_LR, s.WEIGHT_DECAY) == ("LARS", 4096, 9.6, 1e-6)
    assert (s.WARMUP_ITERS, s.MAX_ITER) == (3120, 31200) and not s.CLIP_GRADIENTS.ENABLED
    assert s.LR_SCHEDULER_NAME == "WarmupThenCosineLR"
    assert (cfg.MODEL.EMA.BASE, cfg.MODEL.EMA.SCHEDULE) == (0.99, "cosine")
    assert cfg.INPUT.TWO_VIEW.AUGMENT == "byol" and tuple(cfg.INPUT.TWO_VIEW.SCALE) == (0.2, 1.0)
    model = build_model(cfg)
    assert model.loss_scale == 4.0  # 2 tau per direction, summed
    lin = [m for m in model.projector if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(512, 4096), (4096, 256)]
    assert not model.projector[-1].affine
    lin = [m for m in model.predictor if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(256, 4096), (4096, 256)]
    assert all(m.bias is None for m in lin)  # moco/builder.py _build_mlp: bias=False throughout
    assert model.target.init == "copy" and model.fixed_lr_parameters() == []


def test_full_model_clipping_uses_one_global_norm():
    from detpre.solver.build import build_optimizer

    cfg = get_detpre_cfg()
    cfg.SOLVER.BASE_LR, cfg.SOLVER.MOMENTUM, cfg.SOLVER.WEIGHT_DECAY = 1.0, 0.0, 0.0
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    model = torch.nn.Sequential(torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(1, 2, bias=False))
    w0 = [p.detach().clone() for p in model.parameters()]
    grads = [torch.tensor([[3.0, 0.0]]), torch.tensor([[4.0], [0.0]])]  # global norm 5
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    opt = build_optimizer(cfg, model)
    opt.step()
    for p, p0, g in zip(model.parameters(), w0, grads):
        # torch's clip_grad_norm_: g * max_norm / (total_norm + 1e-6), the same factor for all
        torch.testing.assert_close(p.detach(), p0 - g * (1.0 / (5.0 + 1e-6)))
    # detectron2's "norm" clips each tensor by itself: the first would get norm 1 alone
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    for p, p0, g in zip(model.parameters(), w0, grads):
        p.data.copy_(p0)
        p.grad = g.clone()
    build_optimizer(cfg, model).step()
    torch.testing.assert_close(next(model.parameters()).detach(), w0[0] - grads[0] / 3.0)


def test_mlp_heads_fail_clearly_on_one_row_in_training():
    head = MLP(4, 8, 4, 2, "BN", last_norm=True)
    with pytest.raises(ValueError, match="at least 2"):
        head(torch.randn(1, 4))
    assert head(torch.randn(2, 4)).shape == (2, 4)
    head.eval()
    assert head(torch.randn(1, 4)).shape == (1, 4)  # running statistics: fine
    assert MLP(4, 8, 4, 2, "").train()(torch.randn(1, 4)).shape == (1, 4)  # no BN: fine
    # MoCo v3 / Fast-MoCo at one image per GPU: the key projector sees one row
    model = tiny_model(combine="off")
    with pytest.raises(ValueError, match="images per GPU"):
        model(_batch(n=1))


def test_predictor_last_bias_key():
    cfg = get_detpre_cfg()
    assert cfg.MODEL.FASTMOCO.PRED_LAST_BIAS is False  # MoCo v3's
    assert MLP(4, 8, 4, 2, "BN", last_bias=False)[-1].bias is None
    assert MLP(4, 8, 4, 2, "BN")[-1].bias is not None
    assert MLP(4, 8, 4, 2, "BN", last_norm=True)[0].bias is None  # hidden Linear before BN: none


def _tiny_cfg(**fastmoco):
    cfg = get_detpre_cfg(os.path.join(REPO, "configs/demo/fastmoco_R18_tiny.yaml"))
    cfg.MODEL.FASTMOCO.HIDDEN_DIM, cfg.MODEL.FASTMOCO.PROJ_DIM = 32, 16
    for k, v in fastmoco.items():
        cfg.MODEL.FASTMOCO[k] = v
    return cfg


def test_target_init_random_is_a_network_of_its_own():
    """Fast-MoCo's code builds its EMA encoder separately (never copied); MoCo v3 copies."""
    from detpre.engine.hooks import MomentumUpdate

    torch.manual_seed(0)
    copy = build_model(_tiny_cfg(TARGET_INIT="copy"))
    torch.manual_seed(0)
    fresh = build_model(_tiny_cfg(TARGET_INIT="random"))
    for (n, p), (_, q) in zip(copy.named_parameters(), fresh.named_parameters()):
        if not n.startswith("target."):
            assert torch.equal(p, q), n  # the online network's init does not change
    online = dict(fresh.named_parameters())
    for name, t in fresh.target.named_parameters():
        assert not t.requires_grad
        if t.dim() > 1:  # every weight differs at start; BN's ones/zeros are alike by construction
            assert not torch.equal(t, online[name]), name
    for name, t in copy.target.named_parameters():
        assert torch.equal(t, dict(copy.named_parameters())[name]), name
    # a fresh run's MomentumUpdate keeps the random target (and still copies a "copy" one)
    for model in (fresh, copy):
        before = {k: v.clone() for k, v in model.target.state_dict().items()}
        trainer = type("T", (), {"model": model, "iter": 0, "start_iter": 0})()
        hook = MomentumUpdate(base=0.99, end=1.0, max_iter=10)
        hook.trainer = trainer
        hook.before_train()
        after = model.target.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="TARGET_INIT"):
        build_model(_tiny_cfg(TARGET_INIT="zeros"))


def test_predictor_keeps_a_constant_lr_under_the_schedule():
    """Fast-MoCo's WCosConLR: warm-up + cosine for the network, the predictor's LR constant."""
    from detpre.solver import build_lr_scheduler
    from detpre.solver.build import build_optimizer

    cfg = _tiny_cfg(PRED_CONSTANT_LR=True)
    s = cfg.SOLVER
    s.OPTIMIZER, s.BASE_LR, s.LR_SCHEDULER_NAME = "SGD", 0.1, "WarmupThenCosineLR"
    s.WARMUP_FACTOR, s.WARMUP_ITERS, s.MAX_ITER = 0.25, 3, 12
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    pred = {id(p) for p in model.predictor.parameters()}
    fixed = [g for g in opt.param_groups if g.get("fixed_lr")]
    assert {id(p) for g in fixed for p in g["params"]} == pred
    assert all(id(p) not in pred for g in opt.param_groups if not g.get("fixed_lr") for p in g["params"])
    sched = build_lr_scheduler(cfg, opt)
    for it in range(12):
        for g in fixed:
            assert g["lr"] == pytest.approx(0.1)
        rest = [g["lr"] for g in opt.param_groups if not g.get("fixed_lr")]
        assert max(rest) < 0.1 - 1e-9 or it == 3
        opt.step()
        sched.step()
    # off (MoCo v3): one schedule for all
    cfg.MODEL.FASTMOCO.PRED_CONSTANT_LR = False
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    assert not any(g.get("fixed_lr") for g in opt.param_groups)


def test_trainer_runs_fast_mocos_schedule_and_keeps_the_random_target(tmp_path):
    """Through the Trainer: the predictor's LR stays BASE_LR while the rest warms up, and the
    MomentumUpdate hook starts from the random target instead of copying the online network."""
    import numpy as np

    from detpre.engine import Trainer

    class Synthetic(Trainer):
        @classmethod
        def build_train_loader(cls, cfg):
            rng = np.random.RandomState(0)
            while True:
                yield [{"views": [torch.from_numpy(rng.randint(0, 256, (3, 64, 64), dtype=np.uint8))
                                  for _ in range(2)]} for _ in range(4)]

    cfg = _tiny_cfg(PRED_CONSTANT_LR=True, TARGET_INIT="random")
    cfg.merge_from_list(["INPUT.TWO_VIEW.SIZE", 64, "SOLVER.IMS_PER_BATCH", 4, "SOLVER.MAX_ITER", 1,
                         "SOLVER.WARMUP_ITERS", 10, "SOLVER.WARMUP_FACTOR", 0.25, "SOLVER.BASE_LR", 0.1,
                         "SOLVER.LR_SCHEDULER_NAME", "WarmupThenCosineLR", "MODEL.EMA.SCHEDULE", "constant",
                         "SOLVER.OPTIMIZER", "SGD",  # Fast-MoCo's (one LR for every group)
                         "SOLVER.CHECKPOINT_PERIOD", 100, "OUTPUT_DIR", str(tmp_path)])
    torch.manual_seed(0)
    trainer = Synthetic(cfg)
    model = trainer.model
    t0 = {k: v.clone() for k, v in model.target.named_parameters()}
    lrs = {}

    def record(opt, args, kwargs):  # the LRs the one iteration runs with
        lrs.update(fixed=[g["lr"] for g in opt.param_groups if g.get("fixed_lr")],
                   rest=[g["lr"] for g in opt.param_groups if not g.get("fixed_lr")])

    trainer.optimizer.register_step_pre_hook(record)
    trainer.train()
    assert lrs["fixed"] and all(lr == pytest.approx(0.1) for lr in lrs["fixed"])
    assert all(lr == pytest.approx(0.025) for lr in lrs["rest"])  # warm-up start: 0.25 x 0.1
    online = dict(model.named_parameters())
    for name, t in model.target.named_parameters():  # one EMA step from the random init
        assert torch.allclose(t, 0.99 * t0[name] + 0.01 * online[name].detach(), atol=1e-6), name
