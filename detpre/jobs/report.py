"""Tables and plots of job results (strings and files; ``tools/`` prints them)."""
import math
from typing import Any, Dict, Sequence

from tabulate import tabulate

from detpre.utils.io import atomic_open

__all__ = ["format_value", "format_mean_std", "format_difference", "format_widest", "transfer_table", "plot_transfer",
           "margin_sentence", "self_training_table", "self_training_margin", "plot_pseudo_label_curves",
           "self_train_rounds_table"]


def format_value(v, fmt="{:.2f}"):
    """``v`` formatted; n/a where it was not measured (None or nan)."""
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def format_mean_std(s, fmt="{:.2f}"):
    """Mean ± std over seeds; the mean alone for one value; n/a where nothing was measured."""
    if not s or s.get("mean") is None or math.isnan(s["mean"]):
        return "n/a"
    n = s.get("n", len(s.get("values") or ()))
    return format_value(s["mean"], fmt) + ("" if n < 2 else f" ± {format_value(s['std'], fmt.replace('+', ''))}")


def format_difference(d, fmt="{:+.2f}"):
    """A paired difference ``+m [low, high]`` (`` *``: the interval excludes 0); the mean alone
    where there is no interval (one seed); n/a where nothing was measured."""
    if not d or d.get("mean") is None or math.isnan(d["mean"]):
        return "n/a"
    if d.get("low") is None or math.isnan(d["low"]):
        return fmt.format(d["mean"])
    return f"{fmt.format(d['mean'])} [{fmt.format(d['low'])}, {fmt.format(d['high'])}]" + (
        " *" if d.get("excludes_zero") else "")


def format_widest(s, key):
    """``s[key]``'s difference over seeds + images (``s[key + "_images"]``) where that interval
    exists, else over seeds."""
    d = s.get(f"{key}_images")
    return format_difference(d if d and not math.isnan(d.get("low", math.nan)) else s.get(key))


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


MIN_EVAL_IMAGES = 50  # fewer: a bootstrap over the evaluation images barely knows their spread


def _measured(s):
    """Whether a summary entry (``_summary``'s) holds a number: mask AP of a detector without a mask
    head is NaN in every run."""
    return any(not math.isnan(v) for v in s.get("values", ()))


def _probe_cell(p, key):
    """A probe's top-1 (None: no measurement, the probe cannot tell backbones apart)."""
    v = p.get(key)
    return None if v is None or p.get("cannot_discriminate") else f"{v:.1f}"


def _ap_cells(r, metric):
    """Mean ± std, Δ [seeds], Δ [seeds + images] of ``metric`` (None where nothing was measured:
    no run reported it, no interval over the images; "-" for random init against itself)."""
    s = r["summary"][metric]
    if not _measured(s):
        return [None, None, None]
    if "vs_random" not in s:
        return [format_mean_std(s), "-", "-"]
    both = s.get("vs_random_images")
    return [format_mean_std(s), format_difference(s["vs_random"]),
            format_difference(both) if both and not math.isnan(both["low"]) else None]


def _control_cell(r, metric):
    """Δ ``metric`` to the row's equal-compute control (random init given the same total iterations),
    over seeds and images where known, else over seeds; "-" for a row without a control."""
    s = r["summary"][metric]
    if "vs_control" not in s:
        return "-"
    if not _measured(s):
        return None
    return format_widest(s, "vs_control")


def _interval_lines(result):
    """What the intervals rest on: the seeds and the evaluation images, with a warning when few."""
    n = len(result["seeds"])
    images = [d["num_images"] for r in result["rows"] for s in r["summary"].values()
              for d in (s.get("vs_random_images"),) if d]
    num = max(images, default=None)
    if n < 2:
        lines = [f"one seed{f'; {num} evaluation images' if num else ''}: each Δ is one pair of runs, no interval "
                 "(the seed noise is unknown)"]
    else:
        lines = [f"95% intervals over {n} paired seeds" + (f"; seeds + images: over the seeds and the {num} "
                                                           "evaluation images (a bootstrap)" if num else "")]
    if num and num < MIN_EVAL_IMAGES:
        lines.append(f"warning: only {num} evaluation images (< {MIN_EVAL_IMAGES}): " + (
            "the interval over them rests on few images and understates their noise" if n > 1 else
            "their AP moves with every image") + "; evaluate on more for a verdict")
    return lines


