#!/usr/bin/env python
"""
Selective-search backends side by side on N images of a registered data set (a benchmark,
not a test): images/s on one core, and recall of the ground-truth boxes at IoU 0.5 / 0.7 and
mean best IoU at the same proposal budget (raw ranked proposals, before SoCo's filter).

    python tools/benchmark_proposals.py [--dataset detpre_demo_val] [--num-images 30]
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # images/s per core

import argparse  # noqa: E402
import json  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="detpre_demo_val")
    p.add_argument("--config-file", default="", help="config whose DATASETS.* to register")
    p.add_argument("--num-images", type=int, default=30)
    p.add_argument("--budget", type=int, default=300, help="proposals per image scored")
    p.add_argument("--proposal-size", type=int, default=224)
    p.add_argument("--backends", default="detpre,selectivesearch,opencv",
                   help="comma-separated backend names")
    p.add_argument("--extra", default="{}", help='more rows: JSON {"row": ["backend", {kwargs}]}')
    args = p.parse_args(argv)

    import cv2
    from detectron2.data import DatasetCatalog
    from tabulate import tabulate

    from detpre import get_detpre_cfg
    from detpre.benchmarks.proposals import benchmark_backends
    from detpre.data.datasets import register_from_config

    cv2.setNumThreads(1)
    cfg = get_detpre_cfg()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    register_from_config(cfg)
    records = DatasetCatalog.get(args.dataset)[: args.num_images]
    backends = {b: (b, {}) for b in args.backends.split(",") if b}
    backends.update({k: tuple(v) for k, v in json.loads(args.extra).items()})
    rows = benchmark_backends(records, backends, args.budget, args.proposal_size)
    cols = ["backend", "images_per_s", "proposals", "recall@0.5", "recall@0.7", "mean_best_iou",
            "note"]
    print(f"{args.dataset}: {len(records)} images at {args.proposal_size}x{args.proposal_size}, "
          f"<= {args.budget} proposals/image, {rows[0].get('num_gt', 0)} GT boxes")
    print(tabulate([[r.get(c, "") for c in cols] for r in rows], headers=cols, floatfmt=".3f"))
    ref = next((r for r in rows if r["backend"] == "selectivesearch" and "images_per_s" in r), None)
    if ref:
        for r in rows:
            if "images_per_s" in r and r is not ref:
                print(f"{r['backend']}: {r['images_per_s'] / ref['images_per_s']:.2f}x the "
                      f"selectivesearch package's images/s")


if __name__ == "__main__":
    main()
