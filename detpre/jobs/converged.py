"""
``make demo-converged``: does pretraining still pay once the detector has learned? Every init
fine-tunes *to a plateau* (``detpre.engine.plateau``: the best checkpoint on a selection split,
scored on a separate report split), at two label budgets (60 and 600 labeled images), with paired
seeds: random init, SoCo (on a larger unlabeled pool, longer than the demo's), Jigsaw, Fast-MoCo and
box pretraining, and for the methods that pretrain on the labeled images the control given the
same total iterations (random init with its cap raised by the pretraining iterations,
``run_transfer``'s control rows). Per init: AP at the plateau (report split) with intervals over
seeds and over seeds + images, iterations to the plateau (seeds), iterations to reach random
init's plateau AP, and on the same row what the pretraining cost (seconds, images/s) against the
fine-tuning iterations (and seconds) it saved.

The data: a demo root of its own (``DATA``; the default ``datasets/detpre_demo`` is not touched),
600 `train` images of which `detpre_demo_train60` is the first 60, 1200 unlabeled, 200 selection
and 500 report images (no image in two splits). Pretrainings that use no labels are shared by the
two budgets (``Method.pretrain_dir``). Resumable: every finished run is reused (``run_transfer``).
Writes ``converged.md`` (the tables), ``converged.png`` (selection AP against fine-tuning
iteration per init, mean over seeds, shaded min-max) and ``converged.json`` into the output dir.
``smoke=True``: the same pipeline on tiny splits, a few iterations, one seed (CI).
"""
import math
import os
import time
from typing import Any, Dict, List, Optional, Sequence

from detpre.utils.io import atomic_open, write_json_atomic

from .report import format_difference, format_mean_std, format_value, format_widest
from .runner import say
from .transfer import Method, Plateau, run_transfer

__all__ = ["DATA", "SMOKE_DATA", "BUDGETS", "METHODS", "converged_settings", "prepare_data", "expected_seconds",
           "run_converged", "converged_table", "plateau_table", "plot_plateau_curves", "format_duration"]

FINETUNE_CONFIG = "configs/demo/mask_rcnn_R18_FPN_tiny.yaml"
DATA_ROOT = "datasets/detpre_demo_converged"
# generate_demo_dataset's arguments for the comparison's own root (the default demo's are 60/300/300)
DATA = {"seed": 0, "num_train": 600, "num_val": 0, "num_unlabeled": 1200, "num_select": 200, "num_report": 500,
        "train_subsets": [60]}
SMOKE_DATA = {"seed": 0, "num_train": 12, "num_val": 0, "num_unlabeled": 16, "num_select": 4, "num_report": 6,
              "train_subsets": [6]}
# labeled images -> fine-tuning cap (SOLVER.MAX_ITER; 100 and 20 epochs at 4 images per batch)
BUDGETS = {60: 1500, 600: 3000}
SMOKE_BUDGETS = {6: 8, 12: 8}
PLATEAU = {"period": 100, "patience": 5, "min_delta": 0.1}
SMOKE_PLATEAU = {"period": 2, "patience": 2, "min_delta": 0.1}
# Fine-tuning: the demo's LR, constant after the warm-up (no step: a plateau is where the LR
# schedule cannot make it rise, and a step at a fixed fraction of the cap would reward the cap)
FINETUNE_OPTS = ["SOLVER.BASE_LR", "0.02", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "100",
                 "SOLVER.CHECKPOINT_PERIOD", "500"]
SMOKE_FINETUNE_OPTS = ["SOLVER.BASE_LR", "0.02", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1",
                       "SOLVER.CHECKPOINT_PERIOD", "100"]
# The pretrainings (demo names: detpre.method's DemoEntry gives config and detector) and their
# overrides: SoCo 4x the demo's 150 iterations on the 4x larger unlabeled pool, Fast-MoCo 3x its 100;
# Jigsaw and box pretraining as the demo runs them, on the budget's labeled images
METHODS = {
    "soco": ["SOLVER.MAX_ITER", "600", "SOLVER.WARMUP_ITERS", "40", "SOLVER.CHECKPOINT_PERIOD", "100"],
    "jigsaw": [],
    "fastmoco": ["SOLVER.MAX_ITER", "300", "SOLVER.WARMUP_ITERS", "30", "SOLVER.CHECKPOINT_PERIOD", "100"],
    "agnostic": [],
}
# the smoke's: one label-free pretraining shared by the budgets (with its proposals) and one on the
# labeled images with its control; Jigsaw's and Fast-MoCo's pipelines are make demo-smoke's
SMOKE_METHODS = ("soco", "agnostic")
SMOKE_METHOD_OPTS = ["SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()",
                     "SOLVER.CHECKPOINT_PERIOD", "3"]
