#!/usr/bin/env python
"""The `make demo` job: pretrain on the demo data, fine-tune, print AP next to random init."""
import argparse

from detpre.engine.demo import PRETRAIN_CONFIGS, run_demo

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--methods", default="soco",
                    help=f"comma-separated pretraining methods, from {sorted(PRETRAIN_CONFIGS)}")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for the fine-tuning runs")
    args = ap.parse_args()
    run_demo([m for m in args.methods.split(",") if m], args.opts)
