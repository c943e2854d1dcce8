"""Small statistics the analyses share (scipy is not a dependency)."""

from __future__ import annotations

import math
import statistics

# Two-sided 95% Student t quantiles for 1..30 degrees of freedom (more uses 30: conservative).
_T95 = (
    (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
    + (2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086)
    + (2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
)


def t_interval(xs: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% t-interval of the mean of independent values (>= 2)."""
    if len(xs) < 2:
        raise ValueError("a t-interval needs at least two values")
    mean = statistics.fmean(xs)
    half = _T95[min(len(xs) - 1, len(_T95)) - 1] * statistics.stdev(xs) / math.sqrt(len(xs))
    return mean, mean - half, mean + half
