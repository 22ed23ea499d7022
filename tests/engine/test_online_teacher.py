"""Online self-training (MODEL.SELF_TRAINING.MODE online) on tiny data: the EMA rule, the burn-in
switch, exact resume of teacher and student, the pseudo-label health signals and the empty-teacher
warning, the exports a stock detectron2 Mask R-CNN loads, and write_metrics through detpre._compat."""
import json
import logging
import os

import pytest
import torch
from _self_training_data import REPO, tiny_cfg, write_coco, write_images
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import transforms as T
from detectron2.structures import Boxes, Instances
from detectron2.utils.env import seed_all_rng
from torch import nn

from detpre.data.datasets import register_coco, register_image_folder
from detpre.data.online_teacher import WeakStrongMapper
from detpre.engine.defaults import trainer_class
from detpre.engine.online_teacher import (
    EXPORT_NAMES,
    EMATeacher,
    OnlineTeacherTrainer,
    batch_norms,
    running_stats_kept,
    split_unsup_losses,
)
from detpre.errors import DetpreError
from detpre.pseudo_labels.online import OnlinePseudoLabeler, PseudoLabelHealth

_DATA = {}


def _datasets(tmp_path_factory):
    if not _DATA:
        root = tmp_path_factory.mktemp("online_data")
        lab = write_images(root / "labeled", 4, seed=0)
        register_coco("_online_lab", write_coco(str(root / "labeled.json"), lab), str(root / "labeled"))
        write_images(root / "unlabeled", 4, seed=5)
        register_image_folder("_online_unl", str(root / "unlabeled"))
        _DATA["root"] = root
    return _DATA["root"]


@pytest.fixture
def data(tmp_path_factory):
    return _datasets(tmp_path_factory)


def _cfg(out, max_iter, burn_in=1, momentum=0.5, threshold=0.2, **extra):
    cfg = tiny_cfg()
    cfg.DATASETS.TRAIN = ("_online_lab",)
    st = cfg.MODEL.SELF_TRAINING
    st.MODE, st.UNLABELED_DATASET = "online", "_online_unl"
    st.BURN_IN_ITERS, st.EMA_MOMENTUM, st.SCORE_THRESHOLD = burn_in, momentum, threshold
    st.UNSUP_LOSS_WEIGHT, st.EMPTY_WARN_ITERS = 2.0, 2
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER, cfg.SOLVER.BASE_LR = 2, max_iter, 0.005
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
    cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.STEPS, cfg.SOLVER.CHECKPOINT_PERIOD = 0, (), 2
    cfg.OUTPUT_DIR = str(out)
    for k, v in extra.items():
        cfg.merge_from_list([k, v])
    return cfg


def _train(cfg, resume=False):
    seed_all_rng(cfg.SEED)  # what default_setup does: the same initial weights in every run
    trainer = OnlineTeacherTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def _iters(trainer, key):
    return [it for _, it in trainer.storage.history(key).values()]


# ---- pieces --------------------------------------------------------------------------------------
def test_ema_update_is_the_formula_and_copy_from_copies():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    student(torch.randn(8, 3))  # BN statistics != their init
    teacher = EMATeacher(student)
    assert not teacher.model.training and all(not p.requires_grad for p in teacher.model.parameters())
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    student(torch.randn(8, 3))
    m = 0.9
    teacher.update(student, m)
    s = student.state_dict()
    for k, v in teacher.state_dict().items():
        if v.is_floating_point():  # weights and BN running mean / var
            assert torch.allclose(v, m * t0[k] + (1 - m) * s[k], atol=1e-6), k
        else:  # num_batches_tracked
            assert torch.equal(v, s[k]), k
    teacher.copy_from(student)
    assert all(torch.equal(v, s[k]) for k, v in teacher.state_dict().items())


def test_unsupervised_losses_train_classification_not_regression():
    losses = {"loss_cls": torch.tensor(1.0), "loss_box_reg": torch.tensor(2.0),
              "loss_rpn_cls": torch.tensor(3.0), "loss_rpn_loc": torch.tensor(4.0)}
    out = split_unsup_losses(losses, 2.0, regression=False)
    assert {k: float(v) for k, v in out.items()} == {"loss_cls": 2.0, "loss_box_reg": 0.0,
                                                     "loss_rpn_cls": 6.0, "loss_rpn_loc": 0.0}
    assert float(split_unsup_losses(losses, 2.0, regression=True)["loss_box_reg"]) == 4.0
    # PSEUDO_LOSSES names the trained terms instead: localisation only
    out = split_unsup_losses(losses, 2.0, regression=False, names=("loss_rpn_cls", "loss_rpn_loc", "loss_box_reg"))
    assert {k: float(v) for k, v in out.items()} == {"loss_cls": 0.0, "loss_box_reg": 4.0,
                                                     "loss_rpn_cls": 6.0, "loss_rpn_loc": 8.0}
    with pytest.raises(DetpreError, match="PSEUDO_LOSSES names \\['loss_mask'\\]"):
        split_unsup_losses(losses, 2.0, regression=False, names=("loss_mask",))


