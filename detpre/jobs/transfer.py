"""
Transfer benchmark: does a pretraining make a better detector than random init? Each method is
pretrained (for its config's iterations, or for an equal wall-clock budget), exported, probed
(kNN / linear top-1 of its backbone on object crops: cheap and far less noisy than AP), and the
fine-tuning config is trained from every init with S seeds. Rows give mean +- std of AP and the
difference to random init paired by seed, with its 95% t-interval, and for box and mask AP an interval that
also covers the sampling of the evaluation images (a bootstrap over them). Baselines (weights a user
already has: ImageNet, COCO) are fine-tuned and compared the same way, without pretraining.
"""
import math
import os
import re
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from detpre.config import get_detpre_cfg
from detpre.errors import DetpreError
from detpre.method import declared, trains_on_judged_labels
from detpre.utils.io import write_json_atomic

from .pipeline import ensure_prerequisites, export, finetune, import_weights, prerequisite_opts, pretrain, probe
from .runner import repo_path, run_graph
from .stats import ground_truth_json, image_interval, image_metrics, mean_std, paired_difference

__all__ = ["Method", "Baseline", "Plateau", "parse_baseline", "schedule_opts", "calibrated_iters", "control_name",
           "iterations_to_reach", "plateau_summary", "run_transfer", "METRICS"]

METRICS = (("box AP", "bbox/AP"), ("box AP50", "bbox/AP50"), ("mask AP", "segm/AP"))


class Method:
    """A pretraining to compare: a name, its config and overrides, and which of its parts the
    fine-tuning detector takes (``detector``: a ``detpre.checkpoint.DETECTOR_PREFIXES`` key; None:
    what its method declares, ``export_detector``, else "mask_rcnn").
    ``pretrain_dir``: where its pretraining and its prerequisites (proposals) go, default
    ``<output_dir>/<name>`` and the output dir; one directory given to several benchmarks (label
    budgets) that pretrain the same config + overrides on the same data makes them share it."""

    def __init__(self, name: str, config: str, opts: Sequence[Any] = (), detector: Optional[str] = None,
                 pretrain_dir: Optional[str] = None):
        self.name, self.config, self.opts = name, config, [str(o) for o in opts]
        self.detector = detector or declared(get_detpre_cfg(repo_path(config)), "export_detector", "mask_rcnn")
        self.pretrain_dir = pretrain_dir

    def __repr__(self):
        return f"Method({self.name!r}, {self.config!r})"


class Baseline:
    """Weights a user already has (ImageNet, COCO; a ``detpre.interop.weights`` format) to compare
    the methods with: fine-tuned with the same seeds, no pretraining. ``opts``: overrides its runs
    need beyond the ones its format implies (``layout_opts``: torchvision's RGB input and strides)."""

    def __init__(self, name: str, weights: str, opts: Sequence[Any] = ()):
        self.name, self.weights, self.opts = name, os.path.abspath(weights), [str(o) for o in opts]

    def __repr__(self):
        return f"Baseline({self.name!r}, {self.weights!r})"


class Plateau(NamedTuple):
    """Fine-tuning to a plateau (the TEST.PLATEAU keys, ``detpre.engine.plateau``): evaluate
    ``select`` every ``period`` iterations, stop after ``patience`` evaluations without a rise of
    more than ``min_delta`` in ``metric`` (SOLVER.MAX_ITER: the cap), report the best checkpoint on
    ``report`` (DATASETS.TEST)."""

    select: str
    report: str
    period: int = 100
    patience: int = 5
    min_delta: float = 0.1
    metric: str = "bbox/AP"

    def opts(self) -> List[str]:
        return ["TEST.PLATEAU.ENABLED", "True", "TEST.PLATEAU.DATASET", self.select, "DATASETS.TEST",
                str((self.report,)), "TEST.PLATEAU.PERIOD", str(int(self.period)),
                "TEST.PLATEAU.PATIENCE", str(int(self.patience)), "TEST.PLATEAU.MIN_DELTA", str(float(self.min_delta)),
                "TEST.PLATEAU.METRIC", self.metric]


