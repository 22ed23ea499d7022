#!/usr/bin/env python
"""
The `make demo` job: box pretraining (with --methods, SoCo and the others too) on the built-in
demo data, then the tiny Mask R-CNN fine-tuned from each and from random init with the same
seeds, and from random init for the same total iterations as a method that pretrains on the
labels it is judged on; prints AP (mean ± std) and each margin with its 95% intervals.

    python tools/demo.py [--methods soco,agnostic,jigsaw] [--seeds 0,1,2] [--jobs 2] [KEY VALUE ...]
    python tools/demo.py --smoke        # every pipeline at a few iterations (CI)
"""
import argparse
import os
import sys
import time

import detpre  # noqa: F401  (registers every component)
from detpre.jobs.demo import DEMO_DEFAULT, cpu_speed_factor, demo_methods, expected_seconds, run_demo, run_smoke_extras
from detpre.jobs.report import margin_sentence, plot_transfer, transfer_table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(DEMO_DEFAULT),
                    help="comma-separated pretraining methods, from " + ", ".join(sorted(demo_methods())))
    ap.add_argument("--seeds", default="0,1,2", help="fine-tuning seeds (paired across inits)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each when > 1)")
    ap.add_argument("--output-dir", default="", help="default: output/demo (output/demo_smoke with --smoke)")
    ap.add_argument("--smoke", action="store_true",
                    help="a few iterations of every method's pipeline, self-training and SpCL")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for the fine-tuning runs")
    args = ap.parse_args(argv)
    entries = demo_methods()
    methods = [m for m in args.methods.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    out = args.output_dir or ("output/demo_smoke" if args.smoke else "output/demo")
    if args.smoke:
        methods, seeds = sorted(entries), seeds[:1]
    else:
        speed = cpu_speed_factor()
        print(f"[demo] {', '.join(methods)} vs random init, {len(seeds)} seeds, {args.jobs} runs at once: "
              f"expect about {expected_seconds(methods, seeds, args.jobs, args.opts, speed) / 60:.0f} minutes on "
              f"this machine's 2 cores ({speed:.1f}x the reference CPU's time; finished steps are skipped, "
              "a killed demo resumes)", flush=True)
    t = time.time()
    try:
        result = run_demo(methods, seeds, out, args.jobs, args.opts, smoke=args.smoke)
        if args.smoke:
            run_smoke_extras(out, args.jobs)
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        sys.exit(f"[demo] error: {e}")
    plot = plot_transfer(result, os.path.join(out, "transfer.png"))
    print(f"\nTiny Mask R-CNN R18-FPN on {result['probe_datasets'][1]}, the same seeds for every init; the same "
          "fine-tuning iterations, but for the control rows (random init given a method's pretraining iterations "
          "too):")
    print(transfer_table(result))
    print("\n" + margin_sentence(result))
    for m in methods:
        if entries[m].note:
            print(entries[m].note)
    print(f"\n{time.time() - t:.0f}s; results: {os.path.join(out, 'benchmark_transfer.json')}, plot: {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
