"""
Noisy-Student rounds: teacher -> pseudo-labels on the unlabeled set -> student (strong
augmentation, mixed batches, normalized loss) -> the student is the next round's teacher.

Every step is skipped when its output exists and resumes when it was killed (trainer
checkpoints, pseudo-label chunks), so re-running the same command continues where it stopped.
Each student's weights are also exported as a plain detectron2 checkpoint (``student.pth``).
"""
import hashlib
import json
import logging
import math
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog

from detpre.config import get_detpre_cfg
from detpre.data.datasets import register_coco, register_from_config
from detpre.engine.self_training import SelfTrainingTrainer
from detpre.engine.trainer import Trainer
from detpre.pseudo_labels import label_images
from detpre.utils.io import atomic_open, write_json_atomic

from .runner import final_metrics, is_finished, repo_path

__all__ = ["self_train", "export_plain_checkpoint"]

logger = logging.getLogger("detpre.self_training")


def export_plain_checkpoint(checkpoint, path):
    """Only the model weights of a training checkpoint, as ``{"model": state_dict}`` (atomic)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
    with atomic_open(path, "wb") as f:
        torch.save({"model": state, "__author__": "detpre self-training"}, f)
    return path


def _train(trainer_cls, cfg):
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if not is_finished(cfg.OUTPUT_DIR):
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        trainer = trainer_cls(cfg)
        trainer.resume_or_load(resume=True)
        trainer.train()
    return final


def _evaluate(cfg, weights, trained_here=False):
    """AP of ``weights`` on DATASETS.TEST: the end-of-training evaluation of a run in OUTPUT_DIR
    that produced them, else a fresh one (cached in OUTPUT_DIR/eval_<name>.json)."""
    if trained_here and final_metrics(cfg.OUTPUT_DIR):
        logger.info("Evaluated weights: %s (end of training, %s/metrics.json)", weights, cfg.OUTPUT_DIR)
        return final_metrics(cfg.OUTPUT_DIR)
    cache = os.path.join(cfg.OUTPUT_DIR, "eval_" + os.path.basename(weights) + ".json")
    if os.path.isfile(cache):
        with open(cache) as f:
            return json.load(f)
    if not cfg.DATASETS.TEST:
        return {}
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    logger.info("Evaluating weights: %s", weights)
    res = Trainer.test(cfg, model)
    flat = {f"{task}/{k}": v for task, d in res.items() for k, v in d.items()}
    write_json_atomic(cache, flat)
    return flat


def self_train(teacher_config, student_config, output_dir, *, rounds=1, teacher_weights=None,
               unlabeled_dataset=None, teacher_opts=(), student_opts=(), student_from_teacher=False,
               label_kwargs=None):
    """Run ``rounds`` teacher -> student rounds; returns a list of per-model result rows."""
    if rounds < 1:
        raise ValueError(f"--rounds {rounds}: must be >= 1")
    teacher_config, student_config = repo_path(teacher_config), repo_path(student_config)
    tcfg = get_detpre_cfg(teacher_config, list(teacher_opts) + ["OUTPUT_DIR", os.path.join(output_dir, "teacher")])
    register_from_config(tcfg)
    trained = teacher_weights is None
    if trained:
        logger.info("training the teacher (%s) on %s", teacher_config, tcfg.DATASETS.TRAIN)
        teacher_weights = _train(Trainer, tcfg)
    rows = [{"model": "teacher", "weights": teacher_weights, **_evaluate(tcfg, teacher_weights, trained)}]

    scfg0 = get_detpre_cfg(student_config, student_opts)
    unlabeled = unlabeled_dataset or scfg0.MODEL.SELF_TRAINING.UNLABELED_DATASET
    if not unlabeled:
        raise ValueError("no unlabeled data set: set MODEL.SELF_TRAINING.UNLABELED_DATASET in the student "
                         "config or pass --unlabeled")
    register_from_config(scfg0)
    dicts = DatasetCatalog.get(unlabeled)
    for r in range(1, rounds + 1):
        rdir = os.path.join(output_dir, f"round{r}")
        pl = os.path.join(rdir, "pseudo_labels.json")
        if not os.path.isfile(pl):
            logger.info("round %d: pseudo-labelling %s with %s", r, unlabeled, teacher_weights)
            label_images(tcfg, dicts, pl, weights=teacher_weights, **(label_kwargs or {}))
        with open(pl) as f:
            root = json.load(f)["info"]["image_root"]
        name = "detpre_self_training_" + hashlib.sha1(os.path.abspath(pl).encode()).hexdigest()[:8]
        register_coco(name, pl, root, source=f"round {r} pseudo-labels")
        opts = ["MODEL.SELF_TRAINING.ENABLED", True, "MODEL.SELF_TRAINING.PSEUDO_DATASETS", (name,),
                "MODEL.SELF_TRAINING.UNLABELED_DATASET", unlabeled, "OUTPUT_DIR", os.path.join(rdir, "student")]
        if student_from_teacher:
            opts += ["MODEL.WEIGHTS", teacher_weights]
        scfg = get_detpre_cfg(student_config, list(student_opts) + opts)
        final = _train(SelfTrainingTrainer, scfg)
        student = export_plain_checkpoint(final, os.path.join(rdir, "student.pth"))
        rows.append({"model": f"student (round {r})", "weights": student, **_evaluate(scfg, student, True)})
        teacher_weights, tcfg = student, scfg  # the student labels the next round
    return rows


def format_rows(rows):
    lines = ["| model | box AP | box AP50 | mask AP | weights |", "|---|---|---|---|---|"]
    for r in rows:
        g = lambda k: r.get(k, math.nan)  # noqa: E731
        aps = " | ".join(f"{g(k):.2f}" for k in ("bbox/AP", "bbox/AP50", "segm/AP"))
        lines.append(f"| {r['model']} | {aps} | {r['weights']} |")
    return "\n".join(lines)
