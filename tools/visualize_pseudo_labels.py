#!/usr/bin/env python
"""
PNGs of images with their pseudo-labels (boxes, masks, class, score):

    python tools/visualize_pseudo_labels.py --json output/demo/pseudo.json --output output/demo/pseudo_vis
"""
import argparse

from detpre.pseudo_labels import visualize_pseudo_labels


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", required=True, help="pseudo-label json (tools/generate_pseudo_labels.py)")
    p.add_argument("--output", required=True, help="folder for the PNGs")
    p.add_argument("--image-root", default=None, help="default: the json's info.image_root")
    p.add_argument("--num", type=int, default=20, help="number of images")
    p.add_argument("--min-score", type=float, default=0.0)
    p.add_argument("--only-labeled", action="store_true", help="skip images without pseudo-labels")
    a = p.parse_args()
    paths = visualize_pseudo_labels(a.json, a.output, a.image_root, a.num, a.min_score, a.only_labeled)
    print(f"wrote {len(paths)} PNGs to {a.output}")


if __name__ == "__main__":
    main()