def transfer_table(result: Dict[str, Any]) -> str:
    """Markdown: per init, pretraining cost, probe top-1, res4's effective dimension (a collapse
    shows there: ``detpre.evaluation.feature_dimension``), AP mean ± std over seeds and the paired
    difference to random init with its 95% interval over seeds, and for box and mask AP over seeds
    and evaluation images (``*``: the interval excludes 0). Lines above the table say how many seeds
    and images the intervals rest on; a column nothing was measured for (mask AP without a mask head,
    a probe on one class) is left out with a line saying why; a single missing value reads ``n/a``."""
    rows = result["rows"]
    cells = []
    for r in rows:
        c, p = r["pretrain"], r["probe"]
        cells.append([
            r["init"],
            "-" if c is None else (f"{c['iters']} it" if math.isnan(c["train_s"]) else
                                   f"{c['train_s']:.0f}s / {c['iters']} it"),
            "-" if c is None else (None if math.isnan(c["images_per_s"]) else f"{c['images_per_s']:.1f}"),
            _probe_cell(p, "knn_top1"), _probe_cell(p, "linear_top1"), _dim(p, "res4"),
            *_ap_cells(r, "box AP"), _ap_cells(r, "box AP50")[0], *_ap_cells(r, "mask AP"),
            _control_cell(r, "box AP"), _control_cell(r, "mask AP"),
        ])
    headers = ["init", "pretrain", "img/s", "kNN top-1", "linear top-1", "res4 dim", "box AP",
               "Δ box AP [95% CI]", "Δ box AP [95% CI, seeds + images]", "box AP50", "mask AP", "Δ mask AP [95% CI]",
               "Δ mask AP [95% CI, seeds + images]", "Δ box AP vs same-total control",
               "Δ mask AP vs same-total control"]
    probe = next((r["probe"]["cannot_discriminate"] for r in rows if r["probe"].get("cannot_discriminate")),
                 "not measured")
    mask = "mask AP: no run reported it (the detector has no mask head)"
    images = ("seeds + images: one seed, no interval" if len(result["seeds"]) < 2 else
              "seeds + images: no interval over the evaluation images (no COCO json of them, or a run without "
              "its final results file)")
    no_mask = not any(_measured(r["summary"]["mask AP"]) for r in rows)
    why = {"img/s": "pretraining seconds and img/s: no iteration time logged (too few iterations)",
           "kNN top-1": f"kNN / linear top-1: {probe}", "linear top-1": f"kNN / linear top-1: {probe}",
           "Δ box AP [95% CI, seeds + images]": images, "mask AP": mask, "Δ mask AP [95% CI]": mask,
           "Δ mask AP [95% CI, seeds + images]": mask if no_mask else images,
           "Δ box AP vs same-total control": "", "Δ mask AP vs same-total control": mask if no_mask else ""}
    keep = [j for j, h in enumerate(headers) if h not in why or any(row[j] not in (None, "-") for row in cells)]
    # (no control column without a method that has one: nothing was left unmeasured)
    dropped = dict.fromkeys(why[h] for j, h in enumerate(headers) if j not in keep and why[h])
    missing = dict.fromkeys(why.get(headers[j], f"{headers[j]}: not measured") for j in keep
                            if any(row[j] is None for row in cells))
    table = tabulate([["n/a" if row[j] is None else row[j] for j in keep] for row in cells],
                     headers=[headers[j] for j in keep], tablefmt="github", disable_numparse=True)
    controls = [f"{r['init']}: random init fine-tuned {r['finetune_iters']} iterations, the pretraining + "
                f"fine-tuning iterations of {', '.join(r['control_for'])} (trained on the labels it is judged on)"
                for r in rows if r.get("control_for")]
    return "\n".join([*_interval_lines(result), *controls, *(f"not shown: {w}" for w in dropped),
                      *(f"n/a: {w}" for w in missing), table])


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
                 f"{both['num_images']} evaluation images too"
                 + (" (few images: that part of the interval is itself uncertain)"
                    if both["num_images"] < MIN_EVAL_IMAGES else ""))
        d, noise = both, "the noise of seeds and evaluation images"
    return f"{line} -> {_verdict(d, baseline, noise)}."


