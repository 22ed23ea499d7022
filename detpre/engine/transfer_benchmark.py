"""
Transfer at equal pretraining time: each pretraining config is trained for the same wall-clock
budget, exported, and the same fine-tuning config is trained from each export and from random
init; the table puts pretraining cost (seconds, images/s) next to box/mask AP.

"Same budget" is met by timing each config's iterations with ``benchmark_pretrain`` (the
pretraining cost benchmark) and setting SOLVER.MAX_ITER to budget / (s/iter), with the LR
schedule (STEPS, warm-up) scaled to it, so every run finishes its schedule rather than being
cut mid-way. Training runs as ``tools/train_net.py`` in a subprocess (what a user would type);
each step is skipped when its output exists and resumes when it was killed. The reported cost
is the pretraining run's own logged step time x iterations.
"""
import json
import math
import os
import statistics

from detpre.utils.io import write_json_atomic

from .steps import final_metrics, metrics_records, train_step

__all__ = ["schedule_opts", "seconds_per_iter", "final_metrics", "run_transfer_benchmark"]


def schedule_opts(cfg, iters):
    """Config overrides that fit ``cfg``'s LR schedule into ``iters`` iterations."""
    ratio = iters / float(cfg.SOLVER.MAX_ITER)
    steps = tuple(sorted({max(1, min(iters - 1, int(round(s * ratio)))) for s in cfg.SOLVER.STEPS}))
    warmup = min(int(round(cfg.SOLVER.WARMUP_ITERS * ratio)), iters // 2)
    return ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", str(steps),
            "SOLVER.WARMUP_ITERS", str(warmup), "SOLVER.CHECKPOINT_PERIOD", str(iters)]


def seconds_per_iter(out_dir):
    """Median training-step time detectron2 logged in ``out_dir/metrics.json`` (data included)."""
    times = [r["time"] for r in metrics_records(out_dir) if "time" in r]
    if not times:
        raise RuntimeError(f"{out_dir}/metrics.json has no step times: the run logged nothing; "
                           "see its log.txt")
    return float(statistics.median(times))


def _export(checkpoint, path):
    from detpre.checkpoint import export_weights, load_detpre_checkpoint, save_model_zoo_file

    if not os.path.isfile(path):
        state, _ = load_detpre_checkpoint(checkpoint)
        save_model_zoo_file(export_weights(state, "mask_rcnn"), path)
    return path


def _calibrate(cfg, path, iters):
    """Seconds per iteration of ``cfg`` (cached in ``path``)."""
    from .pretrain_benchmark import benchmark_pretrain

    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)["iteration_s"]
    result = benchmark_pretrain(cfg, iters=iters, warmup=min(3, iters - 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json_atomic(result, path, indent=1)
    return result["iteration_s"]


def run_transfer_benchmark(pretrain_configs, budget_s, finetune_config, output_dir,
                           calibration_iters=20, random_init=True, finetune_opts=()):
    """Run the benchmark; returns the rows (dicts) and prints the table."""
    from tabulate import tabulate

    from detpre.config import get_detpre_cfg

    os.makedirs(output_dir, exist_ok=True)
    rows = []
    if random_init:
        rows.append({"init": "random init", "config": "-"})
    for config in pretrain_configs:
        name = os.path.splitext(os.path.basename(config))[0]
        cfg = get_detpre_cfg()
        cfg.merge_from_file(config)
        base = os.path.join(output_dir, name)
        spi = _calibrate(cfg, os.path.join(base, "calibration.json"), calibration_iters)
        iters = max(1, int(math.floor(budget_s / spi)))
        wall = train_step(config, os.path.join(base, "pretrain"), schedule_opts(cfg, iters), "log_benchmark.txt")
        pre_spi = seconds_per_iter(os.path.join(base, "pretrain"))
        weights = _export(os.path.join(base, "pretrain", "model_final.pth"),
                          os.path.join(base, "export_mask_rcnn.pkl"))
        rows.append({"init": name, "config": config, "iters": iters, "weights": weights,
                     "pretrain_s": round(pre_spi * iters, 1),
                     "pretrain_wall_s": None if wall is None else round(wall, 1),
                     "images_per_s": round(cfg.SOLVER.IMS_PER_BATCH / pre_spi, 1)})
    for row in rows:
        out = os.path.join(output_dir, row["init"].replace(" ", "_"), "finetune")
        opts = ["MODEL.WEIGHTS", row["weights"]] if "weights" in row else []
        train_step(finetune_config, out, [*opts, *finetune_opts], "log_benchmark.txt")
        m = final_metrics(out)
        row.update({"box_AP": m.get("bbox/AP"), "box_AP50": m.get("bbox/AP50"),
                    "mask_AP": m.get("segm/AP"), "finetune_dir": out})
    write_json_atomic({"budget_s": budget_s, "finetune_config": finetune_config, "rows": rows},
                      os.path.join(output_dir, "benchmark_transfer.json"), indent=1)
    table = [[r["init"], r.get("iters", "-"), r.get("pretrain_s", "-"), r.get("images_per_s", "-"),
              r["box_AP"], r["box_AP50"], r["mask_AP"]] for r in rows]
    print(f"\nFine-tuning {finetune_config} after {budget_s:.0f}s of pretraining each:")
    print(tabulate(table, headers=["init", "pretrain iters", "pretrain s", "images/s", "box AP",
                                   "box AP50", "mask AP"], floatfmt=".2f", tablefmt="github"))
    return rows
