#!/usr/bin/env python
"""
kNN / linear-probe accuracy of a pretrained backbone on object crops of a labeled data set:

    python tools/eval_backbone.py --config-file configs/demo/fastmoco_R18_tiny.yaml \
        --weights pretrained.pkl [--train-dataset detpre_demo_train --test-dataset detpre_demo_val]

``--weights`` takes a tools/convert_pretrained.py export (.pkl), a detpre checkpoint (.pth), or
"" for a randomly initialized baseline. The config gives the ResNet definition and pixel format.
A file detpre will not read (e.g. a .pkl that would run code: see README "Which files detpre
reads") is reported as one line ``detpre: error: ...`` and exit status 2.
"""
import argparse
import json
import sys

import torch
from detectron2.data import DatasetCatalog

import detpre  # noqa: F401  (registers every component)
from detpre.config import get_detpre_cfg
from detpre.data.datasets import register_from_config
from detpre.errors import DetpreError
from detpre.evaluation.backbone_probe import evaluate_backbone
from detpre.utils.io import write_json_atomic


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="config defining the ResNet (MODEL.RESNETS.*)")
    p.add_argument("--weights", default="", help=".pkl export, detpre .pth checkpoint, or '' (random)")
    p.add_argument("--ema", action="store_true", help="use the momentum target of a .pth checkpoint")
    p.add_argument("--train-dataset", default="detpre_demo_train", help="labeled memory / probe training set")
    p.add_argument("--test-dataset", default="detpre_demo_val", help="labeled query set")
    p.add_argument("--crop-size", type=int, default=64)
    p.add_argument("--k", type=int, default=20,
                   help="kNN neighbours, at most a tenth of the memory (InstDisc's 200 is for ImageNet)")
    p.add_argument("--temperature", type=float, default=0.07, help="kNN temperature (InstDisc: 0.07)")
    p.add_argument("--no-linear", action="store_true", help="skip the logistic-regression probe")
    p.add_argument("--output", default="", help="also write the metrics to this JSON file")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = p.parse_args()

    try:
        cfg = get_detpre_cfg(args.config_file, args.opts)
        register_from_config(cfg)
        with torch.no_grad():
            res = evaluate_backbone(
                cfg, args.weights, DatasetCatalog.get(args.train_dataset), DatasetCatalog.get(args.test_dataset),
                crop_size=args.crop_size, k=args.k, temperature=args.temperature, linear=not args.no_linear,
                use_target=args.ema,
            )
    except DetpreError as e:
        print(f"detpre: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(json.dumps(res, indent=2))
    if args.output:
        write_json_atomic(args.output, res, indent=2)


if __name__ == "__main__":
    main()