def margin_sentence(result: Dict[str, Any], metrics: Sequence[str] = ("box AP", "mask AP")) -> str:
    """One line per method and metric saying what its margin over random init means (``_judged``),
    and for a method trained on the labels it is judged on, what its margin over random init given
    the same total iterations means; a metric the detector does not report gets none."""
    n = len(result["seeds"])

    def lines_of(r, key, over, baseline):
        s = r["summary"]
        return _margin_lines(
            {m: s[m][key] for m in metrics}, {m: s[m].get(f"{key}_images") for m in metrics}, metrics,
            lambda m, d: f"{r['init']}: {m} {d['mean']:+.2f} over {over}" + (
                f", 95% interval [{d['low']:+.2f}, {d['high']:+.2f}] over {n} paired seeds" if n > 1 else
                " on one seed"), baseline)

    lines, controls = [], [r for r in result["rows"][1:] if r.get("control_for")]
    for r in result["rows"][1:]:
        if r in controls:
            continue
        lines += lines_of(r, "vs_random", "random init", "random init")
        if "control" in r:
            lines += lines_of(r, "vs_control", f"{r['control']} (random init given the same total iterations)",
                              r["control"])
    for r in controls:
        lines += lines_of(r, "vs_random", "random init (what the extra iterations alone give)", "random init")
    return "\n".join(lines)


def _q(row, key, fmt="{:.2f}"):
    q = row.get("quality")
    return format_mean_std(q.get(key), fmt) if q else "-"


def self_training_table(result: Dict[str, Any], metric: str = "box AP") -> str:
    """Markdown, a row per round: the teacher's AP, its pseudo-labels' precision / recall at the
    threshold (also with classes ignored: boxes that find an object) and its AP on the unlabeled
    images, student and control AP (mean ± std over seeds)
    and the paired difference student − control with its 95% interval over seeds, and over seeds
    and evaluation images (``*``: excludes 0)."""
    table = []
    for row in result["rounds"]:
        table.append([row["round"], format_mean_std(row["teacher"][metric]), _q(row, "precision"),
                      _q(row, "precision (any class)"), _q(row, "recall"), _q(row, "kept", "{:.0f}"),
                      _q(row, "teacher unlabeled box AP"),
                      format_mean_std(row["student"][metric]), format_mean_std(row["control"][metric]),
                      format_difference(row["difference"][metric]),
                      format_difference((row.get("difference_images") or {}).get(metric))])
    headers = ["round", f"teacher {metric}", f"PL precision @{result['threshold']}", "the same, any class",
               "PL recall", "PL boxes",
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
    """One line per round and metric saying what the student's margin over its control means (online:
    the EMA teacher's too, and which export to keep; none for a metric the detector does not report)."""
    lines = []
    # the student, and online the EMA teacher (model_final_teacher.pth), each against the same control
    models = (("student", "difference", "the control (same start, iterations and augmentation, labeled images only)"),
              ("EMA teacher", "teacher_difference", "the same control"))
    for row in result["rounds"]:
        for who, key, over in models:
            if key not in row:
                continue
            lines += _margin_lines(
                row[key], row.get(f"{key}_images") or {}, metrics,
                lambda m, d, row=row, who=who, over=over: (
                    f"round {row['round']}: {who} {m} {d['mean']:+.2f} over {over}, 95% interval "
                    f"[{d['low']:+.2f}, {d['high']:+.2f}] over {d['n']} paired seeds"),
                "the control")
        if "teacher_difference" in row:
            lines.append(_weights_to_keep(row))
    return "\n".join(lines)


def _weights_to_keep(row, metric="box AP"):
    """Online mode's export advice, from the measured AP of the EMA teacher and the student."""
    t, s = row["online_teacher"][metric]["mean"], row["student"][metric]["mean"]
    if math.isnan(t) or math.isnan(s):
        return (f"round {row['round']}: which export to keep: not measured (the EMA teacher or the student "
                f"has no {metric})")
    keep, other = (("model_final_teacher.pth (the EMA teacher)", "the student") if t >= s else
                   ("model_final_student.pth (the student)", "the EMA teacher"))
    return (f"round {row['round']}: keep {keep}: {metric} {max(t, s):.2f} against {min(t, s):.2f} for {other} "
            "(mean over seeds)")


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
