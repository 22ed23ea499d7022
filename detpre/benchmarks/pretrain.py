"""
Where a training iteration's time goes, for any detpre method: the config's own trainer (meta-
arch, mapper, loader, optimizer, every hook) runs ``iters`` iterations on the ``StepTimer``,
each split into data loading, forward + backward + optimizer step, and each hook (the momentum
update, the LR scheduler, ...). Also images/s and peak memory (process RSS on CPU, max
allocated on GPU).
"""
import resource
import tempfile
from typing import Any, Dict

import numpy as np
import torch

from detpre.data.datasets import register_from_config
from detpre.engine.defaults import trainer_class
from detpre.method import declared_mapper

from .step_timer import StepTimer
from .table import markdown_table

__all__ = ["benchmark_pretrain", "scratch_config", "summarize_parts", "format_benchmark"]


def scratch_config(cfg, output_dir, iters):
    """``cfg`` training at least ``iters`` iterations into ``output_dir``, without evaluation."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.OUTPUT_DIR = output_dir
    cfg.SOLVER.MAX_ITER = max(cfg.SOLVER.MAX_ITER, iters)
    cfg.DATASETS.TEST = ()  # training is timed; no evaluation after it
    return cfg


def summarize_parts(rows, warmup):
    """Mean seconds per part over ``rows[warmup:]`` (``StepTimer`` rows) and their sum."""
    timed = rows[warmup:]
    names = list(timed[0]["parts"])
    mean = np.nanmean(np.array([[r["parts"][n] for n in names] for r in timed]), axis=0)
    parts = {n: float(m) for n, m in zip(names, mean)}
    return parts, float(sum(v for v in parts.values() if not np.isnan(v)))


def benchmark_pretrain(cfg, iters: int = 20, warmup: int = 3) -> Dict[str, Any]:
    """
    Run ``iters`` training iterations of ``cfg`` (the first ``warmup`` untimed) in a scratch
    OUTPUT_DIR. Returns a dict of per-iteration means (seconds) and totals.
    """
    if iters <= warmup:
        raise ValueError(f"iters {iters} must exceed warmup {warmup}")
    with tempfile.TemporaryDirectory(prefix="detpre_benchmark_") as out:
        cfg = scratch_config(cfg, out, iters)
        register_from_config(cfg)
        trainer = trainer_class(cfg)(cfg)
        timer = StepTimer(trainer)
        if timer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(timer.device)
        rows = timer.run(iters)
    parts, total = summarize_parts(rows, warmup)
    out = {
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "mapper": declared_mapper(cfg) or "DatasetMapper",
        "device": str(timer.device),
        "batch": cfg.SOLVER.IMS_PER_BATCH,
        "iters_timed": len(rows) - warmup,
        "iteration_s": total,
        "parts": parts,
        "images_per_s": cfg.SOLVER.IMS_PER_BATCH / total,
    }
    if timer.device.type == "cuda":
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated(timer.device) / 2**20
        out["peak_memory_kind"] = "torch.cuda.max_memory_allocated"
    else:
        out["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out["peak_memory_kind"] = "process peak RSS"
    return out


def format_benchmark(r: Dict[str, Any]) -> str:
    """A Markdown table: one row per part of the iteration, with its share."""
    rows = [(name, f"{1000 * s:.1f}", f"{100 * s / r['iteration_s']:.1f}%") for name, s in r["parts"].items()]
    rows.append(("**iteration**", f"{1000 * r['iteration_s']:.1f}", "100%"))
    return "\n".join([
        f"{r['meta_architecture']} + {r['mapper']} on {r['device']}, batch {r['batch']}, "
        f"{r['iters_timed']} timed iterations", "",
        markdown_table(["part", "ms / iter", "share"], rows), "",
        f"images/s: {r['images_per_s']:.2f}; peak memory ({r['peak_memory_kind']}): "
        f"{r['peak_memory_mb']:.0f} MiB"])
