#!/usr/bin/env python
"""
Train or evaluate any detpre method, or fine-tune a detectron2 detector, from one config:

    python tools/train_net.py --config-file configs/demo/soco_R18_FPN.yaml
    python tools/train_net.py --config-file configs/... --num-gpus 8 [--resume] [KEY VALUE ...]
    python tools/train_net.py --config-file configs/... --eval-only MODEL.WEIGHTS model.pth
"""
from detectron2.engine import default_argument_parser, launch

import detpre  # noqa: F401  (registers every component)
from detpre.engine import main

if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
