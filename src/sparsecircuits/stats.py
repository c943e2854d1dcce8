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


def t_pvalue(xs: list[float]) -> float:
    """Two-sided p-value of the one-sample t-test of mean 0 (>= 2 values): the Student t
    density integrated numerically (Simpson), accurate to ~1e-6, enough for Holm at 0.05."""
    n = len(xs)
    if n < 2:
        raise ValueError("a t-test needs at least two values")
    sd = statistics.stdev(xs)
    if sd == 0:
        return 0.0 if statistics.fmean(xs) != 0 else 1.0
    t = abs(statistics.fmean(xs)) / (sd / math.sqrt(n))
    df = n - 1
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))

    def pdf(x):
        return c * (1 + x * x / df) ** (-(df + 1) / 2)

    steps = 2000
    h = t / steps
    inner = sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, steps))
    central = h / 3 * (pdf(0) + inner + pdf(t))  # P(0 < T < t)
    return max(0.0, min(1.0, 1 - 2 * central))


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values (family-wise error control), in the input order; NaN stays NaN."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    m = len(order)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for k, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - k) * p))
        out[i] = running
    return out