SELECT, REPORT = "detpre_demo_select", "detpre_demo_report"
_STAMP_KEYS = ("data", "budgets", "plateau", "finetune_opts", "methods")

# For the time printed first (seconds on the reference machine of detpre.jobs.demo, scaled by
# ``cpu_speed_factor``): fine-tuning 0.7 s per iteration (two runs at once, one thread each, as
# detpre.jobs.demo), evaluation of the tiny Mask R-CNN ~0.06 s per image, selective search ~0.15 s
# per image, and per run its process start and data loading; probes ~30 s per init and budget.
_FINETUNE_S_PER_ITER = 0.7
_EVAL_S_PER_IMAGE = 0.06
_PROPOSAL_S_PER_IMAGE = 0.15
_S_PER_RUN = 15
_PROBE_S = 30


def converged_settings(smoke: bool = False) -> Dict[str, Any]:
    """The comparison's data, budgets, plateau rule, fine-tuning and pretraining overrides."""
    if smoke:
        return {"data": dict(SMOKE_DATA), "budgets": dict(SMOKE_BUDGETS), "plateau": dict(SMOKE_PLATEAU),
                "finetune_opts": list(SMOKE_FINETUNE_OPTS),
                "methods": {m: list(SMOKE_METHOD_OPTS) for m in SMOKE_METHODS}}
    return {"data": dict(DATA), "budgets": dict(BUDGETS), "plateau": dict(PLATEAU),
            "finetune_opts": list(FINETUNE_OPTS), "methods": {m: list(o) for m, o in METHODS.items()}}


def prepare_data(root: str, data: Dict[str, Any]) -> str:
    """The comparison's demo root (generated once, atomically; ``generate_demo_dataset``) with its
    splits registered: `train`, its label budgets, `unlabeled`, selection and report."""
    from detpre.data.datasets import generate_demo_dataset, register_demo

    root = generate_demo_dataset(root, **data)
    return register_demo(root)


def _train_name(n: int, data: Dict[str, Any]) -> str:
    return "detpre_demo_train" if n == data["num_train"] else f"detpre_demo_train{n}"


def _labeled(config: str) -> bool:
    """The pretraining learns from the labeled images (box pretraining, Jigsaw): one per budget."""
    from detpre.config import get_detpre_cfg
    from detpre.method import declared

    from .runner import repo_path

    return bool(declared(get_detpre_cfg(repo_path(config)), "trains_on_labels", False))


def _methods(settings, root, budget, output_dir) -> List[Method]:
    from .demo import demo_methods

    entries = demo_methods()
    out = []
    for name, opts in settings["methods"].items():
        e = entries[name]
        opts = [*opts, "DATASETS.DEMO_ROOT", root]
        if _labeled(e.config):
            opts += ["DATASETS.TRAIN", str((_train_name(budget, settings["data"]),))]
            out.append(Method(name, e.config, opts, e.detector))
        else:  # the same pretraining for every budget
            shared = os.path.join(output_dir, "pretrain", name)
            out.append(Method(name, e.config, opts, e.detector, pretrain_dir=shared))
    return out


def _finetune_opts(settings, root, budget) -> List[str]:
    return [*settings["finetune_opts"], "DATASETS.DEMO_ROOT", root,
            "DATASETS.TRAIN", str((_train_name(budget, settings["data"]),)),
            "SOLVER.MAX_ITER", str(settings["budgets"][budget])]


def expected_seconds(settings: Dict[str, Any], seeds: Sequence[int], jobs: int = 2, speed: float = 1.0) -> float:
    """An upper bound of the comparison's time: every fine-tuning run to its cap (a run that
    plateaus stops sooner), with its selection evaluations and the report evaluation, every
    pretraining, SoCo's proposals and the probes, shared by ``jobs`` cores, on a machine ``speed``
    times slower than the reference (``detpre.jobs.demo.cpu_speed_factor``)."""
    from detpre.config import get_detpre_cfg

    from .demo import demo_methods
    from .runner import repo_path

    entries, data, p = demo_methods(), settings["data"], settings["plateau"]
    work, pretrained = 0.0, set()
    for budget, cap in settings["budgets"].items():
        controls = set()  # random init for a method's pretraining + fine-tuning iterations
        for name, opts in settings["methods"].items():
            e = entries[name]
            iters = get_detpre_cfg(repo_path(e.config), opts).SOLVER.MAX_ITER
            labeled = _labeled(e.config)
            if labeled:
                controls.add(cap + iters)
            if labeled or name not in pretrained:  # a label-free pretraining once for every budget
                pretrained.add(name)
                work += iters * e.s_per_iter + _S_PER_RUN
                if name == "soco":
                    work += data["num_unlabeled"] * _PROPOSAL_S_PER_IMAGE
        for c in [cap] * (1 + len(settings["methods"])) + sorted(controls):
            evals = c // p["period"] + 1
            work += len(seeds) * (c * _FINETUNE_S_PER_ITER + _S_PER_RUN
                                  + (evals * data["num_select"] + data["num_report"]) * _EVAL_S_PER_IMAGE)
        work += (len(settings["methods"]) + 1) * _PROBE_S
    return speed * (60 + work / max(1, jobs))


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    return f"{h} h {rest // 60:02d} min" if h else f"{rest // 60} min {rest % 60:02d} s"


