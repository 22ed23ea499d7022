#!/usr/bin/env python
"""
Transfer benchmark: pretrain each config (for its own iterations, or for the same wall-clock
budget), export it, probe its backbone (kNN / linear top-1 on object crops of the labeled val
split), fine-tune one detector config from each export and from random init with S seeds; print
AP mean ± std and the paired difference to random init with its 95% interval:

    python tools/benchmark_transfer.py --budget-seconds 120 --seeds 0,1,2 --configs \\
        configs/demo/soco_R18_FPN_tiny.yaml configs/demo/jigsaw_R18_tiny.yaml \\
        configs/demo/fastmoco_R18_tiny.yaml [-- fine-tuning KEY VALUE ...]

``--detector backbone_fpn`` (or ``CONFIG:backbone_fpn`` for one config) transfers only the ResNet
and FPN, leaving the RoI box head to the detector's own init.

``--baseline NAME=WEIGHTS`` (repeatable) adds a row fine-tuned from weights you already have, with
the same seeds and intervals: a detectron2 model-zoo .pkl (e.g. ImageNet R-50.pkl), a detectron2
checkpoint .pth, or a torchvision ResNet state_dict .pth (converted; its runs get torchvision's
strides and RGB input). Each is checked against the fine-tuning detector before any training.

``--plateau SELECT,REPORT`` fine-tunes every run to a plateau instead (SOLVER.MAX_ITER is the cap;
detpre/engine/plateau.py): evaluate the SELECT data set every ``--plateau-period`` iterations, stop
after ``--plateau-patience`` evaluations without a rise of more than ``--plateau-min-delta``, keep
the best checkpoint and report its AP on REPORT; a second table gives per init the iterations to
its plateau and to random init's plateau AP (docs/converged.md).

Finished steps are skipped, killed ones resume; results go to <output-dir>/benchmark_transfer.json
and a plot (AP against pretraining seconds) to <output-dir>/transfer.png.
"""
import argparse
import os

import detpre  # noqa: F401  (registers every component)
from detpre.checkpoint import DETECTOR_PREFIXES
from detpre.errors import DetpreError
from detpre.jobs.report import margin_sentence, plot_transfer, transfer_table
from detpre.jobs.transfer import Method, Plateau, parse_baseline, run_transfer


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=[], help="pretraining configs")
    ap.add_argument("--baseline", action="append", default=[], metavar="NAME=WEIGHTS",
                    help="also fine-tune from these weights (model-zoo .pkl, detectron2 or torchvision .pth); "
                         "repeatable")
    ap.add_argument("--budget-seconds", type=float, default=0.0,
                    help="training seconds each pretraining gets (0: each config's own MAX_ITER)")
    ap.add_argument("--finetune-config", default="configs/demo/mask_rcnn_R18_FPN_tiny.yaml")
    ap.add_argument("--detector", default="", choices=["", *sorted(DETECTOR_PREFIXES)],
                    help="the parts each export gives the fine-tuning detector (tools/convert_pretrained.py's "
                         "--detector; default: what each config's method declares, else mask_rcnn); a config "
                         "may override it as PATH:DETECTOR")
    ap.add_argument("--seeds", default="0,1,2", help="fine-tuning seeds, paired across inits")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each when > 1)")
    ap.add_argument("--output-dir", default="output/benchmark_transfer")
    ap.add_argument("--calibration-iters", type=int, default=20,
                    help="iterations timed (the step timer) to fit each config into the budget")
    ap.add_argument("--plateau", default="", metavar="SELECT,REPORT",
                    help="fine-tune to a plateau: pick the best checkpoint on the data set SELECT, report it on REPORT "
                         "(SOLVER.MAX_ITER is the cap)")
    ap.add_argument("--plateau-period", type=int, default=100, help="iterations between evaluations of SELECT")
    ap.add_argument("--plateau-patience", type=int, default=5,
                    help="evaluations without a rise before fine-tuning stops")
    ap.add_argument("--plateau-min-delta", type=float, default=0.1, help="a rise: more than this many AP points")
    ap.add_argument("--plateau-metric", default="bbox/AP", help="what the rise is measured in (task/metric)")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="overrides for the fine-tuning runs")
    args = ap.parse_args(argv)
    opts = args.opts[1:] if args.opts[:1] == ["--"] else args.opts
    if not args.configs and not args.baseline:
        ap.error("pass --configs (pretrainings) and/or --baseline NAME=WEIGHTS")
    plateau = None
    if args.plateau:
        names = [n.strip() for n in args.plateau.split(",")]
        if len(names) != 2 or not all(names) or names[0] == names[1]:
            ap.error(f"--plateau {args.plateau!r}: expected SELECT,REPORT, two data sets")
        plateau = Plateau(names[0], names[1], args.plateau_period, args.plateau_patience, args.plateau_min_delta,
                          args.plateau_metric)
    try:
        baselines = [parse_baseline(spec) for spec in args.baseline]
    except DetpreError as e:
        ap.error(str(e))
    methods = []
    for spec in args.configs:
        config, _, detector = spec.partition(":")
        if detector and detector not in DETECTOR_PREFIXES:
            ap.error(f"{spec}: unknown detector {detector!r}; use one of {sorted(DETECTOR_PREFIXES)}")
        name = os.path.splitext(os.path.basename(config))[0] + (f"_{detector}" if detector else "")
        methods.append(Method(name, config, detector=detector or args.detector))
    try:
        result = run_transfer(methods, args.finetune_config, args.output_dir,
                              seeds=[int(s) for s in args.seeds.split(",") if s], jobs=args.jobs,
                              finetune_opts=opts, budget_s=args.budget_seconds or None,
                              calibration_iters=args.calibration_iters, baselines=baselines, plateau=plateau)
    except DetpreError as e:
        raise SystemExit(f"error: {e}")
    plot = plot_transfer(result, os.path.join(args.output_dir, "transfer.png"))
    print(f"\nFine-tuning {args.finetune_config}"
          + (f" after {args.budget_seconds:.0f}s of pretraining each:" if args.budget_seconds else ":"))
    print(transfer_table(result))
    for r in result["rows"]:
        if r.get("baseline"):
            b = r["baseline"]
            print(f"{r['init']}: user weights, no pretraining ({b['format']}, {b['source']})"
                  + (f"; its runs had {' '.join(b['opts'])}" if b["opts"] else ""))
    if plateau is not None:
        from detpre.jobs.converged import plateau_table

        print(f"\nFine-tuned to a plateau on {plateau.select}, reported on {plateau.report}:")
        print(plateau_table(result))
    print("\n" + margin_sentence(result))
    print(f"\nresults: {os.path.join(args.output_dir, 'benchmark_transfer.json')}, plot: {plot}")
    return 0


if __name__ == "__main__":
    main()
