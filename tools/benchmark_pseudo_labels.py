#!/usr/bin/env python
"""
Pseudo-labelling images/s vs plain detectron2 inference on the same images, one run:

    python tools/benchmark_pseudo_labels.py --config-file configs/demo/mask_rcnn_R18_FPN_tiny.yaml \
        --weights output/demo/self_training/teacher/model_final.pth --dataset detpre_demo_unlabeled --num 48 \
        [--tta TEST.AUG.MIN_SIZES "(112,128,144)" TEST.AUG.MAX_SIZE 256]   (TTA sizes: TEST.AUG.*)
"""
import argparse

import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from tabulate import tabulate

import detpre  # noqa: F401
from detpre.benchmarks.pseudo_labels import benchmark_pseudo_labelling
from detpre.checkpoint import DetpreCheckpointer
from detpre.config import get_detpre_cfg
from detpre.data.datasets import register_from_config
from detpre.pseudo_labels.teacher import teacher_config


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", default="", help="teacher weights ('' = random init: speed only)")
    p.add_argument("--dataset", default="detpre_demo_unlabeled")
    p.add_argument("--num", type=int, default=64, help="images")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--tta", action="store_true", help="also time TTA")
    p.add_argument("opts", nargs=argparse.REMAINDER)
    a = p.parse_args()
    cfg = get_detpre_cfg(a.config_file, a.opts)
    register_from_config(cfg)
    cfg = teacher_config(cfg, cfg.MODEL.SELF_TRAINING.SCORE_THRESHOLD)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if a.weights:
        DetpreCheckpointer(model).load(a.weights)  # read without running code (safe_load)
    dicts = DatasetCatalog.get(a.dataset)[: a.num]
    rows = benchmark_pseudo_labelling(cfg, model, dicts, a.repeats, a.num_workers, tta=a.tta)
    print(f"\n{len(dicts)} images of {a.dataset}, {cfg.MODEL.META_ARCHITECTURE}, "
          f"weights: {a.weights or 'random init'}, "
          f"torch threads: {torch.get_num_threads()}")
    print(tabulate([(k, f"{v:.2f}", f"{r:.3f}x") for k, v, r in rows],
                   headers=["method", "images/s", "vs detectron2"], tablefmt="github"))


if __name__ == "__main__":
    main()