_NAME = re.compile(r"[A-Za-z0-9][\w.+-]*")


def parse_baseline(spec: str) -> Baseline:
    """``NAME=WEIGHTS`` (``--baseline``) as a Baseline; a bad form or a missing file is refused
    with a message saying what to pass."""
    from detpre.interop.weights import FORMATS_HELP

    name, eq, path = spec.partition("=")
    name, path = name.strip(), path.strip()
    if not eq or not name or not path:
        raise DetpreError(f"--baseline {spec!r}: expected NAME=WEIGHTS, e.g. imagenet=R-50.pkl")
    if not _NAME.fullmatch(name) or name.lower().replace("_", " ") == "random init":
        raise DetpreError(f"--baseline {spec!r}: the name {name!r} must be letters, digits and _.+- (it names the "
                          "row and its run directory) and not 'random init'")
    if not os.path.isfile(path):
        raise DetpreError(f"--baseline {spec!r}: {path}: no such file; pass {FORMATS_HELP}")
    return Baseline(name, path)


def schedule_opts(cfg, iters: int) -> List[str]:
    """Config overrides that fit ``cfg``'s LR schedule into ``iters`` iterations."""
    ratio = iters / float(cfg.SOLVER.MAX_ITER)
    steps = tuple(sorted({max(1, min(iters - 1, int(round(s * ratio)))) for s in cfg.SOLVER.STEPS}))
    warmup = min(int(round(cfg.SOLVER.WARMUP_ITERS * ratio)), iters // 2)
    return ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", str(steps),
            "SOLVER.WARMUP_ITERS", str(warmup), "SOLVER.CHECKPOINT_PERIOD", str(iters)]


def calibrated_iters(cfg, budget_s: float, cache: str, calibration_iters: int = 20) -> int:
    """Iterations of ``cfg`` that fit ``budget_s`` seconds, from a timed run of its real Trainer
    (the step timer), cached in ``cache``."""
    import json

    if not os.path.isfile(cache):
        from detpre.benchmarks.pretrain import benchmark_pretrain

        write_json_atomic(cache, benchmark_pretrain(cfg, iters=calibration_iters,
                                                    warmup=min(3, calibration_iters - 1)), indent=1)
    with open(cache) as f:
        spi = json.load(f)["iteration_s"]
    return max(1, int(math.floor(budget_s / spi)))


def control_name(iters: int) -> str:
    """The row of random init fine-tuned for ``iters`` iterations: the equal-compute control of the
    methods that pretrain on the labels they are judged on (``detpre.method.trains_on_judged_labels``)."""
    return f"random init {iters} it"


def iterations_to_reach(history: Sequence[Dict[str, Any]], target: Optional[float]) -> Optional[int]:
    """The first ``iteration`` of a plateau history (``[{"iteration", "value"}]``) whose value is
    at least ``target``; None when none is (or there is no target)."""
    if target is None or (isinstance(target, float) and math.isnan(target)):
        return None
    for h in history:
        if h.get("value") is not None and not math.isnan(h["value"]) and h["value"] >= target:
            return int(h["iteration"])
    return None


def _values_summary(vals: Sequence[Optional[float]]) -> Dict[str, Any]:
    """Mean +- std over the values that exist (None: never), and how many exist."""
    have = [float(v) for v in vals if v is not None]
    m, s = mean_std(have)
    return {"mean": m, "std": s, "values": list(vals), "n": len(have)}


