"""Statistics of runs: Welch's t-test and the t-interval of a mean, the two tests archsearch's verdicts rest on."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["ALPHA", "t_interval", "welch"]

ALPHA = 0.05


def welch(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of Welch's t-test; None with fewer than two runs on a side (no variance to test with)."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    if len(set(a)) == 1 and len(set(b)) == 1:
        return 0.0 if a[0] != b[0] else 1.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def t_interval(mean: float, std: float, n: int, level: float = 0.95) -> tuple[float, float] | None:
    """The ``level`` t-interval of a mean of ``n`` runs with sample standard deviation ``std`` (None for one run)."""
    if n < 2:
        return None
    from scipy import stats

    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half
