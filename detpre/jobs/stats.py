"""
Seeds and intervals: a fine-tuning AP is one draw of a noisy process, so every comparison of
two initializations is made over S seeds, paired by seed (same data order, same head init).

The paired t-interval covers the seeds only; ``image_interval`` also covers the sampling of the
evaluation images (``detpre.evaluation.image_bootstrap``), from the runs' own result files.
"""
import math
import os
import statistics
from typing import Any, Dict, Optional, Sequence, Tuple

__all__ = ["mean_std", "paired_difference", "t_quantile", "ground_truth_json", "combined_interval",
           "image_interval", "image_metrics"]


def t_quantile(df: float, confidence: float = 0.95) -> float:
    """Two-sided Student-t quantile (scipy's), e.g. 4.303 for df=2 at 95%."""
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, df))


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """``(mean, sample std)``; std is 0 for a single value; both NaN for none or when a value is
    NaN (a metric a run did not report; Python 3.12's ``statistics.stdev`` fails on NaN)."""
    values = [float(v) for v in values]
    if not values or any(math.isnan(v) for v in values):
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Dict[str, Any]:
    """
    ``a - b`` paired by position (seed): mean, std, and the t-interval of the mean difference
    ``(low, high)``; ``excludes_zero`` says whether the interval lies on one side of 0.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} and {len(b)} values; pair them by seed")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    m, s = mean_std(d)
    if len(d) < 2:
        low = high = math.nan
    else:
        half = t_quantile(len(d) - 1, confidence) * s / math.sqrt(len(d))
        low, high = m - half, m + half
    return {"mean": m, "std": s, "low": low, "high": high, "n": len(d),
            "excludes_zero": bool(low > 0 or high < 0)}


def ground_truth_json(cfg, dataset: str) -> Optional[str]:
    """The COCO json ``dataset`` is evaluated against (None for a data set without one)."""
    from detectron2.data import MetadataCatalog

    from detpre.data.datasets import register_from_config

    register_from_config(cfg)
    path = getattr(MetadataCatalog.get(dataset), "json_file", None)
    return path if path and os.path.isfile(path) else None


def combined_interval(mean: float, seed_std: float, n: int, image_std: float,
                      confidence: float = 0.95) -> Tuple[float, float]:
    """
    The interval of a seed-mean difference whose standard error has a seed part, ``seed_std`` over
    ``n`` seeds (n - 1 degrees of freedom), and an image part, ``image_std`` from a bootstrap of
    many resamples (taken as known): se^2 = seed_std^2 / n + image_std^2, with Welch-Satterthwaite's
    degrees of freedom (n - 1) * se^4 / (seed_std^2 / n)^2. Never narrower than the seeds' own
    t-interval: with few seeds Welch's larger degrees of freedom can shrink it, but a second noise
    source adds no confidence. Slightly conservative besides: the seed x image interaction is in
    both parts. NaN for one seed (the training noise is unknown).
    """
    if n < 2 or math.isnan(seed_std):
        return math.nan, math.nan
    seed_var, se2 = seed_std ** 2 / n, seed_std ** 2 / n + image_std ** 2
    df = (n - 1) * se2 ** 2 / seed_var ** 2 if seed_var > 0 else math.inf
    half = max(t_quantile(df, confidence) * math.sqrt(se2), t_quantile(n - 1, confidence) * math.sqrt(seed_var))
    return mean - half, mean + half


def image_metrics(cfg) -> Tuple[Tuple[str, str], ...]:
    """The (metric, COCO iou type) pairs whose difference gets an interval over the evaluation images
    too: box AP, and mask AP for a detector with a mask head (its results carry the masks)."""
    return (("box AP", "bbox"),) + ((("mask AP", "segm"),) if cfg.MODEL.MASK_ON else ())


def image_interval(run_dirs: Sequence[str], base_dirs: Sequence[str], dataset: Optional[str],
                   gt_json: Optional[str], num_samples: int = 400, iou_type: str = "bbox",
                   run_folder: str = "inference", base_folder: str = "inference") -> Optional[Dict[str, Any]]:
    """
    The AP difference of ``run_dirs`` to ``base_dirs`` (paired by position: seeds) with a 95%
    interval over the seeds *and* the evaluation images (``detpre.evaluation.image_bootstrap``,
    ``combined_interval``), from each finished run's final
    ``inference/<dataset>/coco_instances_results.json`` (``run_folder`` / ``base_folder`` instead of
    ``inference``: an online run's EMA teacher writes ``inference_teacher``). None when a run has no such file written
    after its final checkpoint (a run copied without its file times loses it: ``cp -p``) or a
    cut-short one, or the data set has no COCO json.
    """
    from detpre.evaluation.image_bootstrap import image_bootstrap_difference, load_coco, load_matches

    if not dataset or not gt_json:
        return None
    dirs = [*run_dirs, *base_dirs]
    files = [os.path.join(d, run_folder if i < len(run_dirs) else base_folder, dataset, "coco_instances_results.json")
             for i, d in enumerate(dirs)]

    def final(d, f):  # written by the evaluation after the last checkpoint, not an earlier one
        ckpt = os.path.join(d, "model_final.pth")
        return os.path.isfile(f) and os.path.isfile(ckpt) and os.path.getmtime(f) >= os.path.getmtime(ckpt)

    if not all(final(d, f) for d, f in zip(dirs, files)):
        return None
    coco_gt = load_coco(gt_json)
    matches = [load_matches(coco_gt, f, iou_type) for f in files]
    if any(m is None for m in matches):
        return None
    n = len(run_dirs)
    r = image_bootstrap_difference(matches[:n], matches[n:], num_samples=num_samples)
    r["low"], r["high"] = combined_interval(r["mean"], r["seed_std"], r["n"], r["image_std"])
    r["excludes_zero"] = bool(r["low"] > 0 or r["high"] < 0)
    return r
