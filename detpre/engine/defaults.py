"""What ``tools/train_net.py`` runs in each process: set-up, then train or evaluate."""
import logging
import os
import shlex
import sys
import tempfile

from detectron2.engine import default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from detpre.checkpoint import DetpreCheckpointer, checkpoint_candidates
from detpre.config import get_detpre_cfg
from detpre.data.datasets import register_from_config
from detpre.errors import DetpreError
from detpre.registry import TRAINER_REGISTRY

from . import self_training  # noqa: F401  (registers SelfTrainingTrainer)
from .guard import TrainingInterrupted, lock_output_dir
from .launch import detect_environment
from .trainer import Trainer

__all__ = ["setup", "main", "check_output_dir", "check_weights", "trainer_class", "lock_output_dir",
           "resume_command"]


def check_output_dir(path):
    """``OUTPUT_DIR`` exists (or is made) and takes files; else one line naming it."""
    if not path or not comm.is_main_process():
        return
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise DetpreError(f"OUTPUT_DIR={path} is not writable ({e.strerror or e}); choose another "
                          "OUTPUT_DIR or fix its permissions") from None


def check_weights(cfg, resume):
    """A local ``MODEL.WEIGHTS`` must exist before anything is built (unless a resume replaces it)."""
    w = cfg.MODEL.WEIGHTS
    if not w or "://" in w or os.path.isfile(w):
        return
    if resume and checkpoint_candidates(cfg.OUTPUT_DIR):
        return
    raise DetpreError(f"MODEL.WEIGHTS={w}: no such file; give an existing .pth/.pkl checkpoint, "
                      "a detectron2:// model-zoo path, or MODEL.WEIGHTS '' for random init")


def resume_command(args, argv=None, environ=None):
    """The command line that continues this run: ``argv`` (default ``sys.argv``) with ``--resume``
    (before the ``KEY VALUE`` overrides, which take the rest of the line), under the launcher that
    started it (torchrun on one machine: its process count; else its options as they were)."""
    argv = list(sys.argv if argv is None else argv)
    if not args.resume:
        argv.insert(1, "--resume")
    environ = os.environ if environ is None else environ
    dist = detect_environment(environ, getattr(args, "launcher", "auto"))
    if dist is None:
        return shlex.join([sys.executable, *argv])
    if dist.launcher == "torchrun":
        local = environ.get("LOCAL_WORLD_SIZE", "")
        options = f"--nproc_per_node {local}" if local == str(dist.world_size) else "<its options as before>"
        return f"torchrun {options} {shlex.join(argv)}"
    return f"srun <its options as before> {shlex.join([sys.executable, *argv])}"


def setup(args, cfg=None):
    """Config from ``--config-file`` + ``opts`` (or ``cfg``), detectron2's default set-up (writes
    config.yaml and log.txt to OUTPUT_DIR: ``main`` locks it first), data sets registered."""
    if cfg is None:
        cfg = get_detpre_cfg(args.config_file, args.opts)
        cfg.freeze()
        check_output_dir(cfg.OUTPUT_DIR)
    default_setup(cfg, args)
    # detpre's own warnings (a collapse, an empty teacher) in log.txt too, as detectron2's are
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="detpre", abbrev_name="detpre")
    register_from_config(cfg)
    return cfg


def trainer_class(cfg):
    """The registered trainer that ``applies_to(cfg)`` (e.g. the self-training student, which
    needs its own step), else ``Trainer``."""
    found = [cls for _, cls in TRAINER_REGISTRY if cls.applies_to(cfg)]
    if len(found) > 1:
        raise DetpreError(f"the config fits several trainers ({', '.join(c.__name__ for c in found)})")
    return found[0] if found else Trainer


def main(args, trainer_cls=None):
    cfg = get_detpre_cfg(args.config_file, args.opts)
    cfg.freeze()
    check_output_dir(cfg.OUTPUT_DIR)
    with lock_output_dir(cfg.OUTPUT_DIR, "evaluation" if args.eval_only else "training"):
        return _run(setup(args, cfg), args, trainer_cls)


def _run(cfg, args, trainer_cls):
    check_weights(cfg, args.resume)
    trainer_cls = trainer_cls or trainer_class(cfg)
    if args.eval_only:
        model = trainer_cls.build_model(cfg)
        DetpreCheckpointer(model, save_dir=cfg.OUTPUT_DIR,
                           weights_strict=cfg.MODEL.WEIGHTS_STRICT).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        logging.getLogger("detpre").info("Evaluating weights: %s", cfg.MODEL.WEIGHTS)
        res = trainer_cls.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.resume_command = resume_command(args)
    try:
        return trainer.train()
    except TrainingInterrupted:  # the trainer saved a checkpoint and printed how to resume
        sys.exit(130)
