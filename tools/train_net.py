#!/usr/bin/env python
"""
Train or evaluate any detpre method, or fine-tune a detectron2 detector, from one config:

    python tools/train_net.py --config-file configs/demo/soco_R18_FPN.yaml
    python tools/train_net.py --config-file configs/... --num-gpus 8 [--resume] [KEY VALUE ...]
    python tools/train_net.py --config-file configs/... --eval-only MODEL.WEIGHTS model.pth

A mistake in the input (a missing file, an unknown config key, an unwritable OUTPUT_DIR, ...) is
reported as one line ``detpre: error: ...`` and exit status 2, without a traceback.
"""
import sys

from detectron2.engine import default_argument_parser, launch

import detpre  # noqa: F401  (registers every component)
from detpre.engine import main
from detpre.errors import DetpreError


def run(args):
    try:
        return main(args)
    except DetpreError as e:
        print(f"detpre: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        run,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
