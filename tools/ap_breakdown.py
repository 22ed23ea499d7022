#!/usr/bin/env python
"""
Where does a box AP difference come from? Box AP of fine-tuning runs with their classes and
class-agnostic, by IoU and object size, mean over each group's runs and the difference to the first
group (detpre.evaluation.ap_breakdown):

    python tools/ap_breakdown.py --group random=output/demo_long/finetune/random_init/seed0,... \
        --group soco=output/demo_long/finetune/soco_backbone_fpn/seed0,... [--dataset detpre_demo_val]

Each run directory holds ``inference/<dataset>/coco_instances_results.json`` (its final evaluation)
and the ``config.yaml`` it was trained with, which names the data set's ground truth.
"""
import argparse
import os
import sys

import numpy as np

import detpre  # noqa: F401  (registers every component)
from detpre.benchmarks.table import markdown_table
from detpre.config import get_detpre_cfg
from detpre.evaluation.ap_breakdown import STATS, ap_breakdown
from detpre.evaluation.image_bootstrap import load_coco
from detpre.jobs.stats import ground_truth_json


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", action="append", required=True, metavar="NAME=DIR[,DIR...]",
                    help="runs of one init (the first group is the baseline)")
    ap.add_argument("--dataset", default="", help="evaluated data set (default: the first run's DATASETS.TEST)")
    args = ap.parse_args(argv)
    groups = []
    for g in args.group:
        name, _, dirs = g.partition("=")
        dirs = [d for d in dirs.split(",") if d]
        if not name or not dirs:
            sys.exit(f"ap_breakdown: --group {g!r}: give NAME=DIR[,DIR...]")
        groups.append((name, dirs))
    first = os.path.join(groups[0][1][0], "config.yaml")
    if not os.path.isfile(first):
        sys.exit(f"ap_breakdown: {first}: no such file; give fine-tuning run directories of tools/train_net.py")
    cfg = get_detpre_cfg(first)
    dataset = args.dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "")
    if not dataset:
        sys.exit(f"ap_breakdown: {first} evaluates no data set (DATASETS.TEST is empty); pass --dataset")
    gt = ground_truth_json(cfg, dataset)
    if gt is None:
        sys.exit(f"ap_breakdown: {dataset} has no COCO json to score against")
    coco_gt = load_coco(gt)
    keys = [*STATS, *(f"agnostic {k}" for k in STATS)]
    means = {}
    for name, dirs in groups:
        rows = []
        for d in dirs:
            path = os.path.join(d, "inference", dataset, "coco_instances_results.json")
            if not os.path.isfile(path):
                sys.exit(f"ap_breakdown: {path}: no such file; evaluate the run first (tools/train_net.py --eval-only)")
            try:
                rows.append(ap_breakdown(coco_gt, path))
            except ValueError as e:
                sys.exit(f"ap_breakdown: {e}")
        means[name] = np.mean([[r[k] for k in keys] for r in rows], axis=0)
    base = groups[0][0]
    table = [[name, len(dirs), *(f"{v:.2f}" for v in means[name])] for name, dirs in groups]
    table += [[f"{name} - {base}", "", *(f"{v:+.2f}" for v in means[name] - means[base])] for name, _ in groups[1:]]
    print(f"Box AP on {dataset}, mean over each group's runs (agnostic: every box one class):")
    print(markdown_table(["init", "runs", *keys], table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
