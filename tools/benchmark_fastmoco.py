#!/usr/bin/env python
"""
Fast-MoCo iteration time / MoCo v3 iteration time (same backbone, batch, initial weights; both
trained side by side in one run), and the kNN / linear-probe accuracy of both after the same
number of iterations:

    python tools/benchmark_fastmoco.py --config-file configs/demo/fastmoco_R18_tiny.yaml --iters 30

The baseline is the same config with MODEL.FASTMOCO.COMBINE off unless --baseline-config is given.
"""
import argparse
import logging

from detectron2.utils.logger import setup_logger

import detpre  # noqa: F401  (registers every component)
from detpre.benchmarks.fastmoco import compare, format_table
from detpre.config import get_detpre_cfg
from detpre.utils.io import write_json_atomic


def _cfg(path, opts):
    cfg = get_detpre_cfg(path, opts)
    return cfg


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="Fast-MoCo config")
    p.add_argument("--baseline-config", default="", help="MoCo v3 config (default: COMBINE off)")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3, help="untimed first iterations")
    p.add_argument("--train-dataset", default="detpre_demo_train", help="labeled probe memory")
    p.add_argument("--test-dataset", default="detpre_demo_val", help="labeled probe queries")
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--no-probe", action="store_true", help="timing only, no kNN / linear probe")
    p.add_argument("--synthetic", action="store_true", help="random views instead of the train loader")
    p.add_argument("--output", default="", help="also write the rows to this JSON file")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for both runs")
    args = p.parse_args()
    setup_logger(name="detpre")
    logging.getLogger("detpre").setLevel(logging.INFO)

    cfg = _cfg(args.config_file, args.opts)
    base = _cfg(args.baseline_config, args.opts) if args.baseline_config else None
    rows = compare(cfg, base, args.iters, args.warmup, args.train_dataset, args.test_dataset, k=args.k,
                   probe=not args.no_probe, synthetic=args.synthetic)
    print(format_table(rows, args.iters, cfg.SOLVER.IMS_PER_BATCH))
    if args.output:
        write_json_atomic(args.output, rows, indent=2)


if __name__ == "__main__":
    main()
