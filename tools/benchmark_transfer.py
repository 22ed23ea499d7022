#!/usr/bin/env python
"""
Transfer at equal pretraining time: pretrain each config for the same wall-clock budget,
export it, fine-tune one detector config from each export and from random init, print
pretraining cost (s, images/s) and AP:

    python tools/benchmark_transfer.py --budget-seconds 120 --configs \\
        configs/demo/jigsaw_R18_tiny.yaml configs/demo/soco_R18_FPN_tiny.yaml \\
        configs/demo/fastmoco_R18_tiny.yaml [-- fine-tuning KEY VALUE ...]

Finished steps are skipped, killed ones resume; results also go to
<output-dir>/benchmark_transfer.json.
"""
import argparse

import detpre  # noqa: F401
from detpre.engine.transfer_benchmark import run_transfer_benchmark


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", required=True, help="pretraining configs")
    ap.add_argument("--budget-seconds", type=float, required=True,
                    help="training time each pretraining gets")
    ap.add_argument("--finetune-config", default="configs/demo/mask_rcnn_R18_FPN_tiny.yaml")
    ap.add_argument("--output-dir", default="output/benchmark_transfer")
    ap.add_argument("--calibration-iters", type=int, default=20,
                    help="iterations timed (benchmark_pretrain) to set each config's MAX_ITER")
    ap.add_argument("--no-random-init", action="store_true", help="skip the random-init row")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="overrides for the fine-tuning runs")
    args = ap.parse_args()
    opts = args.opts[1:] if args.opts[:1] == ["--"] else args.opts
    run_transfer_benchmark(args.configs, args.budget_seconds, args.finetune_config,
                           args.output_dir, args.calibration_iters, not args.no_random_init, opts)


if __name__ == "__main__":
    main()
