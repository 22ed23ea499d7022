"""
``make demo``: the main job on the built-in demo data, as the commands a user would type.

demo data -> selective-search proposals of the `unlabeled` split -> SoCo pretraining -> export ->
fine-tune the tiny Mask R-CNN on `train` from SoCo and from random init (same budget) -> AP on
`val`. Each step is skipped when its output exists and resumes when it was killed, so a second
``make demo`` only prints the table.
"""
import os
import sys
import time

from tabulate import tabulate

from .steps import final_metrics, run_logged, train_step

__all__ = ["run_demo", "PRETRAIN_CONFIGS"]

FINETUNE_CONFIG = "configs/demo/mask_rcnn_R18_FPN_tiny.yaml"
PROPOSALS = "output/demo/proposals/detpre_demo_unlabeled.pkl"
# method -> (pretraining config, what it needs first)
PRETRAIN_CONFIGS = {
    "soco": ("configs/demo/soco_R18_FPN_tiny.yaml", "proposals"),
    "fastmoco": ("configs/demo/fastmoco_R18_tiny.yaml", None),
    "mocov3": ("configs/demo/mocov3_R18_tiny.yaml", None),
    "jigsaw": ("configs/demo/jigsaw_R18_tiny.yaml", "jigsaw_samples"),
}


def _train(config, out_dir, opts=(), tag=""):
    sec = train_step(config, out_dir, opts, "log_demo.txt")
    if sec is None:
        print(f"[demo] {tag}: done before ({out_dir})")
    return sec or 0.0


def _prerequisite(kind):
    if kind == "proposals" and not os.path.isfile(PROPOSALS):
        return run_logged([sys.executable, "tools/generate_proposals.py", "--dataset", "detpre_demo_unlabeled",
                     "--output", PROPOSALS], "output/demo/proposals/log.txt")
    if kind == "jigsaw_samples":
        samples = "output/demo/jigsaw/samples_detpre_demo_train.json"
        if not os.path.isfile(samples):
            return run_logged([sys.executable, "tools/extract_jigsaw_samples.py", "--dataset", "detpre_demo_train",
                         "--output", samples], "output/demo/jigsaw/log_samples.txt")
    return 0.0


def run_demo(methods=("soco",), finetune_opts=()):
    from detectron2.data import DatasetCatalog

    from detpre.data.datasets import register_demo

    register_demo()
    t = time.time()
    n = {s: len(DatasetCatalog.get(f"detpre_demo_{s}")) for s in ("train", "val", "unlabeled")}
    print(f"[demo] data: {n} images ({time.time() - t:.1f}s), under {os.path.abspath('datasets/detpre_demo')}")

    rows = []
    ft = "output/demo/finetune_random"
    sec = _train(FINETUNE_CONFIG, ft, finetune_opts, "fine-tune from random init")
    rows.append(("random init", "-", sec, ft))
    for m in methods:
        config, needs = PRETRAIN_CONFIGS[m]
        pre = _prerequisite(needs) if needs else 0.0
        out = f"output/demo/{m}"
        pre += _train(config, out, (), f"{m} pretraining")
        weights = os.path.join(out, f"{m}_export.pkl")
        if not os.path.isfile(weights):
            run_logged([sys.executable, "tools/convert_pretrained.py", "--input", os.path.join(out, "model_final.pth"),
                  "--output", weights, "--detector", "mask_rcnn", "--config-file", FINETUNE_CONFIG],
                 os.path.join(out, "log_export.txt"))
        ft = f"output/demo/finetune_{m}"
        sec = _train(FINETUNE_CONFIG, ft, ("MODEL.WEIGHTS", weights, *finetune_opts), f"fine-tune from {m}")
        rows.append((f"{m} init", f"{pre:.0f}s" if pre else "(cached)", sec, ft))

    table = []
    for name, pre, sec, out in rows:
        r = final_metrics(out)
        table.append([name, pre, f"{sec:.0f}s" if sec else "(cached)",
                      r.get("bbox/AP", float("nan")), r.get("bbox/AP50", float("nan")),
                      r.get("segm/AP", float("nan")), out])
    print("\nTiny Mask R-CNN R18-FPN on detpre_demo_val (same fine-tuning budget for every row):")
    print(tabulate(table, headers=["init", "pretrain", "fine-tune", "box AP", "box AP50", "mask AP", "output"],
                   floatfmt=".2f", tablefmt="github"))
    return table
