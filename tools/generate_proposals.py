#!/usr/bin/env python
"""
Selective-search proposals for SoCo, in detectron2's precomputed-proposal format.

    python tools/generate_proposals.py --dataset detpre_demo_unlabeled --output props.pkl
    python tools/generate_proposals.py --image-dir DIR --output props.pkl [--workers N]
    python tools/generate_proposals.py --config-file cfg.yaml --dataset NAME --output p.pkl [KEY VALUE ...]
    # several machines: one slice each, then join them (same arguments on every machine)
    python tools/generate_proposals.py --dataset NAME --output p.0.pkl --shard 0/2
    python tools/generate_proposals.py --dataset NAME --output p.1.pkl --shard 1/2
    python tools/generate_proposals.py --merge p.pkl p.0.pkl p.1.pkl

Then train with DATASETS.PROPOSAL_FILES_TRAIN "('props.pkl',)" MODEL.LOAD_PROPOSALS True.
A killed run resumes when rerun with the same arguments (finished chunks are kept in
OUTPUT.parts/). Images left without proposals (unreadable, or no box passed the filter) are
listed in OUTPUT.errors.txt. A mistake in the input (a missing file or data set, a locked,
read-only or full output) is reported as one line ``detpre: error: ...`` and exit status 2.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per worker process

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

# a worker process takes seconds to start (it imports detpre): more than a few dozen images take
IMAGES_PER_WORKER = 32


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="registered data set name (detpre's demo, or one from the "
                     "config's DATASETS.COCO/VOC/FOLDER with --config-file)")
    src.add_argument("--image-dir", help="folder of images (recursive); ids are relative paths")
    src.add_argument("--merge", nargs="+", metavar=("OUT", "SHARD"),
                     help="join shard files: --merge OUT SHARD0 SHARD1 ...")
    p.add_argument("--config-file", default="", help="config whose DATASETS.* to register")
    p.add_argument("--output", help="proposal file to write (.pkl)")
    p.add_argument("--workers", type=int, default=None,
                   help=f"processes (default: all cores, one per {IMAGES_PER_WORKER} images at most)")
    p.add_argument("--shard", default="0/1", help="i/N: process the i-th of N slices")
    p.add_argument("--chunk-size", type=int, default=256, help="images per saved chunk")
    p.add_argument("--overwrite", action="store_true", help="regenerate an existing output")
    p.add_argument("--backend", default="detpre", help="detpre | selectivesearch | opencv")
    p.add_argument("--backend-args", default="{}",
                   help='JSON keyword arguments of the backend, e.g. \'{"preset": "fast"}\'')
    p.add_argument("--proposal-size", type=int, default=224,
                   help="run on the image resized to SxS (0: original size)")
    f = p.add_argument_group("SoCo filter (in original image pixels)")
    f.add_argument("--max-aspect-ratio", type=float, default=3.0)
    f.add_argument("--min-size-ratio", type=float, default=0.3, help="min sqrt(box area/image area)")
    f.add_argument("--max-size-ratio", type=float, default=0.8, help="max sqrt(box area/image area)")
    f.add_argument("--min-side", type=float, default=32.0, help="min box width and height (px)")
    f.add_argument("--max-proposals", type=int, default=100, help="keep the K best per image")
    f.add_argument("--no-filter", action="store_true",
                   help="keep every box (still de-duplicated and capped at --max-proposals)")
    p.add_argument("opts", nargs=argparse.REMAINDER,
                   help="config overrides KEY VALUE ... (e.g. the DATASETS.COCO that registers --dataset)")
    args = p.parse_args(argv)
    args.opts = args.opts[1:] if args.opts[:1] == ["--"] else args.opts
    return args


def load_records(args):
    if args.image_dir:
        from detpre.data.datasets import load_image_folder

        return load_image_folder(args.image_dir, source="--image-dir")
    from detectron2.data import DatasetCatalog

    from detpre import get_detpre_cfg
    from detpre.data.datasets import register_from_config
    from detpre.errors import DetpreError, DetpreFileNotFoundError

    if args.config_file and not os.path.isfile(args.config_file):
        raise DetpreFileNotFoundError(f"--config-file {args.config_file}: no such file")
    cfg = get_detpre_cfg(args.config_file or None, args.opts)  # a missing _BASE_, a bad key: a DetpreError
    register_from_config(cfg)
    if args.dataset not in DatasetCatalog.list():
        raise DetpreError(f"--dataset {args.dataset!r} is not registered: name one of the config's "
                          "DATASETS.COCO/VOC/FOLDER (with --config-file), a demo set, or use --image-dir")
    return DatasetCatalog.get(args.dataset)


def _json_arg(text):
    from detpre.errors import DetpreError

    try:
        return json.loads(text)
    except ValueError as e:
        raise DetpreError(f"--backend-args {text!r} is not JSON ({e}); e.g. '{{\"preset\": \"fast\"}}'") from None


def main(argv=None):
    from detpre.errors import DetpreError

    try:
        _main(argv)
    except DetpreError as e:
        print(f"detpre: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def _main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from detpre.data.image_io import printable_name
    from detpre.data.proposals import ProposalFilter, generate_proposals, merge_proposal_files

    if args.merge:
        if len(args.merge) < 2:
            raise SystemExit("--merge OUT SHARD0 [SHARD1 ...]")
        n = merge_proposal_files(args.merge[0], args.merge[1:])
        print(f"wrote {args.merge[0]} ({n} images)")
        return
    if not args.output:
        raise SystemExit("--output is required")
    try:
        i, n = (int(v) for v in args.shard.split("/"))
    except ValueError:
        raise SystemExit(f"--shard {args.shard!r}: expected i/N, e.g. 0/4")
    if args.no_filter:
        filt = ProposalFilter.disabled(args.max_proposals)
    else:
        filt = ProposalFilter(args.max_aspect_ratio, args.min_size_ratio, args.max_size_ratio,
                              args.min_side, args.max_proposals)
    records = load_records(args)
    workers = args.workers if args.workers is not None else max(
        1, min(os.cpu_count() or 1, len(records) // max(1, n) // IMAGES_PER_WORKER))
    summary = generate_proposals(
        records, args.output, backend=args.backend,
        backend_kwargs=_json_arg(args.backend_args), proposal_size=args.proposal_size,
        proposal_filter=filt, workers=workers, shard=(i, n), chunk_size=args.chunk_size,
        overwrite=args.overwrite)
    for file_name, reason in summary["errors"]:
        print(f"unreadable image: {printable_name(file_name)}: {reason}")
    if not summary["skipped"]:
        listed = f", listed in {summary['output']}.errors.txt" if summary["no_proposals"] else ""
        print(f"wrote {summary['output']} ({summary['num_images']} images, "
              f"{len(summary['errors'])} unreadable, {summary['no_proposals']} without proposals{listed})")


if __name__ == "__main__":
    main()
