"""
``make demo``: does pretraining on the built-in demo data make a better detector? Box pretraining
(class-agnostic, on `train`'s own boxes; ``--methods`` adds SoCo on the `unlabeled` split's
selective-search proposals, Jigsaw on `train`'s own boxes, Fast-MoCo, MoCo v3) is pretrained,
exported and fine-tuned into the tiny Mask R-CNN on `train`
with S seeds, next to random init with the same seeds and budget and, for a method trained on
`train`'s own labels (box pretraining, Jigsaw), random init given its pretraining iterations as
fine-tuning too (equal total compute); AP on `val`, the paired margins and their intervals.
``smoke=True`` runs every method's pipeline (and the self-training benchmark and SpCL) for a
handful of iterations: CI's check that the newcomer's path works.
"""
import os
from typing import Any, Dict, Sequence

from .runner import run_logged, run_parallel, say, tool_command, train
from .transfer import Method, run_transfer

__all__ = ["DEMO_DEFAULT", "FINETUNE_CONFIG", "demo_methods", "check_output_data", "cpu_speed_factor",
           "expected_seconds", "run_demo", "run_smoke_extras"]

FINETUNE_CONFIG = "configs/demo/mask_rcnn_R18_FPN_tiny.yaml"
# The demo's fine-tuning budget: 160 iterations at twice the config's LR (the config's own 500
# take ~6 minutes a run). 3 seeds of random init, box pretraining and its 460-iteration control,
# each evaluated on the 300 `val` images, take ~20 minutes on 2 cores. `make demo-long` runs 600.
FINETUNE_OPTS = ["SOLVER.MAX_ITER", "160", "SOLVER.STEPS", "(128,)", "SOLVER.WARMUP_ITERS", "20",
                 "SOLVER.BASE_LR", "0.02"]
# What `make demo` runs (`make demo-soco` adds SoCo: all three from scratch take ~18 minutes).
# The methods, their demo configs, exports and notes: each method's declaration (detpre.method).
DEMO_DEFAULT = ("agnostic",)
# Seconds per fine-tuning iteration measured on a 2-core machine (AVX-512, 2026-12-02), one thread
# per run, two runs at once (a method's pretraining: its ``DemoEntry.s_per_iter``): only for the
# time estimate printed before the demo starts, scaled to this machine by ``cpu_speed_factor``.
# _REFERENCE_STEP_S is that machine's ``cpu_speed.step_seconds``.
_FINETUNE_S_PER_ITER = 0.7
_REFERENCE_STEP_S = 0.16
_S_PER_RUN = 25  # process start and data set loading; for fine-tuning, the evaluation on the 300 `val` images
_DATA_STAMP = "demo_data.json"  # in the output dir: the data and fine-tuning options of its results
_SMOKE_ITERS = ["SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()",
                "SOLVER.CHECKPOINT_PERIOD", "3"]
# smoke fine-tunings are scored on train's 60 images: an untrained detector's 100 masked boxes per
# image make evaluating val's 300 take a minute a run, most of a smoke run's time
_SMOKE_TEST = ["DATASETS.TEST", "('detpre_demo_train',)"]


def demo_methods():
    """``{demo name: DemoEntry}`` of every method (``detpre.method.demo_entries``)."""
    from detpre.method import demo_entries

    return {name: entry for name, (_, entry) in demo_entries().items()}


def cpu_speed_factor() -> float:
    """This machine's time for ``cpu_speed.step_seconds`` over the time of the machine that
    measured ``_S_PER_ITER`` (above 1: a slower CPU)."""
    from .cpu_speed import step_seconds

    return step_seconds(FINETUNE_CONFIG) / _REFERENCE_STEP_S


def expected_seconds(methods: Sequence[str], seeds: Sequence[int], jobs: int = 2,
                     finetune_opts: Sequence[str] = (), speed: float = 1.0) -> float:
    """A rough total for the demo on 2 cores (printed up front): the work of every run, shared
    by ``jobs`` cores, plus data, proposals, exports, probes and the `val` images' bootstrap, on a
    machine ``speed`` times slower than the one that measured it (``cpu_speed_factor``)."""
    from detpre.config import get_detpre_cfg
    from detpre.method import trains_on_judged_labels

    from .runner import repo_path

    entries = demo_methods()
    ft_cfg = get_detpre_cfg(repo_path(FINETUNE_CONFIG), [*FINETUNE_OPTS, *finetune_opts])
    pre, totals = 0.0, set()
    for m in methods:
        cfg = get_detpre_cfg(repo_path(entries[m].config))
        pre += cfg.SOLVER.MAX_ITER * entries[m].s_per_iter + _S_PER_RUN
        if trains_on_judged_labels(cfg, ft_cfg):  # its control: random init for the total iterations
            totals.add(ft_cfg.SOLVER.MAX_ITER + cfg.SOLVER.MAX_ITER)
    ft_iters = [ft_cfg.SOLVER.MAX_ITER] * (len(methods) + 1) + sorted(totals)
    ft = sum(n * _FINETUNE_S_PER_ITER + _S_PER_RUN for n in ft_iters) * len(seeds)
    return speed * (60 + 20 * len(ft_iters) + 4 * len(seeds) * len(ft_iters) + (pre + ft) / max(1, jobs))