def test_running_stats_kept_normalizes_by_the_batch_and_puts_the_running_stats_back():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4)).train()
    x = torch.randn(2, 3, 5, 5) * 3 + 1
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert batch_norms(net) == [net[1], net[3]]
    with running_stats_kept(batch_norms(net)):
        out = net(x)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # incl. num_batches_tracked
    bn = net[1]  # the batch's own statistics, as plain training mode
    h = net[0](x)
    ref = (h - h.mean((0, 2, 3), keepdim=True)) / torch.sqrt(h.var((0, 2, 3), unbiased=False, keepdim=True) + bn.eps)
    ref = net[3](torch.relu(ref * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]))
    assert torch.allclose(out, ref, atol=1e-5)
    out.sum().backward()  # the graph does not hold the restored buffers
    with running_stats_kept([]):  # STRONG_VIEW_BN_STATS True: no layer kept
        net(x)
    assert not torch.equal(net[1].running_mean, before["1.running_mean"])


def test_pseudo_boxes_follow_the_strong_views_geometry():
    """Teacher boxes (weak view) above the class threshold, moved by the strong view's flip."""
    det = Instances((40, 60))
    det.pred_boxes = Boxes(torch.tensor([[10.0, 5.0, 20.0, 15.0], [0.0, 0.0, 30.0, 30.0]]))
    det.scores, det.pred_classes = torch.tensor([0.9, 0.6]), torch.tensor([0, 1])
    item = {"weak_image": torch.zeros(3, 40, 60, dtype=torch.uint8), "image": torch.zeros(3, 40, 60, dtype=torch.uint8),
            "strong_transform": T.TransformList([T.HFlipTransform(60)])}
    inputs, stats = OnlinePseudoLabeler([0.5, 0.7]).label([item], [det])
    inst = inputs[0]["instances"]
    assert inst.gt_boxes.tensor.tolist() == [[40.0, 5.0, 50.0, 15.0]] and inst.gt_classes.tolist() == [0]
    assert stats["kept_per_image"] == [1] and len(stats["scores"]) == 2


def test_weak_and_strong_views_share_the_geometry(data):
    cfg = _cfg(data / "unused", 1)
    from detectron2.data import DatasetCatalog

    d = DatasetCatalog.get("_online_unl")[0]
    out = WeakStrongMapper(cfg)(d)
    assert out["image"].shape == out["weak_image"].shape and "instances" not in out
    cfg.MODEL.SELF_TRAINING.STRONG_AUGMENT = "S1"
    out = WeakStrongMapper(cfg)(d)
    assert tuple(out["image"].shape[-2:]) == (64, 64)  # INPUT.SELF_TRAINING.IMAGE_SIZE crop
    assert hasattr(out["strong_transform"], "apply_box")


def test_health_signals_and_empty_teacher_warning(caplog):
    health = PseudoLabelHealth(2, "MODEL.SELF_TRAINING.SCORE_THRESHOLD=0.9")
    stats = {"kept_per_image": [2, 0], "scores": torch.tensor([0.95, 0.91, 0.3]),
             "kept_classes": torch.tensor([1, 1])}
    out = health.record(stats, 0)
    assert out["pseudo/boxes"] == 2 and out["pseudo/boxes_per_image"] == 1.0
    assert out["pseudo/empty_image_share"] == 0.5 and out["pseudo/top_class_share"] == 1.0
    assert out["pseudo/teacher_detections_per_image"] == 1.5 and out["pseudo/score_max"] == pytest.approx(0.95)
    empty = {"kept_per_image": [0, 0], "scores": torch.tensor([0.2]), "kept_classes": torch.zeros(0, dtype=torch.long)}
    with caplog.at_level(logging.WARNING, logger="detpre.pseudo_labels.online"):
        health.record(empty, 1)
        assert not caplog.records
        health.record(empty, 2)
    assert len(caplog.records) == 1 and "MODEL.SELF_TRAINING.SCORE_THRESHOLD=0.9" in caplog.text
    assert "2 consecutive iterations" in caplog.text and health.state_dict() == {"empty_streak": 2}


