"""Tables and plots of job results (strings and files; ``tools/`` prints them)."""
import math
from typing import Any, Dict

from tabulate import tabulate

from detpre.utils.io import atomic_open

__all__ = ["transfer_table", "plot_transfer", "margin_sentence"]


def _pm(s):
    return f"{s['mean']:.2f} ± {s['std']:.2f}"


def _diff(d):
    if d is None:
        return "-"
    return f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]" + (" *" if d["excludes_zero"] else "")


def transfer_table(result: Dict[str, Any]) -> str:
    """Markdown: per init, pretraining cost, probe top-1, AP mean ± std over seeds and the paired
    difference to random init with its 95% interval (``*``: the interval excludes 0)."""
    table = []
    for r in result["rows"]:
        c, p, s = r["pretrain"], r["probe"], r["summary"]
        table.append([
            r["init"],
            "-" if c is None else f"{c['train_s']:.0f}s / {c['iters']} it",
            "-" if c is None else f"{c['images_per_s']:.1f}",
            f"{p['knn_top1']:.1f}", f"{p.get('linear_top1', math.nan):.1f}",
            _pm(s["box AP"]), _diff(s["box AP"].get("vs_random")),
            _pm(s["box AP50"]), _pm(s["mask AP"]), _diff(s["mask AP"].get("vs_random")),
        ])
    headers = ["init", "pretrain", "img/s", "kNN top-1", "linear top-1", "box AP",
               "Δ box AP [95% CI]", "box AP50", "mask AP", "Δ mask AP [95% CI]"]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


def margin_sentence(result: Dict[str, Any], metric: str = "box AP") -> str:
    """One line per method saying what its margin over random init means."""
    n = len(result["seeds"])
    lines = []
    for r in result["rows"][1:]:
        d = r["summary"][metric]["vs_random"]
        verdict = ("better than random init beyond the seed noise" if d["low"] > 0 else
                   "worse than random init beyond the seed noise" if d["high"] < 0 else
                   "not distinguishable from random init at this budget")
        lines.append(f"{r['init']}: {metric} {d['mean']:+.2f} over random init, 95% interval "
                     f"[{d['low']:+.2f}, {d['high']:+.2f}] over {n} paired seeds -> {verdict}.")
    return "\n".join(lines)


def plot_transfer(result: Dict[str, Any], path: str, metric: str = "box AP") -> str:
    """PNG: ``metric`` (mean, std error bars) against pretraining seconds, one marker per init."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r, marker in zip(result["rows"], "osD^v<>ph"):
        s = r["summary"][metric]
        x = 0.0 if r["pretrain"] is None else r["pretrain"]["train_s"]
        ax.errorbar([x], [s["mean"]], yerr=[s["std"]], fmt=marker, capsize=4, label=r["init"])
    ax.set_xlabel("pretraining seconds")
    ax.set_ylabel(f"{metric} after fine-tuning (mean ± std, {len(result['seeds'])} seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path
