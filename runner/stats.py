"""The statistics embx's comparisons share: a paired permutation test and bootstrap intervals (scipy).

Used by the ablation report (variant against reference), the selection table (candidate against the leader)
and a run's "can this split measure it" check, so all read their numbers the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

ALPHA = 0.05
"""Significance level of every comparison (95% intervals)."""
N_RESAMPLES = 5000
"""Resamples of the permutation test and of the bootstrap."""
Z95 = 1.959964
"""Two-sided 95% quantile of the normal distribution."""


def paired_test(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Paired comparison of two systems' per-query scores (y - x).

    Uses scipy: a permutation test that flips the sign of each pair's difference (two-sided) and a
    bootstrap 95% confidence interval of the mean difference.

    Returns:
        {"mean_diff", "p_value", "ci_low", "ci_high", "n"}.

    """
    import numpy as np
    from scipy import stats

    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    diff = b - a
    out = {"mean_diff": float(diff.mean()) if len(diff) else 0.0, "n": int(len(diff))}
    if len(diff) < 2 or np.allclose(diff, 0):
        return {**out, "p_value": 1.0, "ci_low": out["mean_diff"], "ci_high": out["mean_diff"]}
    perm = stats.permutation_test(
        (a, b),
        lambda u, v, axis: np.mean(v - u, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=N_RESAMPLES,
        alternative="two-sided",
        random_state=0,
    )
    boot = stats.bootstrap(
        (diff,), np.mean, confidence_level=0.95, n_resamples=N_RESAMPLES, method="percentile", random_state=0
    )
    return {
        **out,
        "p_value": float(perm.pvalue),
        "ci_low": float(boot.confidence_interval.low),
        "ci_high": float(boot.confidence_interval.high),
    }


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean of per-query values with its 95% percentile-bootstrap interval (scipy): (mean, low, high).

    With fewer than two values, or all equal, the interval is the mean itself.
    """
    import numpy as np
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean()) if len(x) else 0.0
    if len(x) < 2 or np.allclose(x, x[0]):
        return mean, mean, mean
    boot = stats.bootstrap(
        (x,), np.mean, confidence_level=1 - ALPHA, n_resamples=N_RESAMPLES, method="percentile", random_state=0
    )
    return mean, float(boot.confidence_interval.low), float(boot.confidence_interval.high)


def queries_needed(diffs: Sequence[float]) -> int | None:
    """Queries a split needs for the 95% interval of the mean difference to exclude zero at this effect.

    The normal approximation of the bootstrap interval: half-width 1.96 x sd / sqrt(n) below |mean|, i.e.
    n > (1.96 x sd / mean)^2, with the sample's own mean and standard deviation of the per-query differences.

    Returns:
        The size, or None when the mean difference is zero (no number of queries would show it).

    """
    n = len(diffs)
    if n == 0:
        return None
    mean = sum(diffs) / n
    if abs(mean) < 1e-12:
        return None
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / max(1, n - 1))
    return max(2, math.floor((Z95 * sd / abs(mean)) ** 2) + 1)