def test_config_selects_the_trainer_and_rejects_what_cannot_work(data):
    cfg = _cfg(data / "unused", 1)
    assert trainer_class(cfg) is OnlineTeacherTrainer
    cfg.MODEL.SELF_TRAINING.ENABLED = True  # offline's switch does not matter in online mode
    assert trainer_class(cfg) is OnlineTeacherTrainer
    cfg.MODEL.SELF_TRAINING.MODE = "offline"
    assert trainer_class(cfg).__name__ == "SelfTrainingTrainer"
    bad = _cfg(data / "unused", 1, threshold=0.01)  # below ROI_HEADS.SCORE_THRESH_TEST (0.05)
    with pytest.raises(DetpreError, match="SCORE_THRESH_TEST"):
        OnlineTeacherTrainer.check_config(bad)
    bad = _cfg(data / "unused", 1, **{"MODEL.SELF_TRAINING.STRONG_AUGMENT": "heavy"})
    with pytest.raises(DetpreError, match="STRONG_AUGMENT"):
        OnlineTeacherTrainer.check_config(bad)
    bad = _cfg(data / "unused", 1, **{"MODEL.SELF_TRAINING.PSEUDO_LOSSES": ["loss_rpn_cls"],
                                      "MODEL.SELF_TRAINING.PSEUDO_BOX_REGRESSION": True})
    with pytest.raises(DetpreError, match="PSEUDO_LOSSES.*PSEUDO_BOX_REGRESSION False"):
        OnlineTeacherTrainer.check_config(bad)


# ---- training ------------------------------------------------------------------------------------
def test_burn_in_then_the_teacher_starts_as_the_student_and_metrics_count_pseudo_boxes(data, tmp_path):
    """BURN_IN_ITERS=2: iterations 0-1 are supervised only (no unlabeled batch, no unsupervised
    loss); at iteration 2 the teacher is the student as it was after iteration 1 (momentum 1:
    it stays so); the pseudo-label signals reach metrics.json; both exports are written."""
    cfg = _cfg(tmp_path / "run", 3, burn_in=2, momentum=1.0)
    trainer = _train(cfg)
    assert _iters(trainer, "loss_cls") == [0, 1, 2]
    assert _iters(trainer, "unsup_loss_cls") == [2] and _iters(trainer, "unsup_loss_rpn_cls") == [2]
    assert "unsup_loss_box_reg" not in trainer.storage.histories()  # regression not trained on pseudo-boxes
    assert _iters(trainer, "pseudo/boxes_per_image") == [2]
    after_burn_in = torch.load(os.path.join(cfg.OUTPUT_DIR, "model_0000001.pth"), map_location="cpu",
                               weights_only=False)
    assert after_burn_in["teacher"] is not None  # every checkpoint carries the teacher
    teacher = trainer.teacher.state_dict()
    for k, v in after_burn_in["model"].items():
        if v.is_floating_point():
            assert torch.equal(teacher[k], v), k
    with open(os.path.join(cfg.OUTPUT_DIR, "metrics.json")) as f:
        recs = [json.loads(line) for line in f]
    last = [r for r in recs if "pseudo/boxes_per_image" in r]
    assert last and {"pseudo/boxes", "pseudo/empty_image_share", "pseudo/teacher_detections_per_image",
                     "unsup_loss_cls"} <= set(last[-1])
    for role in ("student", "teacher"):
        assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, EXPORT_NAMES[role]))


def test_resumed_run_equals_the_uninterrupted_one(data, tmp_path):
    full = _train(_cfg(tmp_path / "full", 3))
    _train(_cfg(tmp_path / "cut", 2))  # "killed" after iteration 1 (burn-in 0, online 1)
    resumed = _train(_cfg(tmp_path / "cut", 3), resume=True)
    assert resumed.start_iter == 2
    for a, b in ((full.model.state_dict(), resumed.model.state_dict()),
                 (full.teacher.state_dict(), resumed.teacher.state_dict())):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k].double(), b[k].double(), atol=1e-6), k
    for role in ("student", "teacher"):
        x, y = (torch.load(os.path.join(d, EXPORT_NAMES[role]), map_location="cpu")["model"]
                for d in (full.cfg.OUTPUT_DIR, resumed.cfg.OUTPUT_DIR))
        assert all(torch.allclose(x[k].double(), y[k].double(), atol=1e-6) for k in x), role
    assert not torch.equal(full.model.state_dict()["roi_heads.box_predictor.cls_score.weight"],
                           full.teacher.state_dict()["roi_heads.box_predictor.cls_score.weight"])


def test_an_empty_teacher_is_reported_naming_the_threshold(data, tmp_path, caplog):
    cfg = _cfg(tmp_path / "empty", 2, burn_in=0, threshold=0.99)
    with caplog.at_level(logging.WARNING, logger="detpre.pseudo_labels.online"):
        trainer = _train(cfg)
    assert [v for v, _ in trainer.storage.history("pseudo/boxes").values()] == [0, 0]
    warned = [r.getMessage() for r in caplog.records if "no pseudo-box" in r.getMessage()]
    assert len(warned) == 1 and "MODEL.SELF_TRAINING.SCORE_THRESHOLD=0.99" in warned[0]


