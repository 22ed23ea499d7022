"""
The one pipeline behind the demo, the transfer benchmark and self-training: prerequisites of a
pretraining config (proposals; Jigsaw's trainer extracts its samples itself; both under the job's
output dir) -> pretrain -> export (checked against the fine-tuning detector) -> probe the exported
backbone -> fine-tune from each init with S seeds -> AP on DATASETS.TEST. A user's own weights
(ImageNet, COCO) enter at the export's place: ``import_weights``.
"""
import os
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

from detpre.checkpoint import export_checked, save_model_zoo_file
from detpre.config import get_detpre_cfg
from detpre.errors import DetpreError
from detpre.utils.io import read_json, write_json_atomic

from .runner import final_evaluation, metrics_records, repo_path, run_logged, say, tool_command, train

__all__ = ["prerequisite_opts", "ensure_prerequisites", "pretrain", "export", "import_weights", "probe", "finetune"]


def prerequisite_opts(config: str, out_dir: str) -> List[str]:
    """Overrides that put a config's precomputed inputs (proposal files, Jigsaw's sample file)
    under ``out_dir``, so that a job never reads inputs extracted from other data."""
    cfg = get_detpre_cfg(repo_path(config))
    opts = []
    if cfg.MODEL.LOAD_PROPOSALS:
        files = [os.path.join(out_dir, "proposals", f"{d}.pkl") for d in cfg.DATASETS.TRAIN]
        opts += ["DATASETS.PROPOSAL_FILES_TRAIN", str(tuple(files))]
    if cfg.DATASETS.JIGSAW_SAMPLES:
        name = os.path.basename(cfg.DATASETS.JIGSAW_SAMPLES)
        opts += ["DATASETS.JIGSAW_SAMPLES", os.path.join(out_dir, "jigsaw", name)]
    return opts


def ensure_prerequisites(config: str, opts: Sequence[str], label: str = "", threads: Optional[int] = None,
                         workers: Optional[int] = None) -> float:
    """Compute what ``config`` + ``opts`` reads but nothing trains: selective-search proposals of
    its training sets (``tools/generate_proposals.py``, ``workers`` processes; default all
    cores). Returns seconds spent."""
    cfg = get_detpre_cfg(repo_path(config), opts)
    sec = 0.0
    if cfg.MODEL.LOAD_PROPOSALS:
        for name, path in zip(cfg.DATASETS.TRAIN, cfg.DATASETS.PROPOSAL_FILES_TRAIN):
            if not os.path.isfile(path):
                cmd = tool_command("generate_proposals", "--dataset", name, "--output", path,
                                   *(["--workers", str(workers)] if workers else []))
                sec += run_logged(cmd, path + ".log.txt", f"{label} proposals", threads=threads)
    return sec


def pretrain(config: str, out_dir: str, opts: Sequence[str] = (), label: str = "",
             threads: Optional[int] = None) -> Dict[str, Any]:
    """Train ``config`` into ``out_dir``; returns its cost: wall seconds (None when done
    before), iterations, median logged seconds/iteration and images/s."""
    cfg = get_detpre_cfg(repo_path(config), opts)
    wall = train(config, out_dir, opts, label, threads)
    times = sorted(r["time"] for r in metrics_records(out_dir) if "time" in r)
    spi = times[len(times) // 2] if times else float("nan")
    return {"wall_s": wall, "iters": cfg.SOLVER.MAX_ITER, "s_per_iter": spi,
            "train_s": spi * cfg.SOLVER.MAX_ITER, "images_per_s": cfg.SOLVER.IMS_PER_BATCH / spi}


def export(checkpoint: str, path: str, finetune_config: str,
           detector: str = "mask_rcnn") -> Tuple[str, Optional[Dict[str, list]]]:
    """The model-zoo file of ``checkpoint`` for ``detector``, checked against ``finetune_config``'s
    detector (shape mismatches refused); reused when it exists. Returns ``(path, report)``."""
    report = None
    if not os.path.isfile(path):
        weights, report, arch, _ = export_checked(checkpoint, detector, config_file=repo_path(finetune_config))
        save_model_zoo_file(weights, path, author=f"detpre {arch}")
        say(f"[export] {path}: fills {len(report['filled'])} keys, {len(report['random_init'])} stay random")
    return path, report


def import_weights(source: str, path: str, finetune_config: str, finetune_opts: Sequence[str] = (),
                   opts: Sequence[str] = ()) -> Tuple[str, Dict[str, Any]]:
    """
    A user's weights file (a ``detpre.interop.weights`` format) as the model-zoo file ``path``, under
    the names of ``finetune_config``'s detector and checked against it (``import_checked``). Returns
    ``(path, info)``; ``info["opts"]``: the overrides every run from it needs (its format's layout,
    then ``opts``). Reused while ``source`` is the same file; refused when it changed, since the
    finished runs next to it started from the old one.
    """
    from detpre.interop.weights import file_sha256, import_checked

    stamp = os.path.splitext(path)[0] + ".json"
    sha = file_sha256(source) if os.path.isfile(source) else None
    info = read_json(stamp)
    if info and os.path.isfile(path):
        if sha is not None and info.get("sha256") != sha:
            raise DetpreError(
                f"{source}: not the file {path} was imported from ({info.get('source')}), and runs next to it "
                f"may have started from that one; delete {os.path.dirname(path)} or use another name")
        return path, info
    weights, info = import_checked(source, repo_path(finetune_config), finetune_opts, opts)
    info.update(source=os.path.abspath(source), sha256=sha)
    save_model_zoo_file(weights, path, author=f"detpre import of {os.path.basename(source)} ({info['format']})")
    write_json_atomic(stamp, info, indent=1)
    say(f"[import] {path}: {info['format']} weights fill {info['filled']} keys, {info['random_init']} stay random"
        + (f"; runs add {' '.join(info['opts'])}" if info["opts"] else ""))
    return path, info


_PROBE_LOCK = threading.Lock()  # probes run in this process: one at a time (data set registration)


def probe(weights: str, config: str, train_dataset: str, test_dataset: str,
          opts: Sequence[str] = ()) -> Dict[str, Any]:
    """kNN and linear-probe top-1 of the backbone in ``weights`` ("" = random) on object crops,
    with the ResNet and input of ``config`` + ``opts``."""
    import torch
    from detectron2.data import DatasetCatalog

    from detpre.data.datasets import register_from_config
    from detpre.evaluation.backbone_probe import evaluate_backbone

    cfg = get_detpre_cfg(repo_path(config), [str(o) for o in opts])
    with _PROBE_LOCK, torch.no_grad():
        register_from_config(cfg)
        return evaluate_backbone(cfg, weights, DatasetCatalog.get(train_dataset),
                                 DatasetCatalog.get(test_dataset))


def finetune(config: str, out_dir: str, weights: Optional[str] = None, seed: int = 0, opts: Sequence[str] = (),
             label: str = "", threads: Optional[int] = None) -> Tuple[Dict[str, Any], Optional[float]]:
    """Fine-tune ``config`` from ``weights`` (None: random init) with ``SEED seed``; returns the
    final evaluation record (``bbox/AP``, ...) and the wall seconds (None when done before)."""
    init = ["MODEL.WEIGHTS", weights] if weights else []
    sec = train(config, out_dir, [*init, "SEED", seed, *opts], label, threads)
    metrics = final_evaluation(config, out_dir, [*init, "SEED", seed, *opts])
    if not metrics:
        raise RuntimeError(f"{out_dir}: the fine-tuning run wrote no evaluation (bbox/AP) to "
                           "metrics.json; does the config set DATASETS.TEST?")
    return metrics, sec
