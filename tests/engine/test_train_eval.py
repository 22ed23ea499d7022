"""A few iterations of the tiny demo Mask R-CNN lower the loss, and evaluation returns AP numbers."""
import math
import os

from detectron2.data import DatasetCatalog

from detpre.config import get_detpre_cfg
from detpre.data.datasets import generate_demo_dataset, register_coco
from detpre.engine import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tiny_cfg(tmp_path):
    root = generate_demo_dataset(str(tmp_path / "demo"), seed=1, num_train=6, num_val=3, num_unlabeled=1)
    for split in ("train", "val"):
        name = f"_test_train_eval_{split}"
        if name not in DatasetCatalog.list():
            register_coco(name, os.path.join(root, "annotations", f"instances_{split}.json"),
                          os.path.join(root, "images", split))
    cfg = get_detpre_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs/demo/mask_rcnn_R18_FPN_tiny.yaml"))
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("_test_train_eval_train",), ("_test_train_eval_val",)
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS = 2, 30, 5
    cfg.SOLVER.STEPS, cfg.SOLVER.CHECKPOINT_PERIOD = (), 1000
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # untrained scores are low: keep every detection
    cfg.SEED, cfg.OUTPUT_DIR = 0, str(tmp_path / "out")
    return cfg


def test_tiny_mask_rcnn_trains_and_evaluates(tmp_path):
    cfg = _tiny_cfg(tmp_path)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    res = Trainer.test(cfg, trainer.model)
    ap = res["bbox"]["AP"]  # one test set: DefaultTrainer.test returns its results directly
    assert math.isfinite(ap) and 0.0 <= ap <= 100.0
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
