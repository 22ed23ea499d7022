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
from detpre.method import declared
from detpre.utils.io import read_json, write_json_atomic

from .runner import final_evaluation, metrics_records, repo_path, run_logged, say, tool_command, train

__all__ = ["PREREQUISITES", "prerequisite_opts", "ensure_prerequisites", "pretrain", "export", "import_weights",
           "probe", "finetune"]


def _proposal_files(cfg, out_dir):
    if not cfg.MODEL.LOAD_PROPOSALS:
        return []
    files = [os.path.join(out_dir, "proposals", f"{d}.pkl") for d in cfg.DATASETS.TRAIN]
    return ["DATASETS.PROPOSAL_FILES_TRAIN", str(tuple(files))]


def _jigsaw_samples(cfg, out_dir):
    if not cfg.DATASETS.JIGSAW_SAMPLES:  # extracted in memory at every start
        return []
    return ["DATASETS.JIGSAW_SAMPLES", os.path.join(out_dir, "jigsaw", os.path.basename(cfg.DATASETS.JIGSAW_SAMPLES))]


# What a method's ``prerequisites`` (detpre.method) name: the overrides that put that input under
# a job's output dir. Proposals are computed by ``ensure_prerequisites``, Jigsaw's samples by its trainer.
PREREQUISITES = {"proposals": _proposal_files, "jigsaw_samples": _jigsaw_samples}


def prerequisite_opts(config: str, out_dir: str) -> List[str]:
    """Overrides that put a config's precomputed inputs (its method's declared ``prerequisites``:
    proposal files, Jigsaw's sample file) under ``out_dir``, so that a job never reads inputs
    extracted from other data."""
    cfg = get_detpre_cfg(repo_path(config))
    names = dict.fromkeys([*declared(cfg, "prerequisites", ()), *(["proposals"] if cfg.MODEL.LOAD_PROPOSALS else [])])
    return [o for name in names for o in PREREQUISITES[name](cfg, out_dir)]


def ensure_prerequisites(config: str, opts: Sequence[str], label: str = "", threads: Optional[int] = None,
                         workers: Optional[int] = None) -> float:
    """Compute what ``config`` + ``opts`` reads but nothing trains: selective-search proposals of
    its training sets (``tools/generate_proposals.py``, ``workers`` processes; default all
    cores). The tool gets the config and overrides too: they register the user's own data sets
    (``DATASETS.COCO`` ...) under the names it looks up. Returns seconds spent."""
    config = repo_path(config)
    cfg = get_detpre_cfg(config, opts)
    sec = 0.0
    if cfg.MODEL.LOAD_PROPOSALS:
        for name, path in zip(cfg.DATASETS.TRAIN, cfg.DATASETS.PROPOSAL_FILES_TRAIN):
            if not os.path.isfile(path):
                cmd = tool_command("generate_proposals", "--config-file", config, "--dataset", name, "--output", path,
                                   *(["--workers", str(workers)] if workers else []), *opts)
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
    final evaluation record (``bbox/AP``, ...) and the wall seconds (None when done before).
    With TEST.PLATEAU.ENABLED (fine-tuning to a plateau) the record is the end-of-training
    evaluation of the best checkpoint on DATASETS.TEST (the report split), with the selection
    split's history under ``"plateau"`` (``_plateau_record``)."""
    init = ["MODEL.WEIGHTS", weights] if weights else []
    full = [*init, "SEED", seed, *opts]
    sec = train(config, out_dir, full, label, threads)
    if get_detpre_cfg(repo_path(config), [str(o) for o in full]).TEST.PLATEAU.ENABLED:
        return _plateau_record(config, out_dir, full), sec
    metrics = final_evaluation(config, out_dir, full)
    if not metrics:
        raise RuntimeError(f"{out_dir}: the fine-tuning run wrote no evaluation (bbox/AP) to "
                           "metrics.json; does the config set DATASETS.TEST?")
    return metrics, sec


def _plateau_record(config: str, out_dir: str, opts: Sequence[Any] = ()) -> Dict[str, Any]:
    """
    The result of a finished run fine-tuned to a plateau (``detpre.engine.plateau``): its
    ``plateau.json``'s end-of-training evaluation (the best checkpoint = ``model_final.pth`` on
    DATASETS.TEST), plus ``"plateau"``: the selection split's history ``[{"iteration", "value"}]``,
    the best evaluation, ``stopped_at`` (None: it ran to the cap), ``iterations`` trained, ``max_iter``
    (the cap) and the median seconds per iteration. A run killed during that evaluation has none:
    ``model_final.pth`` is evaluated here and the record written into ``plateau.json``.
    """
    from detpre.checkpoint import is_finished
    from detpre.engine.plateau import PLATEAU_FILE, read_plateau

    from .runner import evaluate_weights

    path = os.path.join(out_dir, PLATEAU_FILE)
    found = read_plateau(out_dir)
    if not is_finished(out_dir) or not isinstance(found, dict):
        raise RuntimeError(f"{out_dir}: not a finished run fine-tuned to a plateau (no model_final.pth or no "
                           f"{PLATEAU_FILE})")
    if not found.get("final"):
        cfg = get_detpre_cfg(repo_path(config), [str(o) for o in opts] + ["OUTPUT_DIR", out_dir])
        if not cfg.DATASETS.TEST:
            raise RuntimeError(f"{out_dir}: fine-tuned to a plateau without DATASETS.TEST: nothing reports it")
        say(f"[{out_dir}] finished without its final evaluation (killed during it?): evaluating model_final.pth "
            "(the best checkpoint)")
        found["final"] = evaluate_weights(cfg, os.path.join(out_dir, "model_final.pth"))
        write_json_atomic(path, found, indent=1)
    times = sorted(r["time"] for r in metrics_records(out_dir) if "time" in r)
    plateau = {k: found.get(k) for k in ("dataset", "metric", "history", "best", "stopped_at", "max_iter",
                                         "period", "patience", "min_delta")}
    plateau["iterations"] = found["stopped_at"] or found["max_iter"]
    plateau["s_per_iter"] = times[len(times) // 2] if times else float("nan")
    return {**found["final"], "plateau": plateau}
