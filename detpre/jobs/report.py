"""Tables and plots of job results (strings and files; ``tools/`` prints them)."""
import math
from typing import Any, Dict, Sequence

from tabulate import tabulate

from detpre.utils.io import atomic_open

__all__ = ["transfer_table", "plot_transfer", "margin_sentence", "self_training_table", "self_training_margin",
           "plot_pseudo_label_curves", "self_train_rounds_table"]


def _pm(s):
    return f"{s['mean']:.2f} ± {s['std']:.2f}"


def _pm_n(s):
    """Mean ± std, or the value alone when there is one."""
    return f"{s['mean']:.2f}" if len(s.get("values", ())) == 1 else _pm(s)


def _diff(d):
    if d is None:
        return "-"
    return f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]" + (" *" if d["excludes_zero"] else "")


def _dim(probe, stage):
    """A stage's effective dimension from a probe's ``feature_dim`` ("-" for a stage it has not)."""
    v = probe.get("feature_dim", {}).get(stage)
    return "-" if v is None else f"{v:.1f}"


def _margin_lines(diffs, both, metrics, text, baseline):
    """``_judged`` lines for each of ``metrics`` whose paired difference in ``diffs`` is known
    (none for a metric the detector does not report: mask AP of a Faster R-CNN); ``both``: the
    intervals over seeds and images, ``text(metric, d)``: the line before its verdict."""
    return [_judged(text(m, diffs[m]), diffs[m], both.get(m), baseline)
            for m in metrics if not math.isnan(diffs[m]["mean"])]


def transfer_table(result: Dict[str, Any]) -> str:
    """Markdown: per init, pretraining cost, probe top-1, res4's effective dimension (a collapse
    shows there: ``detpre.evaluation.feature_dimension``), AP mean ± std over seeds and the paired
    difference to random init with its 95% interval over seeds, and for box and mask AP over seeds
    and evaluation images (``*``: the interval excludes 0)."""
    table = []
    for r in result["rows"]:
        c, p, s = r["pretrain"], r["probe"], r["summary"]
        table.append([
            r["init"],
            "-" if c is None else f"{c['train_s']:.0f}s / {c['iters']} it",
            "-" if c is None else f"{c['images_per_s']:.1f}",
            f"{p['knn_top1']:.1f}", f"{p.get('linear_top1', math.nan):.1f}",
            _dim(p, "res4"),
            _pm(s["box AP"]), _diff(s["box AP"].get("vs_random")), _diff(s["box AP"].get("vs_random_images")),
            _pm(s["box AP50"]), _pm(s["mask AP"]), _diff(s["mask AP"].get("vs_random")),
            _diff(s["mask AP"].get("vs_random_images")),
        ])
    headers = ["init", "pretrain", "img/s", "kNN top-1", "linear top-1", "res4 dim", "box AP",
               "Δ box AP [95% CI]", "Δ box AP [95% CI, seeds + images]", "box AP50", "mask AP", "Δ mask AP [95% CI]",
               "Δ mask AP [95% CI, seeds + images]"]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


def _verdict(d, baseline, noise="the seed noise"):
    """What a paired difference ``d`` (``paired_difference``) to ``baseline`` means."""
    if d["n"] < 2:
        return f"one seed: no interval, no verdict against {baseline}"
    return (f"better than {baseline} beyond {noise}" if d["low"] > 0 else
            f"worse than {baseline} beyond {noise}" if d["high"] < 0 else
            f"not distinguishable from {baseline} at this budget")


def _judged(line, d, both, baseline):
    """``line`` + its verdict: on ``both`` (the interval over seeds and evaluation images) when
    there is one, since both noise sources move a difference; else on the seeds' interval ``d``."""
    noise = "the seed noise"
    if both and both["n"] > 1:
        line += (f", [{both['low']:+.2f}, {both['high']:+.2f}] counting the sampling of the "
                 f"{both['num_images']} evaluation images too")
        d, noise = both, "the noise of seeds and evaluation images"
    return f"{line} -> {_verdict(d, baseline, noise)}."


def margin_sentence(result: Dict[str, Any], metrics: Sequence[str] = ("box AP", "mask AP")) -> str:
    """One line per method and metric saying what its margin over random init means (``_judged``);
    a metric the detector does not report (mask AP of a Faster R-CNN) gets none."""
    n = len(result["seeds"])
    lines = []
    for r in result["rows"][1:]:
        s = r["summary"]
        lines += _margin_lines(
            {m: s[m]["vs_random"] for m in metrics}, {m: s[m].get("vs_random_images") for m in metrics}, metrics,
            lambda m, d, r=r: (f"{r['init']}: {m} {d['mean']:+.2f} over random init, 95% interval "
                               f"[{d['low']:+.2f}, {d['high']:+.2f}] over {n} paired seeds"), "random init")
    return "\n".join(lines)


