"""Dense and sparse models compared at the same held-out loss, one estimate per
pretraining seed (the independent unit), intervals across seeds.

    seed_estimate   the mean of one value per seed, its 95% t-interval (df = seeds - 1) and
                    the t-test p of no effect; log values (log ratios) come back as ratios
    overlap         where the dense and sparse curves overlap in held-out loss, per seed
                    and in every seed, and which models (seed means) lie inside
    at_losses       a measure read on both curves at fixed held-out losses inside that
                    overlap: per seed, the dense - sparse contrast averaged over tasks; and
                    how the contrast changes with loss (a slope per seed)
    pareto          the sparse Pareto curve: over every sparse model of a seed (density
                    and width axes), those no other model beats on both loss and size

A curve is the models of one role and seed with a value for the task, as (held-out loss,
value) points; a reading is linear on the segment whose ends bracket the loss, and only
readings inside both curves count (no extrapolation).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

from ..stats import detectable, t_interval, t_pvalue, units_needed
from ..study_results import ModelRow

Point = tuple[float, float, str]  # (held-out loss, value, model id)
Values = dict[tuple[str, str], float]  # (model id, task) -> value


def seed_estimate(per_seed: dict[int, float], log: bool = False) -> dict | None:
    """Mean over seeds of one value per seed with its 95% t-interval and p (>= 2 seeds;
    one seed gives the value alone). `log`: the values are logs of ratios, and value and
    interval are reported as ratios (the mean is then a geometric mean)."""
    if not per_seed:
        return None
    xs = [per_seed[s] for s in sorted(per_seed)]
    back = math.exp if log else float
    out = {
        "value": back(statistics.fmean(xs)),
        "low": None,
        "high": None,
        "n": len(xs),
        "n_seeds": len(xs),
        "df": len(xs) - 1,
        "sd": None,
        "p": None,
        "log": log,
        "per_seed": {str(s): back(v) for s, v in sorted(per_seed.items())},
        "method": "t across seeds",
    }
    if len(xs) >= 2:
        _, low, high = t_interval(xs)
        out.update(low=back(low), high=back(high), sd=statistics.stdev(xs), p=t_pvalue(xs))
    return out


def power(est: dict | None, effects: tuple[float, ...] = (1.5, 2.0)) -> dict | None:
    """What a seed-level estimate could detect: the smallest effect found with 80% power
    at its seeds and spread (two-sided 5% t-test), and the seeds needed for each of
    `effects` (ratios for a log estimate, differences otherwise) at that spread."""
    if est is None or est["sd"] is None:
        return None
    to = math.log if est["log"] else float
    d = detectable(est["sd"], est["n"])
    return {
        "detectable": math.exp(d) if est["log"] else d,
        "seeds_needed": {str(e): units_needed(est["sd"], abs(to(e))) for e in effects},
    }


def interp(points: list[tuple[float, float]], loss: float) -> tuple[float, bool]:
    """A curve of (loss, value) points read at `loss`, linear on the segment whose ends
    bracket it -> (value, extrapolated?). Outside the curve's range the end segment is
    extended and the reading flagged."""
    pts = sorted(points)
    if len(pts) < 2:
        raise ValueError("a curve needs at least two points")
    if loss < pts[0][0]:
        (l0, e0), (l1, e1), extra = pts[0], pts[1], True
    elif loss > pts[-1][0]:
        (l0, e0), (l1, e1), extra = pts[-2], pts[-1], True
    else:
        i = next(i for i in range(len(pts) - 1) if pts[i + 1][0] >= loss)
        (l0, e0), (l1, e1), extra = pts[i], pts[i + 1], False
    if l1 == l0:
        return (e0 + e1) / 2, extra
    return e0 + (e1 - e0) * (loss - l0) / (l1 - l0), extra


def curve(models: list[ModelRow], values: Values, role: str, seed: int, task: str) -> list[Point]:
    """The models of `role` (dense | density | l0 | sparse: every sparse model) and
    `seed` that have a value on `task`."""
    return [
        (m.heldout_loss, values[(m.id, task)], m.id)
        for m in models
        if (role in m.roles or (role == "sparse" and m.kind == "sparse"))
        and m.seed == seed
        and m.heldout_loss is not None
        and (m.id, task) in values
    ]


def pareto(points: list[Point]) -> list[Point]:
    """The points no other point beats on both loss and value (lower is better for both),
    by loss: each kept point has a smaller value than every point of lower loss."""
    front: list[Point] = []
    for p in sorted(points):
        if not front or p[1] < front[-1][1]:
            front.append(p)
    return front


def _range(models: list[ModelRow], pred, seed: int) -> tuple[float, float] | None:
    losses = [m.heldout_loss for m in models if pred(m) and m.seed == seed]
    known = [x for x in losses if x is not None]
    return (min(known), max(known)) if len(known) >= 2 else None


def _is_dense(m: ModelRow) -> bool:
    return "dense" in m.roles


def _on_density_curve(m: ModelRow) -> bool:
    return "density" in m.roles


def config_of(model_id: str) -> str:
    """A model's id without its seed (`w64_d0.25_s3` -> `w64_d0.25`)."""
    return model_id.rsplit("_s", 1)[0]


