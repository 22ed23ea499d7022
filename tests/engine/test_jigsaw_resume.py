"""Montage pre-training through the Trainer: the ERF refresh schedule survives --resume exactly."""
import os

import torch
from detectron2.data import DatasetCatalog
from detectron2.utils.env import seed_all_rng

import detpre.data.mappers.jigsaw  # noqa: F401  (registers JigsawMapper)
import detpre.modeling.meta_arch.jigsaw  # noqa: F401  (registers JigsawPretrain)
from detpre.config import get_detpre_cfg
from detpre.data.datasets import generate_demo_dataset, register_coco
from detpre.engine import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cfg(tmp_path, out, max_iter):
    root = generate_demo_dataset(str(tmp_path / "demo"), seed=2, num_train=4, num_val=1,
                                 num_unlabeled=1)
    if "_test_jigsaw_train" not in DatasetCatalog.list():
        register_coco("_test_jigsaw_train",
                      os.path.join(root, "annotations", "instances_train.json"),
                      os.path.join(root, "images", "train"))
    cfg = get_detpre_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs/demo/jigsaw_R18_tiny.yaml"))
    cfg.DATASETS.TRAIN = ("_test_jigsaw_train",)
    cfg.DATASETS.JIGSAW_SAMPLES = str(tmp_path / "samples.json")
    cfg.INPUT.JIGSAW.SIZE, cfg.MODEL.JIGSAW.ERF_PERIOD, cfg.MODEL.JIGSAW.ERF_BATCH = 64, 3, 2
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER, cfg.SOLVER.CHECKPOINT_PERIOD = 2, max_iter, 2
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
    cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.BASE_LR = 0, 0.01
    # detectron2 v0.6's DefaultTrainer checkpoints no optimizer state (SGD momentum buffers);
    # plain SGD keeps this test about the jigsaw pieces (sample stream, ERF buffers, refreshes)
    cfg.SOLVER.MOMENTUM = 0.0
    cfg.SEED, cfg.OUTPUT_DIR = 0, str(tmp_path / out)
    return cfg


def _train(cfg, resume):
    seed_all_rng(cfg.SEED)  # what default_setup does: same initial weights in both runs
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer.model


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    full = _train(_cfg(tmp_path, "full", 4), resume=False)
    assert int(full.erf.num_refreshes) == 2  # iterations 0 and 3
    _train(_cfg(tmp_path, "cut", 2), resume=False)  # "killed" after iteration 1
    resumed = _train(_cfg(tmp_path, "cut", 4), resume=True)
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), atol=1e-6), k
