#!/usr/bin/env python
"""
Pseudo-label an unlabeled data set (or image folder) with a trained detector (the teacher):

    python tools/generate_pseudo_labels.py --config-file configs/demo/mask_rcnn_R18_FPN_tiny.yaml \
        --weights output/demo/teacher/model_final.pth --dataset detpre_demo_unlabeled \
        --output output/demo/pseudo/detpre_demo_unlabeled.json [--threshold 0.5] [--tta]

Resumes after a kill (re-run the same command); prints the DATASETS.COCO entry that registers
the json for a student config (MODEL.SELF_TRAINING.PSEUDO_DATASETS). A mistake in the input (a
missing file or data set, a locked, read-only or full output) is reported as one line
``detpre: error: ...`` and exit status 2.
"""
import argparse
import logging
import os
import sys

from detectron2.data import DatasetCatalog
from detectron2.utils.logger import setup_logger

import detpre  # noqa: F401  (registers every component)
from detpre.config import get_detpre_cfg
from detpre.data.datasets import load_image_folder, register_from_config
from detpre.data.image_io import printable_name
from detpre.errors import DetpreError, DetpreFileNotFoundError
from detpre.pseudo_labels import label_images


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="the teacher's detectron2/detpre config")
    p.add_argument("--weights", default=None, help="teacher weights (default: MODEL.WEIGHTS)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="a registered data set (config DATASETS.*, demo, detectron2 builtins)")
    src.add_argument("--image-dir", help="a folder of images (searched recursively)")
    p.add_argument("--output", required=True, help="COCO json to write")
    p.add_argument("--threshold", type=float, default=None,
                   help="score threshold (default MODEL.SELF_TRAINING.SCORE_THRESHOLD = 0.5)")
    p.add_argument("--class-thresholds", default=None, help="comma-separated per-class thresholds, class order")
    p.add_argument("--batch-size", type=int, default=None, help="images per inference batch")
    p.add_argument("--chunk-size", type=int, default=None, help="images per resumable chunk")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--tta", action="store_true", help="flip + multi-scale test-time augmentation")
    p.add_argument("--tta-min-sizes", default=None,
                   help="comma-separated shortest-edge sizes (default TEST.AUG.MIN_SIZES)")
    p.add_argument("--no-tta-flip", action="store_true")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p.parse_args()


def main():
    try:
        _main()
    except DetpreError as e:
        print(f"detpre: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def _main():
    args = parse_args()
    setup_logger(name="detpre")
    setup_logger(name="detectron2", abbrev_name="d2")
    if not os.path.isfile(args.config_file):
        raise DetpreFileNotFoundError(f"--config-file {args.config_file}: no such file")
    cfg = get_detpre_cfg(args.config_file, args.opts)  # a missing _BASE_: a DetpreError
    cfg.freeze()
    weights = args.weights or cfg.MODEL.WEIGHTS
    if not weights:
        raise DetpreError("no teacher weights: pass --weights (or MODEL.WEIGHTS) of a trained detector")
    if "://" not in weights and not os.path.isfile(weights):
        raise DetpreFileNotFoundError(f"teacher weights {weights}: no such file; pass --weights of a "
                                      "trained detector (e.g. its OUTPUT_DIR/model_final.pth)")
    register_from_config(cfg)
    if args.dataset:
        if args.dataset not in DatasetCatalog.list():
            raise DetpreError(f"--dataset {args.dataset!r} is not registered: name one of the config's "
                              "DATASETS.COCO/VOC/FOLDER, a demo set, or use --image-dir")
        dicts = DatasetCatalog.get(args.dataset)
    else:
        dicts = load_image_folder(args.image_dir, source="--image-dir")
    floats = lambda s: [float(v) for v in s.split(",")] if s else None  # noqa: E731
    summary = label_images(
        cfg, dicts, args.output, weights=args.weights, score_threshold=args.threshold,
        class_thresholds=floats(args.class_thresholds), batch_size=args.batch_size,
        chunk_size=args.chunk_size, tta=args.tta,
        tta_min_sizes=[int(v) for v in floats(args.tta_min_sizes)] if args.tta_min_sizes else None,
        tta_flip=not args.no_tta_flip, num_workers=args.num_workers)
    logging.getLogger("detpre").info(
        "%d pseudo-labels on %d images. Register it in a student config with\n"
        "  DATASETS.COCO: [[\"my_pseudo\", \"%s\", \"%s\"]]\n  MODEL.SELF_TRAINING.PSEUDO_DATASETS: (\"my_pseudo\",)",
        summary["annotations"], summary["images"], summary["output"], printable_name(summary["image_root"]))


if __name__ == "__main__":
    main()