def _q(row, key, fmt="{:.2f}"):
    q = row.get("quality")
    if not q:
        return "-"
    s = q[key]
    if math.isnan(s["mean"]):  # precision of no kept box
        return "-"
    return fmt.format(s["mean"]) + (f" ± {fmt.format(s['std'])}" if len(s["values"]) > 1 else "")


def self_training_table(result: Dict[str, Any], metric: str = "box AP") -> str:
    """Markdown, a row per round: the teacher's AP, its pseudo-labels' precision / recall at the
    threshold and its AP on the unlabeled images, student and control AP (mean ± std over seeds)
    and the paired difference student − control with its 95% interval over seeds, and over seeds
    and evaluation images (``*``: excludes 0)."""
    table = []
    for row in result["rounds"]:
        table.append([row["round"], _pm_n(row["teacher"][metric]), _q(row, "precision"), _q(row, "recall"),
                      _q(row, "kept", "{:.0f}"), _q(row, "teacher unlabeled box AP"),
                      _pm_n(row["student"][metric]), _pm_n(row["control"][metric]), _diff(row["difference"][metric]),
                      _diff((row.get("difference_images") or {}).get(metric))])
    headers = ["round", f"teacher {metric}", f"PL precision @{result['threshold']}", "PL recall", "PL boxes",
               "teacher box AP (unlabeled)", f"student {metric}", f"control {metric}", "Δ student − control [95% CI]",
               "the same [95% CI, seeds + images]"]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


def _f(v):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def self_train_rounds_table(rows) -> str:
    """Markdown, a row per round of ``tools/self_train.py`` (``self_train``'s rows): the teacher's
    box AP, its pseudo-labels' precision / recall and box AP on the unlabeled images (when the
    unlabeled set has an evaluation-only ground truth), the student's box AP and the control's
    (when trained)."""
    table = []
    for r in range(1, len(rows)):
        teacher, student = rows[r - 1], rows[r]
        q = student.get("pseudo_labels") or {}
        table.append([r, _f(teacher.get("bbox/AP")), _f(q.get("precision")), _f(q.get("recall")),
                      q.get("kept", "-"), _f(q.get("teacher_unlabeled", {}).get("AP")), _f(student.get("bbox/AP")),
                      _f(student.get("control", {}).get("bbox/AP"))])
    thr = next((r["pseudo_labels"]["threshold"] for r in rows if r.get("pseudo_labels")), None)
    at = f" @{thr}" if isinstance(thr, float) else ""
    headers = ["round", "teacher box AP", f"PL precision{at}", "PL recall", "PL boxes", "teacher box AP (unlabeled)",
               "student box AP", "control box AP"]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


def self_training_margin(result: Dict[str, Any], metrics: Sequence[str] = ("box AP", "mask AP")) -> str:
    """One line per round and metric saying what the student's margin over its control means (none
    for a metric the detector does not report)."""
    lines = []
    for row in result["rounds"]:
        lines += _margin_lines(
            row["difference"], row.get("difference_images") or {}, metrics,
            lambda m, d, row=row: (f"round {row['round']}: student {m} {d['mean']:+.2f} over the control (same "
                                   f"start, iterations and augmentation, labeled images only), 95% interval "
                                   f"[{d['low']:+.2f}, {d['high']:+.2f}] over {d['n']} paired seeds"),
            "the control")
    return "\n".join(lines)


def _save_png(fig, path):
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pseudo_label_curves(result: Dict[str, Any], path: str) -> str:
    """PNG: pseudo-label precision and recall against the score threshold, one colour per round
    (mean over its teachers; precision is undefined where no box is kept), the threshold used marked."""
    import warnings

    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for row, colour in zip(result["rounds"], plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4):
        if not row.get("quality"):
            continue
        curves = row["quality"]["curves"]
        t = curves[0]["threshold"]
        for key, style in (("precision", "-"), ("recall", "--")):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN (not drawn)
                mean = np.nanmean(np.asarray([c[key] for c in curves], np.float64), axis=0)
            ax.plot(t, mean, style, color=colour, label=f"round {row['round']} {key}")
    ax.axvline(result["threshold"], color="gray", lw=0.8, ls=":", label="threshold used")
    ax.set_xlabel("teacher score threshold")
    ax.set_ylabel("pseudo-labels vs ground truth (IoU ≥ 0.5)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save_png(fig, path)


def plot_transfer(result: Dict[str, Any], path: str, metric: str = "box AP") -> str:
    """PNG: ``metric`` (mean, std error bars) against pretraining seconds, one marker per init."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r, marker in zip(result["rows"], "osD^v<>ph"):
        s = r["summary"][metric]
        x = 0.0 if r["pretrain"] is None else r["pretrain"]["train_s"]
        ax.errorbar([x], [s["mean"]], yerr=[s["std"]], fmt=marker, capsize=4, label=r["init"])
    ax.set_xlabel("pretraining seconds")
    ax.set_ylabel(f"{metric} after fine-tuning (mean ± std, {len(result['seeds'])} seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save_png(fig, path)
