"""
Seeds and intervals: a fine-tuning AP is one draw of a noisy process, so every comparison of
two initializations is made over S seeds, paired by seed (same data order, same head init).
"""
import math
import statistics
from typing import Any, Dict, Sequence, Tuple

__all__ = ["mean_std", "paired_difference", "t_quantile"]


def t_quantile(df: int, confidence: float = 0.95) -> float:
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
