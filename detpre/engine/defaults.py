"""What ``tools/train_net.py`` runs in each process: set-up, then train or evaluate."""
import logging

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from detpre.config import get_detpre_cfg
from detpre.data.datasets import register_from_config

from .trainer import Trainer

__all__ = ["setup", "main"]


def setup(args):
    """Config from ``--config-file`` + ``opts``, detectron2's default set-up, data sets registered."""
    cfg = get_detpre_cfg(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    register_from_config(cfg)
    return cfg


def trainer_class(cfg):
    """The student of self-training needs its own step (two streams, normalized loss)."""
    if cfg.SELF_TRAINING.ENABLED:
        from .self_training import SelfTrainingTrainer

        return SelfTrainingTrainer
    return Trainer


def main(args, trainer_cls=None):
    cfg = setup(args)
    trainer_cls = trainer_cls or trainer_class(cfg)
    if args.eval_only:
        model = trainer_cls.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        logging.getLogger("detpre").info("Evaluating weights: %s", cfg.MODEL.WEIGHTS)
        res = trainer_cls.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()