def check_output_data(output_dir: str, stamp: Dict[str, Any]) -> None:
    """
    Record in ``output_dir`` what its runs are scored on and trained with (``stamp``: the demo
    data's ``detpre_demo.json`` marker and the fine-tuning options), or raise ``DetpreError`` if
    they differ: a resumed demo skips finished runs, so it would print results scored on, e.g.,
    the 50-image `val` of data version 2, or trained for another budget, as if they were today's.
    """
    from detpre.errors import DetpreError
    from detpre.utils.io import read_json, write_json_atomic

    path = os.path.join(output_dir, _DATA_STAMP)
    found = read_json(path)
    if found == stamp:
        return
    if os.path.exists(path):  # another stamp, or an unreadable one
        found = found if isinstance(found, dict) else {}
        keys = sorted(k for k in set(found) | set(stamp) if found.get(k) != stamp.get(k))
        why = "were made with " + "; ".join(f"{k} {found.get(k)}, not {stamp.get(k)}" for k in keys)
    elif any(os.path.exists(os.path.join(output_dir, p)) for p in ("finetune", "benchmark_transfer.json")):
        why = f"were made before the demo recorded what they were made with ({_DATA_STAMP})"
    else:
        os.makedirs(output_dir, exist_ok=True)
        write_json_atomic(path, stamp)
        return
    raise DetpreError(f"the results in {output_dir} {why}; delete that directory (rm -rf {output_dir}) "
                      "or pass another --output-dir")


def run_demo(methods: Sequence[str] = DEMO_DEFAULT, seeds: Sequence[int] = (0, 1, 2),
             output_dir: str = "output/demo",
             jobs: int = 2, finetune_opts: Sequence[str] = (), smoke: bool = False) -> Dict[str, Any]:
    """The demo's transfer result (see ``run_transfer``); ``smoke`` shrinks every run to a few
    iterations and one seed."""
    from detectron2.data import DatasetCatalog

    from detpre.data.datasets import register_demo
    from detpre.data.datasets.demo_gen import read_demo_marker

    entries = demo_methods()
    unknown = [m for m in methods if m not in entries]
    if unknown:
        raise ValueError(f"unknown demo methods {unknown}: use some of {sorted(entries)}")
    root = register_demo()
    n = {s: len(DatasetCatalog.get(f"detpre_demo_{s}")) for s in ("train", "val", "unlabeled")}
    say(f"[demo] data: {n} images under {root}")
    extra = _SMOKE_ITERS if smoke else []
    opts = [str(o) for o in (*FINETUNE_OPTS, *extra, *(_SMOKE_TEST if smoke else []), *finetune_opts)]
    check_output_data(output_dir, {"data": read_demo_marker(root), "finetune_opts": opts})  # just loaded
    ms = [Method(m, entries[m].config, extra, entries[m].detector) for m in methods]
    return run_transfer(ms, FINETUNE_CONFIG, output_dir, seeds=seeds, jobs=jobs,
                        finetune_opts=opts)


def run_smoke_extras(output_dir: str, jobs: int = 2) -> list:
    """The self-training benchmark (``tools/benchmark_self_training.py --smoke``: teacher, pseudo-
    labels and their quality, student and control, one seed) and SpCL (unsupervised) for a handful
    of iterations each, as subprocesses logged under ``output_dir``."""
    threads = 1 if jobs > 1 else None
    spcl_opts = ["SOLVER.MAX_ITER", "4", "MODEL.SPCL.CLUSTER_PERIOD", "2", "TEST.EVAL_PERIOD", "0"]
    st_dir = os.path.join(output_dir, "self_training")
    st_cmd = tool_command("benchmark_self_training", "--smoke", "--jobs", "1", "--output-dir", st_dir)
    return run_parallel([
        lambda: train("configs/demo/spcl_usl_R18_tiny.yaml", os.path.join(output_dir, "spcl"), spcl_opts,
                      "spcl", threads),
        lambda: run_logged(st_cmd, os.path.join(st_dir, "log_job.txt"), "self-training benchmark", threads=threads),
    ], jobs)
