"""
Pseudo-labelling throughput vs detectron2's own inference loop (``inference_on_dataset`` over
``build_detection_test_loader``, batch 1) on the same images and model, in one process,
alternating the runs so both see the same machine load; best of ``repeats`` per method.
"""
import os
import tempfile
import time

from detectron2.data import DatasetMapper, build_detection_test_loader
from detectron2.evaluation import inference_on_dataset

from detpre.pseudo_labels.teacher import label_images

__all__ = ["benchmark_pseudo_labelling"]


def _plain(cfg, model, dicts, num_workers):
    loader = build_detection_test_loader(dicts, mapper=DatasetMapper(cfg, is_train=False), num_workers=num_workers)
    t = time.perf_counter()
    inference_on_dataset(model, loader, None)
    return time.perf_counter() - t


def _ours(cfg, model, dicts, num_workers, **kw):
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        label_images(cfg, dicts, os.path.join(d, "pl.json"), model=model, num_workers=num_workers,
                     progress=False, **kw)
        return time.perf_counter() - t


def benchmark_pseudo_labelling(cfg, model, dicts, repeats=3, num_workers=0, batch_sizes=(1, 4), tta=False):
    """Rows of (method, images/s, ratio to plain detectron2 inference)."""
    runs = {"detectron2 inference_on_dataset (batch 1)": lambda: _plain(cfg, model, dicts, num_workers)}
    for b in batch_sizes:
        runs[f"pseudo-labelling, batch {b}"] = lambda b=b: _ours(cfg, model, dicts, num_workers, batch_size=b)
    if tta:
        runs["pseudo-labelling + TTA (flip x sizes)"] = lambda: _ours(cfg, model, dicts, num_workers, tta=True)
    best = {k: float("inf") for k in runs}
    _plain(cfg, model, dicts[:4], num_workers)  # warm-up
    for _ in range(repeats):
        for k, fn in runs.items():
            best[k] = min(best[k], fn())
    base = len(dicts) / best["detectron2 inference_on_dataset (batch 1)"]
    return [(k, len(dicts) / v, len(dicts) / v / base) for k, v in best.items()]
