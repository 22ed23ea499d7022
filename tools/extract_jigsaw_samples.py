#!/usr/bin/env python
"""
Extract the montage pre-training samples (expanded ground-truth boxes + background boxes) of a
config's DATASETS.TRAIN into the json DATASETS.JIGSAW_SAMPLES names (or --output):

    python tools/extract_jigsaw_samples.py --config-file configs/jigsaw/jigsaw_R50_COCO.yaml
    python tools/extract_jigsaw_samples.py --dataset detpre_demo_train --output samples.json

With --dataset (repeatable), DATASETS.TRAIN is that list and the number of classes is read
from its metadata; the other settings are the config's (or detpre's defaults).

Training does this on first use too; run it ahead to see the counts or to share the file.
"""
import argparse
import json

import detpre  # noqa: F401
from detpre.config import get_detpre_cfg
from detpre.data.datasets import register_from_config
from detpre.data.jigsaw import extract_from_config, num_classes_of


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", help="a jigsaw pretraining config")
    parser.add_argument("--dataset", action="append", default=[],
                        help="registered data set to extract from (overrides DATASETS.TRAIN)")
    parser.add_argument("--output", default="", help="default: DATASETS.JIGSAW_SAMPLES")
    parser.add_argument("--overwrite", action="store_true", help="re-extract an existing file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    args = parser.parse_args()
    cfg = get_detpre_cfg()
    if not args.config_file and not args.dataset:
        parser.error("give --config-file or --dataset")
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    register_from_config(cfg)
    if args.dataset:
        cfg.DATASETS.TRAIN = tuple(args.dataset)
        cfg.MODEL.JIGSAW.NUM_CLASSES = num_classes_of(args.dataset)
    path, counts = extract_from_config(cfg, args.output, args.overwrite)
    print(json.dumps({"file": path, **counts}))


if __name__ == "__main__":
    main()