def plateau_summary(runs: Sequence[Dict[str, Any]], random_runs: Sequence[Dict[str, Any]],
                    control_runs: Optional[Sequence[Dict[str, Any]]] = None) -> Dict[str, Any]:
    """
    Per init (its runs' records, each with ``"plateau"``: ``finetune`` fine-tuning to a plateau),
    paired by seed with random init's:

    - ``iters_to_plateau``: iterations to its best selection evaluation (the checkpoint it keeps),
      mean +- std, and ``vs_random`` / ``vs_control``: the paired difference (seeds only);
    - ``iters_trained``: iterations it trained (to the stop, or the cap);
    - ``select_best``: its best selection value;
    - ``iters_to_random_plateau``: iterations until its selection value first reached random init's
      best (the same seed's; None: never), and ``iters_saved``: random init's iterations to its
      plateau minus those (None where never reached);
    - ``finetune_s_per_iter``: the runs' median seconds per iteration (what the saved iterations cost).
    """
    def plateau_of(r):
        return r.get("plateau") or {}

    def best_iter(r):
        b = plateau_of(r).get("best")
        return None if not b else int(b["iteration"])

    def best_value(r):
        b = plateau_of(r).get("best")
        return None if not b or b.get("value") is None else float(b["value"])

    to_plateau = [best_iter(r) for r in runs]
    out = {"iters_to_plateau": _values_summary(to_plateau),
           "iters_trained": _values_summary([plateau_of(r).get("iterations") for r in runs]),
           "select_best": _values_summary([best_value(r) for r in runs])}
    for name, other in (("vs_random", random_runs), ("vs_control", control_runs)):
        if other is not None and other is not runs:
            theirs = [best_iter(r) for r in other]
            pairs = [(a, b) for a, b in zip(to_plateau, theirs) if a is not None and b is not None]
            if len(pairs) == len(runs):
                out["iters_to_plateau"][name] = paired_difference([a for a, _ in pairs], [b for _, b in pairs])
    reach = [iterations_to_reach(plateau_of(r).get("history") or [], best_value(b))
             for r, b in zip(runs, random_runs)]
    out["iters_to_random_plateau"] = _values_summary(reach)
    out["iters_saved"] = _values_summary([None if n is None or best_iter(b) is None else best_iter(b) - n
                                          for n, b in zip(reach, random_runs)])
    spi = [plateau_of(r).get("s_per_iter") for r in runs]
    out["finetune_s_per_iter"] = _values_summary([v for v in spi if v is not None and not math.isnan(v)])
    return out


def _summary(runs, baseline, control=None):
    """Mean +- std of each metric over seeds and the paired differences to ``baseline``'s runs
    (random init) and to ``control``'s (random init given the same total iterations)."""
    out = {}
    for label, key in METRICS:
        vals = [r.get(key, math.nan) for r in runs]
        m, s = mean_std(vals)
        out[label] = {"mean": m, "std": s, "values": vals}
        for name, other in (("vs_random", baseline), ("vs_control", control)):
            if other is not None and other is not runs:
                out[label][name] = paired_difference(vals, [r.get(key, math.nan) for r in other])
    return out


def _run_name(name: str, detector: str = "mask_rcnn") -> str:
    """The fine-tuning directory of an init: its name, and what it transfers when not all of Mask R-CNN."""
    run_name = name if detector == "mask_rcnn" or name.endswith(f"_{detector}") else f"{name}_{detector}"
    return run_name.replace(" ", "_")


