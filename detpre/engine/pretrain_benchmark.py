"""
Where a pretraining iteration's time goes, for any detpre method: the config's own Trainer
(meta-arch, mapper, loader, optimizer, DETPRE.HOOKS) steps as in training, and each iteration is
split into data loading, forward + backward + optimizer step, and each extra hook (e.g. the
momentum update). Also images/s and peak memory (process RSS on CPU, max allocated on GPU).
"""
import resource
import tempfile
import time

import numpy as np
import torch
from detectron2.utils.events import EventStorage

from detpre.data.datasets import register_from_config

from .trainer import Trainer

__all__ = ["benchmark_pretrain", "format_benchmark"]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark_pretrain(cfg, iters=20, warmup=3):
    """
    Run ``iters`` training iterations of ``cfg`` (the first ``warmup`` untimed) in a scratch
    OUTPUT_DIR. Returns a dict of per-iteration means (seconds) and totals.
    """
    if iters <= warmup:
        raise ValueError(f"iters {iters} must exceed warmup {warmup}")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.OUTPUT_DIR = tempfile.mkdtemp(prefix="detpre_benchmark_")
    cfg.SOLVER.MAX_ITER = max(cfg.SOLVER.MAX_ITER, iters)
    register_from_config(cfg)
    trainer = Trainer(cfg)
    loop = trainer._trainer  # SimpleTrainer / AMPTrainer: run_step = data + forward/backward/step
    extra = [h for h in trainer._hooks if type(h).__name__ in set(cfg.DETPRE.HOOKS)]
    device = next(trainer.model.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows = []
    with EventStorage(0) as storage:
        trainer.storage = loop.storage = storage
        for h in extra:
            h.before_train()
        for it in range(iters):
            trainer.iter = loop.iter = storage.iter = it
            _sync(device)
            t0 = time.perf_counter()
            loop.run_step()
            _sync(device)
            t1 = time.perf_counter()
            hook_times = []
            for h in extra:
                s = time.perf_counter()
                h.before_step()
                h.after_step()
                _sync(device)
                hook_times.append(time.perf_counter() - s)
            data = storage.history("data_time").latest()
            rows.append([data, t1 - t0 - data] + hook_times)
    t = np.array(rows[warmup:])
    mean = t.mean(axis=0)
    total = float(mean.sum())
    out = {
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "mapper": cfg.DATALOADER.MAPPER or "DatasetMapper",
        "device": str(device),
        "batch": cfg.SOLVER.IMS_PER_BATCH,
        "iters_timed": len(t),
        "iteration_s": total,
        "parts": {"data loading": float(mean[0]), "forward+backward+step": float(mean[1]),
                  **{type(h).__name__: float(m) for h, m in zip(extra, mean[2:])}},
        "images_per_s": cfg.SOLVER.IMS_PER_BATCH / total,
    }
    if device.type == "cuda":
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["peak_memory_kind"] = "torch.cuda.max_memory_allocated"
    else:
        out["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out["peak_memory_kind"] = "process peak RSS"
    return out


def format_benchmark(r):
    """A Markdown table: one row per part of the iteration, with its share."""
    lines = [f"{r['meta_architecture']} + {r['mapper']} on {r['device']}, batch {r['batch']}, "
             f"{r['iters_timed']} timed iterations",
             "", "| part | ms / iter | share |", "|---|---|---|"]
    for name, s in r["parts"].items():
        lines.append(f"| {name} | {1000 * s:.1f} | {100 * s / r['iteration_s']:.1f}% |")
    lines.append(f"| **iteration** | {1000 * r['iteration_s']:.1f} | 100% |")
    lines += ["", f"images/s: {r['images_per_s']:.2f}; peak memory ({r['peak_memory_kind']}): "
              f"{r['peak_memory_mb']:.0f} MiB"]
    return "\n".join(lines)
