"""SoCo meta-architecture: scale-aware levels, BYOL loss by hand, EMA target, the loss goes down."""
import math

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.poolers import assign_boxes_to_levels
from detectron2.structures import Boxes

import detpre.data.mappers.soco  # noqa: F401  (registers SoCoMapper)
import detpre.modeling.meta_arch.soco  # noqa: F401  (registers SoCo)
from detpre.config import get_detpre_cfg
from detpre.modeling.losses.byol import byol_loss


def tiny_cfg(repo_root):
    cfg = get_detpre_cfg()
    cfg.merge_from_file(f"{repo_root}/configs/demo/soco_R18_FPN_tiny.yaml")
    cfg.MODEL.SOCO.HIDDEN_DIM = 64
    cfg.MODEL.SOCO.PROJ_DIM = 32
    cfg.MODEL.SOCO.CANONICAL_BOX_SIZE = 24
    return cfg


def synthetic_batch(num_images=4, k=3, sizes=(64, 64, 32), seed=0):
    """Random views whose K boxes are the same relative region in every view."""
    rng = np.random.RandomState(seed)
    batch = []
    for _ in range(num_images):
        rel = []
        for _ in range(k):
            x0, y0 = rng.uniform(0, 0.5, size=2)
            rel.append([x0, y0, x0 + rng.uniform(0.2, 0.5), y0 + rng.uniform(0.2, 0.5)])
        rel = np.array(rel, dtype=np.float32)
        base = rng.randint(0, 256, (3, 64, 64)).astype(np.uint8)
        views = [torch.nn.functional.interpolate(torch.from_numpy(base)[None].float(), size=(s, s),
                                                 mode="bilinear", align_corners=False)[0].to(torch.uint8)
                 for s in sizes]
        batch.append({"views": views, "view_boxes": [torch.from_numpy(rel * s) for s in sizes]})
    return batch


def test_scale_aware_levels_are_socos_ranges():
    """ROIPooler's rule with canonical size 96 / level 4 puts sqrt(wh) <= 48 / 96 / 192 / 224
    on P2 / P3 / P4 / P5 (SoCo's ranges at 224 px), except exactly on a boundary."""
    sides = [8, 30, 47.9, 48.1, 70, 95.9, 96.1, 150, 191.9, 192.1, 224]
    expected = [2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5]
    boxes = Boxes(torch.tensor([[0, 0, s, s] for s in sides], dtype=torch.float32))
    levels = assign_boxes_to_levels([boxes], 2, 5, canonical_box_size=96, canonical_level=4) + 2
    assert levels.tolist() == expected


