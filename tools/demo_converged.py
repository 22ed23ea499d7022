#!/usr/bin/env python
"""
Does pretraining still pay once the detector has learned? Every init (random, SoCo, Jigsaw,
Fast-MoCo, box pretraining, and the same-total-iterations controls) fine-tunes the demo's tiny
Mask R-CNN to a plateau on a selection split, scored on a report split, at 60 and 600 labeled
images with paired seeds; the table gives the plateau AP, the iterations to it and to random
init's plateau AP, and the pretraining cost next to the fine-tuning it saves
(detpre/jobs/converged.py, docs/converged.md):

    python tools/demo_converged.py                 # hours on 2 cores: the expected time is printed first
    python tools/demo_converged.py --estimate      # only print it
    python tools/demo_converged.py --smoke         # the same pipeline on tiny splits (CI, ~2 minutes on 2 idle cores)

Its data are generated once under --data-root (not the default demo's folder). Rerunning continues
a killed run and reuses every finished one. Writes converged.md, converged.png and converged.json
into --output-dir.
"""
import argparse
import os
import sys

import detpre  # noqa: F401  (registers every component)
from detpre.errors import DetpreError
from detpre.jobs.converged import (
    DATA_ROOT,
    converged_settings,
    converged_table,
    expected_seconds,
    format_duration,
    run_converged,
)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output-dir", default=None,
                    help="default output/demo_converged (output/demo_converged_smoke with --smoke)")
    ap.add_argument("--data-root", default=None,
                    help=f"where its demo data are generated (default {DATA_ROOT}; with --smoke inside the "
                         "output dir)")
    ap.add_argument("--seeds", default=None, help="fine-tuning seeds, paired across inits (default 0,1,2; --smoke: 0)")
    ap.add_argument("--budgets", default="", help="label budgets to run, e.g. 60 (default: all of them)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each when > 1)")
    ap.add_argument("--smoke", action="store_true", help="tiny splits, a few iterations, one seed")
    ap.add_argument("--estimate", action="store_true", help="print the expected time and stop")
    args = ap.parse_args(argv)
    out = args.output_dir or ("output/demo_converged_smoke" if args.smoke else "output/demo_converged")
    root = args.data_root or (os.path.join(out, "data") if args.smoke else DATA_ROOT)
    seeds = [int(s) for s in (args.seeds or ("0" if args.smoke else "0,1,2")).split(",") if s]
    budgets = [int(b) for b in args.budgets.split(",") if b] or None

    from detpre.jobs.demo import cpu_speed_factor

    settings = converged_settings(args.smoke)
    if budgets:
        settings["budgets"] = {b: c for b, c in settings["budgets"].items() if b in budgets}
    speed = cpu_speed_factor()
    est = expected_seconds(settings, seeds, args.jobs, speed)
    print(f"[converged] expected time: at most {format_duration(est)} on this machine ({args.jobs} runs at once, "
          f"every fine-tuning run to its cap; runs that plateau sooner take less; this CPU is {speed:.2f}x the "
          f"reference's time per step); finished runs in {out} are reused", flush=True)
    if args.estimate:
        return 0
    try:
        result = run_converged(out, root, seeds=seeds, jobs=args.jobs, smoke=args.smoke, budgets=budgets)
    except (DetpreError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n" + converged_table(result))
    print(f"\nresults: {os.path.join(out, 'converged.md')}, {os.path.join(out, 'converged.json')}, plot: "
          f"{os.path.join(out, 'converged.png')} ({format_duration(result['elapsed_s'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