def run_converged(output_dir: str = "output/demo_converged", data_root: str = DATA_ROOT,
                  seeds: Sequence[int] = (0, 1, 2), jobs: int = 2, smoke: bool = False,
                  budgets: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """
    The comparison (module docstring) into ``output_dir``: ``labels<N>/`` per budget (a
    ``run_transfer`` each, fine-tuning to a plateau), ``pretrain/`` (the label-free pretrainings,
    shared), ``converged.{json,md,png}``. Returns the JSON's content. ``budgets``: a subset of the
    settings' budgets. Rerunning continues a killed run; results made with other settings are
    refused (``detpre.jobs.demo.check_output_data``).
    """
    from .demo import check_output_data

    settings = converged_settings(smoke)
    stamp = {k: _jsonable(settings[k]) for k in _STAMP_KEYS}  # all budgets: running some first is fine
    if budgets:
        unknown = sorted(set(budgets) - set(settings["budgets"]))
        if unknown:
            raise ValueError(f"budgets {unknown}: this comparison has {sorted(settings['budgets'])}")
        settings["budgets"] = {b: c for b, c in settings["budgets"].items() if b in budgets}
    t0 = time.time()
    root = prepare_data(data_root, settings["data"])
    check_output_data(output_dir, stamp)
    plateau = Plateau(SELECT, REPORT, **settings["plateau"])
    results = {}
    for budget in settings["budgets"]:
        say(f"[converged] {budget} labeled images: fine-tuning to a plateau (cap {settings['budgets'][budget]} "
            f"iterations), seeds {list(seeds)}")
        out = os.path.join(output_dir, f"labels{budget}")
        results[str(budget)] = run_transfer(
            _methods(settings, root, budget, output_dir), FINETUNE_CONFIG, out, seeds=seeds, jobs=jobs,
            finetune_opts=_finetune_opts(settings, root, budget), plateau=plateau)
    from detpre.data.datasets.demo_gen import read_demo_marker

    result = {"data_root": root, "data": read_demo_marker(root), "settings": _jsonable(settings),
              "seeds": [int(s) for s in seeds], "smoke": bool(smoke), "elapsed_s": time.time() - t0,
              "budgets": results}
    write_json_atomic(os.path.join(output_dir, "converged.json"), result, indent=1)
    with atomic_open(os.path.join(output_dir, "converged.md"), "w") as f:
        f.write(converged_table(result) + "\n")
    plot_plateau_curves(result, os.path.join(output_dir, "converged.png"))
    return result


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


# ---- the table -------------------------------------------------------------------------------
def _reach(p):
    r = p["iters_to_random_plateau"]
    n = len(r["values"])
    if not r["n"]:
        return f"never (0/{n})"
    return format_mean_std(r, "{:.0f}") + ("" if r["n"] == n else f" ({r['n']}/{n} seeds)")


def _saved(p):
    """Fine-tuning iterations saved (mean over the seeds that reached random init's plateau AP) and
    their seconds at the runs' own speed."""
    s, spi = p["iters_saved"], p["finetune_s_per_iter"]["mean"]
    if not s["n"]:
        return "n/a", "n/a"
    sec = s["mean"] * spi if spi and not math.isnan(spi) else math.nan
    return format_mean_std(s, "{:+.0f}"), format_value(sec, "{:+.0f}s")


def plateau_table(result: Dict[str, Any]) -> str:
    """Markdown of one ``run_transfer(..., plateau=...)`` result: per init the pretraining cost,
    the plateau AP on the report split (mean ± std; Δ to random init over seeds and over seeds +
    images; Δ to the same-total control), the iterations to the plateau (Δ to random init over
    seeds), the iterations trained, the iterations to random init's plateau AP (on the selection
    split) and the fine-tuning iterations and seconds that saves (``*``: the 95% interval excludes 0)."""
    headers = ["init", "pretrain s", "img/s", "plateau box AP", "Δ vs random [seeds]", "Δ vs random [seeds + images]",
               "Δ vs same-total control", "plateau mask AP", "it to plateau", "Δ it vs random [seeds]", "it trained",
               "it to random's plateau AP", "fine-tuning it saved", "fine-tuning s saved"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in result["rows"]:
        c, s, p = r.get("pretrain"), r["summary"], r["plateau"]
        random_row = "vs_random" not in s["box AP"]
        saved = _saved(p)
        cells = [
            r["init"], "-" if c is None else format_value(c.get("train_s"), "{:.0f}"),
            "-" if c is None else format_value(c.get("images_per_s"), "{:.1f}"), format_mean_std(s["box AP"]),
            "-" if random_row else format_difference(s["box AP"].get("vs_random")),
            "-" if random_row else format_widest(s["box AP"], "vs_random"),
            format_widest(s["box AP"], "vs_control") if "vs_control" in s["box AP"] else "-",
            format_mean_std(s["mask AP"]), format_mean_std(p["iters_to_plateau"], "{:.0f}"),
            "-" if random_row else format_difference(p["iters_to_plateau"].get("vs_random"), "{:+.0f}"),
            format_mean_std(p["iters_trained"], "{:.0f}"), _reach(p), *saved]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def converged_table(result: Dict[str, Any]) -> str:
    """Markdown: one ``plateau_table`` per label budget, with what its numbers rest on."""
    parts = []
    settings = result["settings"]
    p = settings["plateau"]
    data = result.get("data") or {}
    for budget, res in result["budgets"].items():
        cap = settings["budgets"][str(budget)]
        parts.append(
            f"### {budget} labeled images (cap {cap} iterations)\n\n"
            f"Fine-tuned to a plateau: {SELECT} ({data.get('num_select', '?')} images) evaluated every {p['period']} "
            f"iterations, stopped after {p['patience']} evaluations without a rise of more than {p['min_delta']} "
            "box AP; "
            f"the best checkpoint scored on {REPORT} ({data.get('num_report', '?')} images). "
            + (f"{len(result['seeds'])} paired seeds ({', '.join(map(str, result['seeds']))}); 95% intervals, `*`: "
               "excludes 0.\n\n" if len(result["seeds"]) > 1 else
               f"One seed ({result['seeds'][0]}): each Δ is one pair of runs, no interval.\n\n")
            + plateau_table(res))
    notes = ("pretrain s: median seconds per iteration x iterations (shared by both budgets where the pretraining "
             "uses no labels); it to plateau: fine-tuning iterations to the best selection evaluation (the "
             "checkpoint kept); it trained: to the stop or the cap; it to random's plateau AP: iterations until the "
             "selection AP first reached random init's best (same seed); saved: random init's iterations to its "
             "plateau minus those, and their seconds at the runs' own speed; random init N it: the same-total "
             "control (its cap raised by the pretraining iterations).")
    return "\n\n".join(parts + [notes])


# ---- the plot --------------------------------------------------------------------------------
def _curves(row):
    """``(iterations, mean, low, high)`` of a row's selection histories over its seeds (each
    iteration over the seeds that evaluated it)."""
    by_iter = {}
    for run in row["finetune"]:
        for h in (run.get("plateau") or {}).get("history") or []:
            if h.get("value") is not None:
                by_iter.setdefault(int(h["iteration"]), []).append(float(h["value"]))
    its = sorted(by_iter)
    return (its, [sum(by_iter[i]) / len(by_iter[i]) for i in its], [min(by_iter[i]) for i in its],
            [max(by_iter[i]) for i in its])


def plot_plateau_curves(result: Dict[str, Any], path: str) -> str:
    """PNG (matplotlib Agg, written atomically): per label budget, the selection split's AP against
    fine-tuning iteration for each init, mean over seeds with the min-max spread shaded, each
    init's mean best iteration marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = list(result["budgets"].items())
    fig, axes = plt.subplots(1, len(budgets), figsize=(6.5 * len(budgets), 4.5), squeeze=False)
    metric = (result["settings"]["plateau"].get("metric") or "bbox/AP")
    for ax, (budget, res) in zip(axes[0], budgets):
        for k, row in enumerate(res["rows"]):
            its, mean, low, high = _curves(row)
            if not its:
                continue
            color = f"C{k % 10}"
            ax.plot(its, mean, color=color, label=row["init"], lw=1.5)
            ax.fill_between(its, low, high, color=color, alpha=0.15, lw=0)
            best = row["plateau"]["iters_to_plateau"]["mean"]
            if best is not None and not math.isnan(best):
                ax.axvline(best, color=color, ls=":", lw=0.8)
        ax.set_title(f"{budget} labeled images")
        ax.set_xlabel("fine-tuning iteration")
        ax.set_ylabel(f"selection split {metric} (mean over {len(result['seeds'])} seeds, min-max shaded)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path
