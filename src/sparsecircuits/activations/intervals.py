"""Statistics of the analysis: bootstrap intervals over inputs, seed groups, verdicts.

Each effect carries a two-sided p-value (bootstrap over inputs, or a t-test across >= 3
seeds). Per-leaf `verdict`s are uncorrected; the report's verdicts (`holm_verdicts`) are Holm-
corrected over a group's headline comparisons and say, for a null, whether the interval is
narrow enough to rule out the effect size expected at small scale (EXPECTED_EFFECT)."""

from __future__ import annotations

import functools
import math

import torch

from ..stats import holm, t_interval, t_pvalue
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


def _r(x: float | torch.Tensor) -> float:
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


def _boot_p(samples: torch.Tensor) -> float:
    """Two-sided bootstrap p-value of 0: twice the smaller tail, at least 1 / draws."""
    n = samples.numel()
    tail = min(int((samples <= 0).sum()), int((samples >= 0).sum()))
    return min(1.0, max(2 * tail, 1) / n)


def bootstrap_diff(b: torch.Tensor, a: torch.Tensor, n_boot: int = 1000, seed: int = 0):
    """(mean(b) - mean(a), low, high, p): inputs of the two sets resampled independently,
    which is conservative when they are paired."""
    a, b = _not_nan(a), _not_nan(b)
    if a.numel() == 0 or b.numel() == 0:
        return (math.nan, math.nan, math.nan, math.nan)
    diffs = _boot_means(b, n_boot, seed + 1) - _boot_means(a, n_boot, seed)
    lo, hi = _interval(diffs, 0.95)
    return (_r(b.mean() - a.mean()), _r(lo), _r(hi), _r(_boot_p(diffs)))


def length_controlled_diff(
    b: torch.Tensor, a: torch.Tensor, len_b: torch.Tensor, len_a: torch.Tensor, n_boot: int = 1000
):
    """(d, low, high, p) of set b vs set a with prompt length regressed out: d is the set
    coefficient of value ~ 1 + is_b + length (least squares), intervals by resampling inputs
    within each set. NaN when the two sets' length ranges do not overlap (the control would
    extrapolate) or all lengths are equal within a set and across (no length to control)."""
    keep_a, keep_b = ~torch.isnan(a), ~torch.isnan(b)
    a, b = a[keep_a].double(), b[keep_b].double()
    la, lb = len_a[keep_a].double(), len_b[keep_b].double()
    nan = (math.nan, math.nan, math.nan, math.nan)
    if a.numel() < 2 or b.numel() < 2 or max(la.min(), lb.min()) > min(la.max(), lb.max()):
        return nan

    def coef(ia: torch.Tensor, ib: torch.Tensor) -> torch.Tensor:  # [draws, n] indices
        y = torch.cat([a[ia], b[ib]], 1)
        length = torch.cat([la[ia], lb[ib]], 1)
        is_b = torch.cat([torch.zeros_like(la[ia]), torch.ones_like(lb[ib])], 1)
        x = torch.stack([torch.ones_like(y), is_b, length - length.mean(1, keepdim=True)], -1)
        return torch.linalg.pinv(x) @ y.unsqueeze(-1)

    d = float(coef(torch.arange(a.numel())[None], torch.arange(b.numel())[None])[0, 1, 0])
    boot = coef(_resample_index(a.numel(), n_boot, 0), _resample_index(b.numel(), n_boot, 1))
    boot = boot[:, 1, 0]
    lo, hi = _interval(boot, 0.95)
    return (_r(d), _r(lo), _r(hi), _r(_boot_p(boot)))


MIN_SEEDS = 3


def combine_seeds(stats: list) -> dict:
    """One (mean, low, high[, p]) per seed -> the group's mean, interval and p: a t interval
    (and t-test) across seeds when there are >= MIN_SEEDS. With fewer, no between-seed
    interval exists: the first seed's own interval over inputs is reported as one seed's,
    and every seed's mean is kept in `seed_means`."""
    stats = [s for s in stats if not math.isnan(s[0])]
    if not stats:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "p": math.nan, "n_seeds": 0}
    means = [s[0] for s in stats]
    if len(stats) >= MIN_SEEDS:
        m, lo, hi = t_interval(means)
        p = t_pvalue(means)
        how = f"t interval across {len(means)} seeds"
    else:
        m, lo, hi = stats[0][:3]
        p = stats[0][3] if len(stats[0]) > 3 else math.nan
        how = "one seed (interval over its inputs)"
    return {
        "mean": _r(m),
        "low": _r(lo),
        "high": _r(hi),
        "p": p if math.isnan(p) else _r(p),
        "n_seeds": len(stats),
        "interval": how,
        "seed_means": [_r(x) for x in means],
    }


def _direction(metric: str, up: bool) -> str:
    sparser = SPARSER.get(metric)
    if sparser is None:
        return "found: higher" if up else "found: lower"
    return "found: sparser" if up == (sparser > 0) else "found: denser"


def verdict(metric: str, low: float, high: float) -> str:
    """ "not found" when the interval contains 0; else which way the effect goes
    (uncorrected for multiple comparisons: see `holm_verdicts`)."""
    if math.isnan(low) or math.isnan(high):
        return "not measured"
    if low <= 0 <= high:
        return "not found"
    return _direction(metric, low > 0)


# The effect a null must be able to rule out: top-10% energy in / out of distribution differs
# by about 0.002 at small scale (reference note); no such figure exists for the other metrics.
EXPECTED_EFFECT = {"top10_energy": 0.002}


def holm_verdicts(metric: str, effects: list[dict], alpha: float = 0.05) -> list[dict]:
    """Holm-corrected verdicts for one family of effects ({diff or mean, low, high, p}):
    each comes back with p_holm, the interval's half-width and a verdict. A null whose
    half-width exceeds the expected effect reads "not resolvable at this n"."""
    adjusted = holm([e.get("p", math.nan) for e in effects])
    expected = EXPECTED_EFFECT.get(metric)
    out = []
    for e, p in zip(effects, adjusted, strict=True):
        half = (e["high"] - e["low"]) / 2
        if math.isnan(p):
            v = "not measured"
        elif p < alpha:
            v = _direction(metric, (e["diff"] if "diff" in e else e["mean"]) > 0)
        elif expected is not None and half > expected:
            v = f"not resolvable at this n (half-width {half:.4f} > {expected})"
        elif expected is not None:
            v = f"not found (interval rules out +-{expected})"
        else:
            v = "not found"
        out.append(
            e | {"p_holm": _r(p) if not math.isnan(p) else p, "half_width": _r(half), "verdict": v}
        )
    return out