def run_transfer(methods: Sequence[Method], finetune_config: str, output_dir: str, seeds: Sequence[int] = (0, 1, 2),
                 jobs: int = 2, finetune_opts: Sequence[str] = (), budget_s: Optional[float] = None,
                 probe_datasets: Optional[Tuple[str, str]] = None, calibration_iters: int = 20,
                 image_samples: int = 400, baselines: Sequence[Baseline] = (),
                 plateau: Optional[Plateau] = None) -> Dict[str, Any]:
    """
    Run the benchmark into ``output_dir``; returns ``{"rows": [...], ...}`` (also written to
    ``output_dir/benchmark_transfer.json``). ``jobs`` runs go at once (one thread each when
    more than one); every finished step is reused, a killed one resumes. Box and mask AP's differences
    to random init also get an interval over seeds and `val` images (``image_samples`` resamples).
    ``baselines`` are imported (read, checked against the fine-tuning detector) before any training.
    A method that pretrains on the labels fine-tuning is judged on (box pretraining, Jigsaw on the
    same set) gets a control row, random init fine-tuned for its pretraining + fine-tuning
    iterations (``control_name``; the schedule stretched by ``schedule_opts``), and its rows a
    paired difference to it (``vs_control``): equal total compute.
    ``plateau`` (a ``Plateau``): every run fine-tunes to a plateau, SOLVER.MAX_ITER the cap (a
    control's cap is raised by the pretraining iterations); AP is the best checkpoint's on the
    report split, and each row gets ``"plateau"`` (``plateau_summary``).
    """
    threads = 1 if jobs > 1 else None
    seeds = [int(s) for s in seeds]
    if plateau is not None:
        finetune_opts = [*finetune_opts, *plateau.opts()]
    ft_cfg = get_detpre_cfg(repo_path(finetune_config), finetune_opts)
    train_set, test_set = probe_datasets or (ft_cfg.DATASETS.TRAIN[0], ft_cfg.DATASETS.TEST[0])
    detectors = {m.name: m.detector for m in methods}
    run_names = ([_run_name("random init")] + [_run_name(m.name, m.detector) for m in methods]
                 + [_run_name(b.name) for b in baselines])
    clash = sorted({n for n in run_names if run_names.count(n) > 1})
    if clash:
        raise DetpreError(f"two inits would fine-tune into the same directory {clash}: give every method and "
                          "baseline its own name")
    os.makedirs(output_dir, exist_ok=True)

    # user weights first: a file that is not weights, or not of this detector, fails before any training
    imported = {b.name: import_weights(b.weights, os.path.join(output_dir, "baselines", b.name, "weights.pkl"),
                                       finetune_config, finetune_opts, b.opts) for b in baselines}
    row_opts = {name: info["opts"] for name, (_, info) in imported.items()}

    # proposals: on the pretraining task's own core when cores are shared (random init starts
    # at once), else on every core before any training (the budget's calibration trains on them)
    in_graph = jobs > 1 and not budget_s
    def pretrain_base(m):
        return m.pretrain_dir or os.path.join(output_dir, m.name)

    plans = [(m, prerequisite_opts(m.config, m.pretrain_dir or output_dir) + m.opts) for m in methods]
    for i, (m, opts) in enumerate(plans):
        if not in_graph:
            ensure_prerequisites(m.config, opts, m.name)
        if budget_s:
            base = os.path.join(output_dir, m.name)
            os.makedirs(base, exist_ok=True)
            cfg = get_detpre_cfg(repo_path(m.config), opts)
            plans[i] = (m, opts + schedule_opts(cfg, calibrated_iters(
                cfg, budget_s, os.path.join(base, "calibration.json"), calibration_iters)))
    control_of = {}  # method -> its equal-compute control row
    for m, opts in plans:
        cfg = get_detpre_cfg(repo_path(m.config), opts)
        if trains_on_judged_labels(cfg, ft_cfg):
            control_of[m.name] = control_name(ft_cfg.SOLVER.MAX_ITER + cfg.SOLVER.MAX_ITER)
    controls = sorted(set(control_of.values()), key=lambda n: int(n.split()[-2]))
    if set(map(_run_name, controls)) & set(run_names):
        raise DetpreError(f"a method or baseline is named like an equal-compute control {controls}: rename it")
    row_opts.update({c: schedule_opts(ft_cfg, int(c.split()[-2])) for c in controls})

    def pretrain_and_export(m, opts):
        if in_graph:
            ensure_prerequisites(m.config, opts, m.name, threads, workers=1)
        out = os.path.join(pretrain_base(m), "pretrain")
        cost = pretrain(m.config, out, opts, f"{m.name} pretraining", threads)
        # one file per transfer path: a finished export for another detector is never reused
        weights, _ = export(os.path.join(out, "model_final.pth"),
                            os.path.join(output_dir, m.name, f"export_{m.detector}.pkl"), finetune_config, m.detector)
        return cost, weights

    def run_dir(name, seed):
        return os.path.join(output_dir, "finetune", _run_name(name, detectors.get(name, "mask_rcnn")), f"seed{seed}")

    def init_weights(name, pre):
        """A pretraining's export, a baseline's imported file, or None (random init)."""
        return imported[name][0] if name in imported else pre[1]

    def finetune_job(name, seed):
        def run(pre=(None, None)):
            return finetune(finetune_config, run_dir(name, seed), init_weights(name, pre), seed,
                            [*finetune_opts, *row_opts.get(name, ())], f"fine-tune {name} seed {seed}", threads)
        return run

    # one graph: a core fine-tunes from random init while the other still pretrains; the probes
    # (in this process) fill a core that would otherwise wait for the last fine-tuning
    tasks = {("pre", m.name): (lambda m=m, o=opts: pretrain_and_export(m, o), ()) for m, opts in plans}
    names = ["random init"] + controls + [m.name for m in methods] + [b.name for b in baselines]
    deps = {m.name: (("pre", m.name),) for m in methods}
    for s in seeds:
        for name in names:
            tasks[("ft", name, s)] = (finetune_job(name, s), deps.get(name, ()))
    for name in names:
        if name in controls:  # the same init as random init's: its probe is that one
            continue
        tasks[("probe", name)] = (lambda pre=(None, None), name=name: probe(
            init_weights(name, pre) or "", finetune_config, train_set, test_set,
            [*finetune_opts, *row_opts.get(name, ())]), deps.get(name, ()))
    done = run_graph(tasks, jobs)

    rows = []
    for name in names:
        cost, weights = done[("pre", name)] if name in deps else (None, init_weights(name, (None, None)))
        rows.append({"init": name, "weights": weights, "pretrain": cost,
                     "probe": done[("probe", "random init" if name in controls else name)],
                     "finetune": [done[("ft", name, s)][0] for s in seeds],
                     "finetune_s": [done[("ft", name, s)][1] for s in seeds]})
        if name in imported:  # no pretraining: the user's file, its format and the overrides its runs had
            rows[-1]["baseline"] = imported[name][1]
        if name in controls:
            rows[-1]["control_for"] = sorted(m for m, c in control_of.items() if c == name)
            rows[-1]["finetune_iters"] = int(name.split()[-2])
        if name in control_of:
            rows[-1]["control"] = control_of[name]
    by_name = {r["init"]: r for r in rows}
    baseline = rows[0]["finetune"]
    for r in rows:
        control = by_name[r["control"]]["finetune"] if "control" in r else None
        r["summary"] = _summary(r["finetune"], baseline, control)
        if plateau is not None:
            r["plateau"] = plateau_summary(r["finetune"], baseline, control)
    eval_set = ft_cfg.DATASETS.TEST[0] if ft_cfg.DATASETS.TEST else None  # what fine-tuning is scored on
    gt_json = ground_truth_json(ft_cfg, eval_set) if eval_set else None
    for r in rows[1:]:
        for label, iou_type in image_metrics(ft_cfg):
            for key, other in (("vs_random_images", "random init"), ("vs_control_images", r.get("control"))):
                if other:
                    r["summary"][label][key] = image_interval(
                        [run_dir(r["init"], s) for s in seeds], [run_dir(other, s) for s in seeds], eval_set,
                        gt_json, num_samples=image_samples, iou_type=iou_type)
    result = {"finetune_config": finetune_config, "finetune_opts": list(finetune_opts), "seeds": seeds,
              "budget_s": budget_s, "probe_datasets": [train_set, test_set], "rows": rows,
              "plateau": plateau._asdict() if plateau is not None else None}
    write_json_atomic(os.path.join(output_dir, "benchmark_transfer.json"), result, indent=1)
    return result