def test_write_metrics_goes_through_compat_with_main_signature(data, tmp_path, monkeypatch):
    """detectron2 main's ``write_metrics(loss_dict, data_time, cur_iter, prefix)`` gets the iteration."""
    from detectron2.engine import SimpleTrainer

    calls = []

    def main_shape(loss_dict, data_time, cur_iter, prefix=""):
        calls.append((sorted(loss_dict), cur_iter))

    monkeypatch.setattr(SimpleTrainer, "write_metrics", staticmethod(main_shape))
    _train(_cfg(tmp_path / "compat", 2, burn_in=1))
    assert [it for _, it in calls] == [0, 1]
    assert "unsup_loss_cls" not in calls[0][0] and "unsup_loss_cls" in calls[1][0]


def test_both_exports_load_into_a_stock_detectron2_mask_rcnn(data, tmp_path):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = _cfg(tmp_path / "export", 1, burn_in=0)
    _train(cfg)
    stock = get_cfg()  # detectron2's own keys only
    stock.merge_from_file(os.path.join(REPO, "configs/demo/mask_rcnn_R18_FPN_tiny.yaml"))
    stock.MODEL.ROI_HEADS.NUM_CLASSES, stock.MODEL.DEVICE = 3, "cpu"
    for role in ("student", "teacher"):
        path = os.path.join(cfg.OUTPUT_DIR, EXPORT_NAMES[role])
        model = build_model(stock)
        state = torch.load(path, map_location="cpu")["model"]
        incompatible = model.load_state_dict(state, strict=False)
        assert not incompatible.missing_keys and not incompatible.unexpected_keys, role
        stock.MODEL.WEIGHTS = path  # as MODEL.WEIGHTS: detectron2's checkpointer
        model = build_model(stock)
        DetectionCheckpointer(model).load(path)
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()), role
    final = torch.load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), map_location="cpu", weights_only=False)
    assert set(final["model"]) == set(state) and set(final["teacher"]) == set(state)


def test_a_retinanet_trains_online_too(data, tmp_path):
    cfg = _cfg(tmp_path / "retina", 2, burn_in=1)
    ref = tiny_cfg(meta="RetinaNet")
    for key in ("META_ARCHITECTURE", "MASK_ON", "BACKBONE", "RESNETS", "FPN", "ANCHOR_GENERATOR", "RETINANET"):
        cfg.MODEL[key] = ref.MODEL[key]
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.05
    trainer = _train(cfg)
    assert _iters(trainer, "unsup_loss_cls") == [1] and "unsup_loss_box_reg" not in trainer.storage.histories()
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, EXPORT_NAMES["teacher"]))


def test_pseudo_losses_pick_what_the_pseudo_boxes_train_online(data, tmp_path):
    """PSEUDO_LOSSES localisation only: the unlabeled pass logs (and trains) RPN and box
    regression, not RoI classification."""
    names = ["loss_rpn_cls", "loss_rpn_loc", "loss_box_reg"]
    cfg = _cfg(tmp_path / "loc", 2, burn_in=1, threshold=0.05, **{"MODEL.SELF_TRAINING.PSEUDO_LOSSES": names})
    trainer = _train(cfg)
    logged = {k for k in trainer.storage.histories() if k.startswith("unsup_")}
    assert logged == {f"unsup_{n}" for n in names}


def test_strong_views_leave_the_running_stats_to_the_labeled_images(data, tmp_path):
    """STRONG_VIEW_BN_STATS False: at LR 0, an online iteration leaves the student's batch norm
    statistics where the labeled pass alone puts them; True (the default) moves them."""
    def bn_stats(cfg):
        _train(cfg)
        state = torch.load(os.path.join(cfg.OUTPUT_DIR, EXPORT_NAMES["student"]), map_location="cpu")["model"]
        return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}

    def run(name, burn_in=0, **extra):
        return bn_stats(_cfg(tmp_path / name, 1, burn_in=burn_in, threshold=0.05, **{"SOLVER.BASE_LR": 0.0}, **extra))

    kept = run("kept", **{"MODEL.SELF_TRAINING.STRONG_VIEW_BN_STATS": False})
    mixed = run("mixed")
    labeled = run("labeled", burn_in=1)  # the whole run is burn-in: the labeled pass alone
    assert kept and all(torch.equal(v, labeled[k]) for k, v in kept.items())
    assert any(not torch.equal(v, labeled[k]) for k, v in mixed.items())
