"""
One training step of every detpre method on a tiny model and a synthetic batch, with a given
``MixedPrecision``: shared by the CPU bf16 tests (test_amp.py) and the GPU tests (test_gpu.py).
"""
import os

import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import detpre  # noqa: F401  (registers every component)
from detpre.config import get_detpre_cfg
from detpre.engine.amp import AMPStep
from detpre.engine.self_training import LossNormalizer, SelfTrainingStep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ["soco", "fastmoco", "mocov3", "jigsaw", "spcl", "self_training"]


def _cfg(name, device, norm="BN"):
    cfg = get_detpre_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs/demo", name))
    cfg.MODEL.DEVICE = device
    if norm != "BN":  # every BN of the method: backbone, FPN, heads
        cfg.MODEL.RESNETS.NORM = cfg.MODEL.FPN.NORM = cfg.MODEL.ROI_BOX_HEAD.NORM = norm
        if norm == "SyncBN":  # the MLP heads take "BN", "SyncBN" or ""
            cfg.MODEL.SOCO.HEAD_NORM = cfg.MODEL.FASTMOCO.HEAD_NORM = norm
    return cfg


def _u8(g, *shape):
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)


def _soco(device, norm, g):
    cfg = _cfg("soco_R18_FPN_tiny.yaml", device, norm)
    cfg.MODEL.SOCO.HIDDEN_DIM, cfg.MODEL.SOCO.PROJ_DIM, cfg.MODEL.SOCO.CANONICAL_BOX_SIZE = 64, 32, 24
    batch = []
    for _ in range(4):
        x0, y0 = torch.rand(2, generator=g) * 0.4
        rel = torch.tensor([[x0, y0, x0 + 0.5, y0 + 0.5], [0.1, 0.2, 0.7, 0.9]])
        sizes = (64, 64, 32)
        batch.append({"views": [_u8(g, 3, s, s) for s in sizes], "view_boxes": [rel * s for s in sizes]})
    return cfg, batch


def _two_view(config):
    def make(device, norm, g):
        cfg = _cfg(config, device, norm)
        cfg.MODEL.FASTMOCO.HIDDEN_DIM, cfg.MODEL.FASTMOCO.PROJ_DIM = 64, 32
        cfg.MODEL.FASTMOCO.GATHER_KEYS = False
        return cfg, [{"views": [_u8(g, 3, 64, 64) for _ in range(2)]} for _ in range(4)]
    return make


def _jigsaw(device, norm, g):
    cfg = _cfg("jigsaw_R18_tiny.yaml", device, norm)
    cfg.INPUT.JIGSAW.SIZE = 64
    batch = []
    for i in range(4):
        c = 16 + 8 * i
        batch.append({"image": _u8(g, 3, 64, 64),
                      "jigsaw_regions": torch.tensor([[0, 0, c, c], [c, 0, 64, c], [0, c, c, 64],
                                                      [c, c, 64, 64]], dtype=torch.float32),
                      "jigsaw_labels": torch.randint(0, 6, (4,), generator=g)})
    return cfg, batch


def _spcl(device, norm, g):
    cfg = _cfg("spcl_usl_R18_tiny.yaml", device, norm)
    cfg.MODEL.SPCL.NUM_TARGET_INSTANCES = 16
    batch = [{"image": _u8(g, 3, 32, 32), "memory_index": i, "domain": 1} for i in range(0, 16, 2)]
    return cfg, batch


def _init_spcl_memory(model, g):
    mem = model.memory
    mem.set_features(torch.randn(len(mem), mem.features.shape[1], generator=g))
    mem.set_target_labels(torch.arange(mem.num_target) // 2)  # clusters of 2
    mem.initialized.fill_(True)


def _self_training(device, norm, g):
    cfg = _cfg("mask_rcnn_R18_FPN_tiny.yaml", device, norm)
    cfg.MODEL.MASK_ON = False
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 32
    batch = []
    for i in range(4):
        img = _u8(g, 3, 64, 80) // 4
        inst = Instances((64, 80))
        boxes = torch.tensor([[4.0 + 4 * i, 6.0, 40.0 + 4 * i, 44.0], [30.0, 20.0, 70.0, 60.0]])
        for x0, y0, x1, y1 in boxes.int().tolist():
            img[:, y0:y1, x0:x1] = 200
        inst.gt_boxes, inst.gt_classes = Boxes(boxes), torch.tensor([i % 3, (i + 1) % 3])
        batch.append({"image": img, "instances": inst, "height": 64, "width": 80,
                      "stream": "labeled" if i < 2 else "pseudo"})
    return cfg, batch


_MAKERS = {"soco": _soco, "fastmoco": _two_view("fastmoco_R18_tiny.yaml"),
           "mocov3": _two_view("mocov3_R18_tiny.yaml"), "jigsaw": _jigsaw, "spcl": _spcl,
           "self_training": _self_training}


def train_step(method, precision, device="cpu", norm="BN", seed=0):
    """
    One optimizer step (SGD, lr 0.01, no momentum) of ``method`` from a seeded initialization.
    Returns (total loss of the step, {parameter name: update}).
    """
    g = torch.Generator().manual_seed(seed)
    cfg, batch = _MAKERS[method](device, norm, g)
    torch.manual_seed(seed)
    model = build_model(cfg)
    if method == "spcl":
        _init_spcl_memory(model, g)
    model.train()
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = iter([batch])
    if method == "self_training":
        loop = SelfTrainingStep(model, loader, opt, LossNormalizer(1.0, 0.9, True), precision)
    else:
        loop = AMPStep(model, loader, opt, precision)
    torch.manual_seed(seed)  # the same in-model randomness (sampling, combinations) in every run
    with EventStorage(0) as storage:
        loop.run_step()
        loss = storage.history("total_loss").latest()
    delta = {k: (p.detach() - before[k]).float().cpu() for k, p in model.named_parameters()}
    return loss, delta


def update_cosine(a, b):
    """Cosine between two parameter updates, over all parameters that moved in ``a``."""
    keys = [k for k in a if a[k].abs().sum() > 0]
    va = torch.cat([a[k].flatten() for k in keys])
    vb = torch.cat([b[k].flatten() for k in keys])
    return float(torch.nn.functional.cosine_similarity(va, vb, dim=0))


def all_finite(delta):
    return all(bool(torch.isfinite(d).all()) for d in delta.values())


__all__ = ["METHODS", "all_finite", "train_step", "update_cosine"]
