#!/usr/bin/env python
"""
Draw one training sample's views (SoCo: V1, V2, V3[, V4]) side by side with its proposals, the
same colour for the same proposal in every view:

    python tools/visualize_views.py --config-file configs/demo/soco_R18_FPN_tiny.yaml \
        --index 0 --output output/demo/soco_views.png
"""
import argparse
import random

import numpy as np

import detpre  # noqa: F401  (registers every component)
from detpre.config import get_detpre_cfg
from detpre.data.build import train_dataset_dicts
from detpre.data.datasets import register_from_config
from detpre.data.mappers import build_mapper
from detpre.method import declared_mapper
from detpre.utils.view_vis import draw_views, save_png


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--index", type=int, default=0, help="which image of DATASETS.TRAIN")
    p.add_argument("--seed", type=int, default=0, help="seed of the random views")
    p.add_argument("--output", default="views.png")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE ...)")
    args = p.parse_args()
    cfg = get_detpre_cfg(args.config_file, args.opts)
    register_from_config(cfg)
    dicts = train_dataset_dicts(cfg)
    if not 0 <= args.index < len(dicts):
        raise SystemExit(f"--index {args.index}: DATASETS.TRAIN has {len(dicts)} images")
    np.random.seed(args.seed)
    random.seed(args.seed)
    sample = build_mapper(cfg, is_train=True)(dicts[args.index])
    if "view_boxes" not in sample:
        raise SystemExit(f"the mapper {declared_mapper(cfg) or 'DatasetMapper'} gives no 'views'/'view_boxes' to draw")
    save_png(draw_views(sample["views"], sample["view_boxes"], cfg.INPUT.FORMAT), args.output)
    print(f"{sample['file_name']}: {len(sample['views'])} views, {len(sample['view_boxes'][0])} "
          f"proposals each -> {args.output}")


if __name__ == "__main__":
    main()
