#!/usr/bin/env python
"""
Export a detpre pretraining checkpoint as a detectron2 model-zoo .pkl that MODEL.WEIGHTS loads:

    python tools/convert_pretrained.py --input output/demo/soco/model_final.pth \
        --output soco.pkl [--detector mask_rcnn] [--ema] [--config-file FINETUNE_CONFIG]

--detector defaults to what the checkpoint's method declares (``export_detector``: rpn_box_head for
box pretraining), else mask_rcnn.

Only the online weights (or, with --ema, the momentum target's) that the detector takes are written:
Mask R-CNN / Faster R-CNN: backbone + FPN + RoI box head; RetinaNet and backbone_fpn: backbone + FPN
(backbone_fpn: for any FPN detector that keeps its own box head init); backbone: the ResNet;
rpn_box_head (box pretraining, ClassAgnosticRCNN): backbone + FPN + RPN + RoI box head.
The export is checked against the detector built from the config stored in the checkpoint
(or from --config-file, the fine-tuning config): the report says which of its keys the export
fills and which stay random; an export whose shapes do not fit is refused and nothing is written.

--format torchvision writes the ResNet as a torchvision state_dict .pth instead, which
torchvision.models.resnet18() / resnet50() / ... loads with strict=True and which computes the same
features (only ResNets torchvision has: BatchNorm, its widths, the stride in the 3x3 conv):

    python tools/convert_pretrained.py --input output/demo/jigsaw_R18_tiny/model_final.pth \
        --output jigsaw_r18.pth --format torchvision [--num-classes 1000]

Its fc.* is zero (nothing pretrained a classifier; a strict load needs one): replace the head.
"""
import argparse
import collections
import sys

import detpre  # noqa: F401  (registers every component)
from detpre.checkpoint import DETECTOR_PREFIXES, export_checked, save_model_zoo_file
from detpre.interop.torchvision import export_torchvision, save_torchvision_file


def _groups(keys, depth=3):
    """``a.b.c.d`` -> counts per ``a.b.c`` prefix, for a short report."""
    return collections.Counter(".".join(k.split(".")[:depth]) for k in keys)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="model_XXXXXXX.pth / model_final.pth of a detpre pretraining run")
    p.add_argument("--output", required=True, help="the .pkl (or with --format torchvision, .pth) to write")
    p.add_argument("--format", default="detectron2", choices=["detectron2", "torchvision"],
                   help="detectron2: a model-zoo .pkl for MODEL.WEIGHTS; torchvision: the ResNet as a "
                        "torchvision state_dict")
    p.add_argument("--num-classes", type=int, default=1000,
                   help="with --format torchvision: rows of the (zero) fc layer")
    p.add_argument("--detector", default="", choices=["", *sorted(DETECTOR_PREFIXES)],
                   help="the parts to export (default: what the checkpoint's method declares, else mask_rcnn)")
    p.add_argument("--ema", action="store_true", help="export the momentum target (EMA) weights")
    p.add_argument("--config-file", default="",
                   help="the fine-tuning config to check against (default: the checkpoint's own config); with "
                        "--format torchvision, the config that defines the ResNet")
    args = p.parse_args(argv)
    if args.format == "torchvision":
        return _to_torchvision(args)

    try:
        weights, report, arch, against = export_checked(args.input, args.detector, args.ema, args.config_file)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e} Nothing written.")
    print(f"{args.input}: {arch}, {'EMA target' if args.ema else 'online'} weights for {report['detector']}")
    print(f"exported {len(weights)} tensors; they fill {len(report['filled'])} keys of the detector of {against}")
    if report["unused"]:
        print(f"warning: {len(report['unused'])} exported keys are not in the detector "
              f"(e.g. {report['unused'][:3]})")
    # a part the method trains (ResNet, FPN, box head) but the export leaves partly empty
    parts = ("backbone.bottom_up.", "backbone.fpn_", "proposal_generator.", "roi_heads.box_head.")
    trained = [p for p in parts if any(k.startswith(p) for k in weights)]
    missing = [k for k in report["random_init"] if k.startswith(tuple(trained))]
    if missing:
        print(f"warning: {len(missing)} keys of the parts this method trains are not in the export "
              f"(e.g. {missing[:3]})")
    print("randomly initialized in the detector (key prefix: tensors):")
    for prefix, n in sorted(_groups(report["random_init"]).items()):
        print(f"  {prefix}: {n}")
    save_model_zoo_file(weights, args.output, author=f"detpre {arch}")
    print(f"wrote {args.output}")
    return 0


def _to_torchvision(args):
    try:
        state, depth, notes = export_torchvision(args.input, args.ema, args.config_file, args.num_classes)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e} Nothing written.")
    print(f"{args.input}: {'EMA target' if args.ema else 'online'} ResNet-{depth} as torchvision.models.resnet{depth}"
          f"(num_classes={args.num_classes}) ({len(state)} tensors; fc.* zero: replace the head)")
    for note in notes:
        print(f"note: {note}")
    save_torchvision_file(state, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