def test_model_pools_each_box_from_its_level_only(repo_root):
    cfg = tiny_cfg(repo_root)
    cfg.MODEL.SOCO.CANONICAL_BOX_SIZE = 96
    model = build_model(cfg)
    pooler = model.roi_heads.box_pooler
    assert (pooler.min_level, pooler.max_level) == (2, 5)
    assert (pooler.canonical_box_size, pooler.canonical_level) == (96, 4)
    # a box pooled by the pooler equals RoIAlign on its assigned level alone
    feats = [torch.randn(1, 4, 224 // s, 224 // s) for s in (4, 8, 16, 32)]
    box = Boxes(torch.tensor([[10.0, 20.0, 110.0, 90.0]]))  # sqrt(wh) ~ 84 -> P3
    out = pooler(feats, [box])
    ref = pooler.level_poolers[1](feats[1], torch.tensor([[0.0, 10, 20, 110, 90]]))
    assert torch.allclose(out, ref)


def test_byol_loss_by_hand():
    p = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # 1 image, 2 proposals
    z = torch.tensor([[[3.0, 0.0], [1.0, 1.0]]])
    assert byol_loss(p, z, "sum").item() == pytest.approx(0.0 + (2 - 2 / math.sqrt(2)), abs=1e-6)
    p2 = torch.cat([p, torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])])  # second image: cos -1, 0
    z2 = torch.cat([z, torch.tensor([[[-1.0, 0.0], [0.0, 5.0]]])])
    assert byol_loss(p2, z2, "sum").item() == pytest.approx(((2 - math.sqrt(2)) + (4 + 2)) / 2, abs=1e-6)
    # the official code's normalization: mean over the 4 matched (image, proposal) pairs
    assert byol_loss(p2, z2).item() == pytest.approx(((2 - math.sqrt(2)) + (4 + 2)) / 4, abs=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        byol_loss(p2, z2, "max")


def test_soco_loss_is_symmetrized_over_views(repo_root):
    model = build_model(tiny_cfg(repo_root))
    rng = np.random.RandomState(0)
    preds = [torch.from_numpy(rng.randn(2, 3, 5)).float() for _ in range(3)]
    targets = [torch.from_numpy(rng.randn(2, 3, 5)).float() for _ in range(3)]

    def ref(a, b, reduction):  # numpy: 2 - 2 cos, mean over pairs or sum over K, mean over B
        a, b = a.numpy(), b.numpy()
        cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
        return (2 - 2 * cos).mean() if reduction == "mean" else (2 - 2 * cos).sum(1).mean()

    for r in ("mean", "sum"):
        model.loss_reduction = r
        expected = sum(ref(preds[0], targets[v], r) + ref(preds[v], targets[0], r) for v in (1, 2))
        assert model.loss(preds, targets).item() == pytest.approx(expected, rel=1e-5)


def test_target_gets_no_gradient_and_moves_by_ema(repo_root):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(repo_root))
    model.train()
    names = {k for k, _ in model.named_parameters()}
    assert {"backbone.bottom_up.stem.conv1.weight", "roi_heads.box_head.fc1.weight"} <= names
    loss = model(synthetic_batch())["loss_soco"]
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("target."):
            assert not p.requires_grad and p.grad is None, name
        else:  # every online parameter gets a gradient (DDP without find_unused_parameters)
            assert p.grad is not None, name
    before = {k: v.clone() for k, v in model.target.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.add_(p.grad, alpha=-0.1)
    m = 0.9
    model.target.update(model, m)
    online = dict(model.named_parameters())
    for name, t in model.target.named_parameters():
        expect = m * before[name] + (1 - m) * online[name].detach()
        assert torch.allclose(t, expect, atol=1e-6), name
    assert not torch.equal(model.target.backbone.bottom_up.stem.conv1.weight,
                           before["backbone.bottom_up.stem.conv1.weight"])


def test_a_few_iterations_lower_the_loss(repo_root):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(repo_root))
    model.train()
    batch = synthetic_batch(num_images=4, k=2)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    losses = []
    for _ in range(8):
        loss = model(batch)["loss_soco"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.target.update(model, 0.99)
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.8 * losses[0], losses


def test_views_not_divisible_by_32_are_padded(repo_root):
    """SoCo's V3 is 112 px; detectron2's FPN needs multiples of 32: padding must not move boxes."""
    model = build_model(tiny_cfg(repo_root))
    model.eval()
    batch = synthetic_batch(num_images=2, k=3, sizes=(80,))
    x, boxes = model.preprocess(batch, 0)
    assert tuple(x.shape[-2:]) == (96, 96) and (x[..., 80:, :] == 0).all() and (x[..., :, 80:] == 0).all()
    assert torch.equal(boxes[0].tensor, batch[0]["view_boxes"][0])
    model.train()
    assert torch.isfinite(model(synthetic_batch(num_images=2, k=3, sizes=(64, 64, 48)))["loss_soco"])


def test_inference_returns_box_features(repo_root):
    model = build_model(tiny_cfg(repo_root))
    model.eval()
    out = model(synthetic_batch(num_images=2, k=3))
    assert len(out) == 2 and out[0]["box_features"].shape == (3, 256)


def test_zero_proposals_and_one_row_fail_clearly(repo_root):
    model = build_model(tiny_cfg(repo_root))
    model.train()
    batch = synthetic_batch(num_images=2, k=1)
    for d in batch:
        d["view_boxes"] = [b[:0] for b in d["view_boxes"]]
    with pytest.raises(ValueError, match="NUM_PROPOSALS"):
        model(batch)
    # B x K = 1: the BatchNorm MLP heads cannot take batch statistics of one row
    with pytest.raises(ValueError, match="proposals per GPU"):
        model(synthetic_batch(num_images=1, k=1, sizes=(64, 64, 64)))
    assert torch.isfinite(model(synthetic_batch(num_images=1, k=2, sizes=(64, 64, 64)))["loss_soco"])


def test_views_of_their_own_are_paired_with_their_v1_boxes(repo_root):
    """INPUT.SOCO.VIEWS "official": ``pair_boxes`` replace V1's boxes in the pair with that view."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(repo_root))
    model.train()
    batch = synthetic_batch(num_images=2, k=3)
    same = [dict(d, pair_boxes={2: d["view_boxes"][0].clone()}) for d in batch]
    other = [dict(d, pair_boxes={2: d["view_boxes"][0].flip(0)}) for d in batch]
    with torch.no_grad():
        plain = model(batch)["loss_soco"]
        assert torch.allclose(model(same)["loss_soco"], plain, atol=1e-6)
        assert not torch.allclose(model(other)["loss_soco"], plain, atol=1e-4)
    # the loss by hand: V1's own set for V2, the pair set for V3
    rng = np.random.RandomState(1)
    t = lambda: torch.from_numpy(rng.randn(2, 3, 5)).float()  # noqa: E731
    preds, targets, pp, pt = [t(), t(), t()], [t(), t(), t()], {2: t()}, {2: t()}
    want = (byol_loss(preds[0], targets[1]) + byol_loss(preds[1], targets[0])
            + byol_loss(pp[2], targets[2]) + byol_loss(preds[2], pt[2]))
    assert model.loss(preds, targets, pp, pt).item() == pytest.approx(want.item(), rel=1e-6)
    with pytest.raises(ValueError, match="own"):
        model([same[0], batch[1]])


@pytest.mark.parametrize("extra", [0, 48])
def test_official_views_train_end_to_end(repo_root, tmp_path, extra):
    from PIL import Image

    from detpre.data.mappers.soco import SoCoMapper

    rng = np.random.RandomState(0)
    path = str(tmp_path / "img.png")
    Image.fromarray(rng.randint(0, 255, (96, 128, 3)).astype(np.uint8)).save(path)
    props = np.array([[4, 4, 60, 50], [30, 20, 120, 90], [70, 10, 124, 60], [10, 40, 70, 92]], np.float32)
    d = {"file_name": path, "height": 96, "width": 128, "proposal_boxes": props, "proposal_bbox_mode": 0}
    mapper = SoCoMapper(view_size=64, small_view_size=32, extra_view_size=extra, num_proposals=3,
                        min_box_size=4, image_format="RGB", views="official")
    np.random.seed(0)
    batch = [mapper(d) for _ in range(2)]
    assert list(batch[0]["pair_boxes"]) == [3 if extra else 2]
    torch.manual_seed(0)
    model = build_model(tiny_cfg(repo_root))
    model.train()
    loss = model(batch)["loss_soco"]
    assert torch.isfinite(loss)
    loss.backward()
