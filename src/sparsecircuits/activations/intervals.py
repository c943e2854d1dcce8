"""Statistics of the analysis: bootstrap intervals over inputs, seed groups, verdicts."""

from __future__ import annotations

import functools
import math
import statistics

import torch

from ..stats import t_interval
from .metrics import SPARSER

# --- statistics ------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _resample_index(n: int, n_boot: int, seed: int) -> torch.Tensor:
    # the same seeded draw for every metric: drawing it once per size saves most of the time
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (n_boot, n), generator=g)


def _boot_means(v: torch.Tensor, n_boot: int, seed: int) -> torch.Tensor:
    return v[_resample_index(v.numel(), n_boot, seed)].mean(1)


def _interval(samples: torch.Tensor, level: float) -> tuple[float, float]:
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.double)
    lo, hi = torch.quantile(samples, q)
    return float(lo), float(hi)


def _r(x: float) -> float:
    return float(f"{x:.6g}")  # six digits: the JSON stays small, the effects are ~1e-3


def _not_nan(values: torch.Tensor) -> torch.Tensor:
    return values[~torch.isnan(values)].double()


def bootstrap_ci(values: torch.Tensor, n_boot: int = 1000, seed: int = 0, level: float = 0.95):
    """(mean, low, high) of the mean over inputs, by resampling inputs."""
    v = _not_nan(values)
    if v.numel() == 0:
        return (math.nan, math.nan, math.nan)
    lo, hi = _interval(_boot_means(v, n_boot, seed), level)
    return (_r(v.mean()), _r(lo), _r(hi))


def bootstrap_diff(b: torch.Tensor, a: torch.Tensor, n_boot: int = 1000, seed: int = 0):
    """(mean(b) - mean(a), low, high): inputs of the two sets resampled independently, which
    is conservative when they are paired."""
    a, b = _not_nan(a), _not_nan(b)
    if a.numel() == 0 or b.numel() == 0:
        return (math.nan, math.nan, math.nan)
    diffs = _boot_means(b, n_boot, seed + 1) - _boot_means(a, n_boot, seed)
    lo, hi = _interval(diffs, 0.95)
    return (_r(b.mean() - a.mean()), _r(lo), _r(hi))


MIN_SEEDS = 3


def combine_seeds(stats: list) -> dict:
    """One (mean, low, high) per seed -> the group's mean and interval: a t interval across
    seeds when there are >= MIN_SEEDS, else the union of the seeds' input intervals (a seed
    disagreeing in sign then puts 0 inside)."""
    stats = [s for s in stats if not math.isnan(s[0])]
    if not stats:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n_seeds": 0}
    means = [s[0] for s in stats]
    m = statistics.fmean(means)
    if len(stats) >= MIN_SEEDS:
        m, lo, hi = t_interval(means)
        how = f"t interval across {len(means)} seeds"
    else:
        lo, hi = min(s[1] for s in stats), max(s[2] for s in stats)
        how = "inputs only" + (" (union over 2 seeds)" if len(stats) == 2 else " (1 seed)")
    return {"mean": _r(m), "low": _r(lo), "high": _r(hi), "n_seeds": len(stats), "interval": how}


def verdict(metric: str, low: float, high: float) -> str:
    """ "not found" when the interval contains 0; else which way the effect goes."""
    if math.isnan(low) or math.isnan(high):
        return "not measured"
    if low <= 0 <= high:
        return "not found"
    up = low > 0
    if SPARSER.get(metric) is None:
        return "found: higher" if up else "found: lower"
    return "found: sparser" if up == (SPARSER[metric] > 0) else "found: denser"
