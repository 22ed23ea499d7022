#!/usr/bin/env python
"""
Time a pretraining iteration of any detpre method, split into data loading, forward + backward +
optimizer step and each hook (momentum update, LR scheduler, ...), with images/s and peak memory:

    python tools/benchmark_pretrain.py --config-file configs/demo/soco_R18_FPN_tiny.yaml --iters 20

Targets: momentum update <= 2% of an iteration; data loading <= 5% at the demo config.
"""
import argparse

import detpre  # noqa: F401  (registers every component)
from detpre.benchmarks.pretrain import benchmark_pretrain, format_benchmark
from detpre.config import get_detpre_cfg
from detpre.utils.io import write_json_atomic


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3, help="untimed first iterations")
    p.add_argument("--output", default="", help="also write the result to this JSON file")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE ...)")
    args = p.parse_args()
    cfg = get_detpre_cfg(args.config_file, args.opts)
    result = benchmark_pretrain(cfg, args.iters, args.warmup)
    print(format_benchmark(result))
    if args.output:
        write_json_atomic(args.output, result, indent=1)


if __name__ == "__main__":
    main()
