"""Student training end to end on tiny data: two streams, normalized loss, PseudoLabel refresh,
and a checkpoint that a stock detectron2 predictor loads."""
import json
import os

import torch
from _self_training_data import tiny_cfg, write_coco, write_images
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from detpre.data.datasets import register_coco, register_image_folder
from detpre.engine.self_training import SelfTrainingTrainer
from detpre.pseudo_labels import label_images


def test_student_trains_refreshes_and_exports(tmp_path):
    tag = str(abs(hash(str(tmp_path))))
    lab = write_images(tmp_path / "labeled", 4, seed=0)
    register_coco(f"st_lab_{tag}", write_coco(str(tmp_path / "labeled.json"), lab), str(tmp_path / "labeled"))
    write_images(tmp_path / "unlabeled", 4, seed=5)
    register_image_folder(f"st_unl_{tag}", str(tmp_path / "unlabeled"))

    torch.manual_seed(0)
    cfg = tiny_cfg()
    cfg.DATASETS.TRAIN = (f"st_lab_{tag}",)
    teacher = build_model(cfg)
    from detectron2.data import DatasetCatalog

    unl = DatasetCatalog.get(f"st_unl_{tag}")
    pl = str(tmp_path / "pl.json")
    label_images(cfg, unl, pl, model=teacher, score_threshold=0.2, progress=False)
    register_coco(f"st_pl_{tag}", pl, json.load(open(pl))["info"]["image_root"])

    cfg.MODEL.SELF_TRAINING.ENABLED = True
    cfg.MODEL.SELF_TRAINING.PSEUDO_DATASETS = (f"st_pl_{tag}",)
    cfg.INPUT.SELF_TRAINING.AUGMENT = "S3"
    cfg.MODEL.SELF_TRAINING.UNLABELED_DATASET = f"st_unl_{tag}"
    cfg.MODEL.SELF_TRAINING.REFRESH_PERIOD = 2
    cfg.MODEL.SELF_TRAINING.SCORE_THRESHOLD = 0.2
    cfg.DETPRE.HOOKS = ["PseudoLabel"]
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER, cfg.SOLVER.BASE_LR = 2, 3, 0.001
    cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.STEPS, cfg.SOLVER.CHECKPOINT_PERIOD = 1, (), 100
    cfg.OUTPUT_DIR = str(tmp_path / "student")
    trainer = SelfTrainingTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()

    with open(os.path.join(cfg.OUTPUT_DIR, "metrics.json")) as f:
        recs = [json.loads(line) for line in f]
    assert any("st_weight_pseudo" in r and "pseudo_loss_cls" in r and "loss_cls" in r for r in recs)
    refreshed = os.path.join(cfg.OUTPUT_DIR, "pseudo_labels", "iter_0000002.json")
    assert os.path.isfile(refreshed)
    assert json.load(open(refreshed))["info"]["teacher_weights"] == "model at iteration 2"

    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    ckpt = torch.load(final, map_location="cpu", weights_only=False)
    assert ckpt["self_training"]["avg_h"] > 0
    assert any(v.get("current") == refreshed for v in ckpt["trainer"]["hooks"].values()
               if isinstance(v, dict))
    plain = build_model(cfg)
    assert set(ckpt["model"]) == set(plain.state_dict())  # a plain detectron2 detector
    pcfg = cfg.clone()
    pcfg.MODEL.WEIGHTS = final
    pred = DefaultPredictor(pcfg)
    assert torch.equal(pred.model.state_dict()["backbone.fpn_output2.weight"],
                       ckpt["model"]["backbone.fpn_output2.weight"])
    img = (torch.rand(64, 80, 3) * 255).byte().numpy()
    assert "instances" in pred(img)
    DetectionCheckpointer(plain).load(final)  # MODEL.WEIGHTS path