def overlap(models: list[ModelRow]) -> dict:
    """Where the dense curve and the sparse (density) curve overlap in held-out loss: per
    seed, and the range inside every seed's overlap (where fixed losses are read); which
    configurations (seed-mean loss) lie inside that range, per kind."""
    seeds = sorted({m.seed for m in models})
    per_seed = {}
    for s in seeds:
        d, sp = _range(models, _is_dense, s), _range(models, _on_density_curve, s)
        if d and sp and max(d[0], sp[0]) < min(d[1], sp[1]):
            per_seed[str(s)] = (max(d[0], sp[0]), min(d[1], sp[1]))
    common = None
    if per_seed and len(per_seed) == len(seeds):
        low = max(lo for lo, _ in per_seed.values())
        high = min(hi for _, hi in per_seed.values())
        common = (low, high) if low < high else None
    by_config: dict[str, list[float]] = {}
    kind = {}
    for m in models:
        if m.heldout_loss is not None and (_is_dense(m) or _on_density_curve(m)):
            by_config.setdefault(config_of(m.id), []).append(m.heldout_loss)
            kind[config_of(m.id)] = "dense" if _is_dense(m) else "sparse"
    means = {c: statistics.fmean(v) for c, v in by_config.items()}
    inside = {
        k: sorted(
            c for c, x in means.items() if kind[c] == k and common and common[0] <= x <= common[1]
        )
        for k in ("dense", "sparse")
    }
    return {
        "per_seed": per_seed,
        "common": list(common) if common else None,
        "width": common[1] - common[0] if common else 0.0,
        "seed_mean_loss": means,
        "inside": inside,
    }


def fixed_losses(ov: dict, quantiles: list[float]) -> list[float]:
    """The held-out losses the curves are read at: `quantiles` of the common overlap."""
    if not ov["common"]:
        return []
    low, high = ov["common"]
    return [low + q * (high - low) for q in quantiles]


SparseCurve = Callable[[list[ModelRow], Values, int, str], list[Point]]


def density_curve(models: list[ModelRow], values: Values, seed: int, task: str) -> list[Point]:
    """The sparse side of the registered comparison: the density axis at the base width
    (each point a model, nothing chosen by its outcome)."""
    return curve(models, values, "density", seed, task)


def pareto_curve(models: list[ModelRow], values: Values, seed: int, task: str) -> list[Point]:
    """The sparse side as the paper draws it: the Pareto curve of every sparse model.
    Chosen on the outcome (the smallest circuits win), so it is reported beside the
    registered comparison, never in place of it."""
    return pareto(curve(models, values, "sparse", seed, task))


def at_losses(
    models: list[ModelRow],
    values: Values,
    tasks: list[str],
    losses: list[float],
    sparse_side: SparseCurve = density_curve,
    log: bool = True,
) -> dict:
    """The dense - sparse contrast of a measure at each fixed loss, per seed averaged over
    the tasks whose two curves both bracket that loss, with its seed-level interval; and
    per seed the least-squares slope of the contrast against loss (per 0.1 nats). `log`:
    values are sizes, compared as log ratios (dense / sparse); otherwise as differences
    (sparse - dense, e.g. a share of nodes explained)."""
    tf = (lambda x: math.log(max(x, 1e-12))) if log else float
    readings: dict[float, dict[int, list[float]]] = {L: {} for L in losses}
    for seed in sorted({m.seed for m in models}):
        for t in tasks:
            dense = [(x, tf(v)) for x, v, _ in curve(models, values, "dense", seed, t)]
            sparse = [(x, tf(v)) for x, v, _ in sparse_side(models, values, seed, t)]
            if len(dense) < 2 or len(sparse) < 2:
                continue
            for L in losses:
                d, d_out = interp(dense, L)
                s, s_out = interp(sparse, L)
                if not (d_out or s_out):
                    readings[L].setdefault(seed, []).append(d - s if log else s - d)
    points = []
    per_seed_slopes: dict[int, list[tuple[float, float]]] = {}
    for L in losses:
        per_seed = {s: statistics.fmean(v) for s, v in readings[L].items()}
        for s, v in per_seed.items():
            per_seed_slopes.setdefault(s, []).append((L, v))
        est = seed_estimate(per_seed, log)
        points.append(
            {
                "loss": L,
                "estimate": est,
                "n_readings": sum(len(v) for v in readings[L].values()),
                "power": power(est),
            }
        )
    slopes = {
        s: 0.1 * _slope(pts) for s, pts in per_seed_slopes.items() if len({x for x, _ in pts}) >= 2
    }
    return {"points": points, "per_0.1_nats": seed_estimate(slopes, log)}


def _slope(pts: list[tuple[float, float]]) -> float:
    mx = statistics.fmean(x for x, _ in pts)
    my = statistics.fmean(y for _, y in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
