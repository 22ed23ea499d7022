#!/usr/bin/env python
"""
Train or evaluate any detpre method, or fine-tune a detectron2 detector, from one config:

    python tools/train_net.py --config-file configs/demo/soco_R18_FPN.yaml
    python tools/train_net.py --config-file configs/... --num-gpus 8 [--resume] [KEY VALUE ...]
    python tools/train_net.py --config-file configs/... --eval-only MODEL.WEIGHTS model.pth

A mistake in the input (a missing file, an unknown config key, an unwritable OUTPUT_DIR, ...) is
reported as one line ``detpre: error: ...`` and exit status 2, without a traceback.

The same command runs under torchrun and Slurm, one process per GPU (see detpre/engine/launch.py):

    torchrun --nnodes N --nproc_per_node G [--rdzv-endpoint host:port] tools/train_net.py ...
    srun --ntasks-per-node G --gpus-per-task 1 python tools/train_net.py ...
"""
import sys

import detpre  # noqa: F401  (registers every component)
from detpre.engine import main
from detpre.engine.launch import argument_parser, launch
from detpre.errors import DetpreError


def _fail(e):
    print(f"detpre: error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


def _warn_random_eval(args):
    """``--eval-only`` with an empty MODEL.WEIGHTS (and no checkpoint for ``--resume``) evaluates
    a randomly initialized model, which detectron2 does without a word: one line says so."""
    from detectron2.utils import comm

    from detpre.checkpoint import checkpoint_candidates
    from detpre.config import get_detpre_cfg

    cfg = get_detpre_cfg(args.config_file, args.opts)
    if cfg.MODEL.WEIGHTS or (args.resume and checkpoint_candidates(cfg.OUTPUT_DIR)) or not comm.is_main_process():
        return False
    print("detpre: warning: --eval-only with MODEL.WEIGHTS '' evaluates a randomly initialized model; "
          "pass MODEL.WEIGHTS path/to/model_final.pth to evaluate trained weights", file=sys.stderr, flush=True)
    return True


def run(args):
    try:
        if args.eval_only:
            _warn_random_eval(args)
        return main(args)
    except DetpreError as e:
        _fail(e)


if __name__ == "__main__":
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    try:
        launch(run, args)  # reads the config first (MODEL.DEVICE decides NCCL or gloo)
    except DetpreError as e:
        _fail(e)
