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


# One-sided 0.80 Student t quantiles for 1..30 degrees of freedom (power at 80%).
_T80 = (
    (1.376, 1.061, 0.978, 0.941, 0.920, 0.906, 0.896, 0.889, 0.883, 0.879)
    + (0.876, 0.873, 0.870, 0.868, 0.866, 0.865, 0.863, 0.862, 0.861, 0.860)
    + (0.859, 0.858, 0.858, 0.857, 0.856, 0.856, 0.855, 0.855, 0.854, 0.854)
)


def t95(df: int) -> float:
    """The two-sided 95% Student t quantile (df >= 1; beyond 30 the value at 30)."""
    return _T95[min(df, len(_T95)) - 1]


def t_interval(xs: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% t-interval of the mean of independent values (>= 2)."""
    if len(xs) < 2:
        raise ValueError("a t-interval needs at least two values")
    mean = statistics.fmean(xs)
    half = t95(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    return mean, mean - half, mean + half


def detectable(sd: float, n: int) -> float:
    """The smallest true mean shift a two-sided 5% one-sample t-test over `n` independent
    values of standard deviation `sd` detects with 80% power (the usual approximation
    (t_0.975 + t_0.80) * sd / sqrt(n), df = n - 1); inf below two values."""
    if n < 2:
        return math.inf
    return (t95(n - 1) + _T80[min(n - 1, len(_T80)) - 1]) * sd / math.sqrt(n)


def units_needed(sd: float, effect: float, most: int = 1000) -> int | None:
    """The fewest independent values at which `effect` is detectable (see `detectable`);
    None if more than `most` (or no effect) would be needed."""
    if effect <= 0:
        return None
    return next((n for n in range(2, most + 1) if detectable(sd, n) <= effect), None)


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
