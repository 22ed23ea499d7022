#!/usr/bin/env python
"""
Export a detpre pretraining checkpoint as a detectron2 model-zoo .pkl that MODEL.WEIGHTS loads:

    python tools/convert_pretrained.py --input output/demo/soco_R18_FPN_tiny/model_final.pth \
        --output soco.pkl [--detector mask_rcnn] [--ema] [--config-file FINETUNE_CONFIG]

Only the online weights (or, with --ema, the momentum target's) that the detector takes are written:
Mask R-CNN / Faster R-CNN: backbone + FPN + RoI box head; RetinaNet: backbone + FPN; backbone: the
ResNet. The detector of --config-file is built to report which of its keys the export fills and
which it will still initialize randomly; an export whose shapes do not fit it is refused.
"""
import argparse
import collections
import os
import sys

import detpre  # noqa: F401  (registers every component)
from detpre.checkpoint import coverage_report, export_weights, load_detpre_checkpoint, save_model_zoo_file
from detpre.config import get_detpre_cfg

DEFAULT_CONFIGS = {
    "mask_rcnn": "configs/demo/mask_rcnn_R18_FPN_tiny.yaml",
    "faster_rcnn": "configs/demo/mask_rcnn_R18_FPN_tiny.yaml",
    "backbone": "configs/demo/mask_rcnn_R18_FPN_tiny.yaml",
    "retinanet": "configs/finetune/retinanet_R50_FPN_1x_SyncBN.yaml",
}


def _build_detector(config_file):
    from detectron2.modeling import build_model

    if not os.path.isfile(config_file):
        raise SystemExit(f"--config-file {config_file}: no such file (the fine-tuning config to check against)")
    cfg = get_detpre_cfg()
    cfg.merge_from_file(config_file)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return build_model(cfg)


def _groups(keys, depth=3):
    """``a.b.c.d`` -> counts per ``a.b.c`` prefix, for a short report."""
    return collections.Counter(".".join(k.split(".")[:depth]) for k in keys)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="model_XXXXXXX.pth / model_final.pth of a detpre pretraining run")
    p.add_argument("--output", required=True, help="the .pkl to write")
    p.add_argument("--detector", default="mask_rcnn", choices=sorted(DEFAULT_CONFIGS))
    p.add_argument("--ema", action="store_true", help="export the momentum target (EMA) weights")
    p.add_argument("--config-file", default="", help="the fine-tuning config (default: per --detector)")
    args = p.parse_args(argv)

    try:
        state, arch = load_detpre_checkpoint(args.input)
        weights = export_weights(state, args.detector, use_target=args.ema)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    config_file = args.config_file or DEFAULT_CONFIGS[args.detector]
    report = coverage_report(weights, _build_detector(config_file))
    print(f"{args.input}: {arch}, {'EMA target' if args.ema else 'online'} weights for {args.detector}")
    print(f"exported {len(weights)} tensors; they fill {len(report['filled'])} keys of {config_file}'s detector")
    if report["shape_mismatch"]:
        raise SystemExit(f"error: {len(report['shape_mismatch'])} exported tensors do not fit {config_file} "
                         f"(e.g. {report['shape_mismatch'][:3]}): pretraining and fine-tuning configs must "
                         "define the same ResNet/FPN/box head. Nothing written.")
    if report["unused"]:
        print(f"warning: {len(report['unused'])} exported keys are not in the detector "
              f"(e.g. {report['unused'][:3]})")
    pretrained_parts = ("backbone.", "roi_heads.box_head.") if args.detector in ("mask_rcnn", "faster_rcnn") \
        else ("backbone.bottom_up.",) if args.detector == "backbone" else ("backbone.",)
    missing = [k for k in report["random_init"] if k.startswith(pretrained_parts)]
    if missing:
        print(f"warning: {len(missing)} {'/'.join(pretrained_parts)} keys are not in the export "
              f"(e.g. {missing[:3]})")
    print("randomly initialized in the detector (key prefix: tensors):")
    for prefix, n in sorted(_groups(report["random_init"]).items()):
        print(f"  {prefix}: {n}")
    save_model_zoo_file(weights, args.output, author=f"detpre {arch}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
