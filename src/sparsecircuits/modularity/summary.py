"""Statistics over base models: intervals over independent units, consistency across
tasks and models, the forced-vs-emergent table and the findings sentences.

The unit of an interval is an independently trained model: in the pretrained and shuffled
regimes a pretraining checkpoint (its fine-tuning runs averaged), in scratch and random an init seed.
Fine-tuning runs of one checkpoint share its pretraining, so they are not independent; their
spread is reported as a separate component (`finetune_sd`), never as an interval.
"""

from __future__ import annotations

import math
import statistics

from ..stats import t_interval
from ..tasks.compound import FACTORS
from .config import PER_CHECKPOINT


def fmt_ci(ci: dict | None, digits: int = 2) -> str:
    if not ci:
        return "n/a"
    if ci["low"] is None:
        return f"{ci['mean']:+.{digits}f} (one independent model: no interval)"
    verdict = "" if ci["found"] else ", not found"
    return f"{ci['mean']:+.{digits}f} [{ci['low']:+.{digits}f}, {ci['high']:+.{digits}f}]{verdict}"


def interval(xs: list[float]) -> dict | None:
    """Mean with a 95% t-interval over independent units (see the module docstring); `found` says whether
    the interval excludes zero (an effect smaller than its interval is not found)."""
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return None
    if len(xs) < 2:
        return {"mean": xs[0], "low": None, "high": None, "n": 1, "found": None}
    mean, low, high = t_interval(xs)
    return {"mean": mean, "low": low, "high": high, "n": len(xs), "found": low > 0 or high < 0}


def _per_base(run: dict, structure: str, factor: str, metric: str) -> float | None:
    """One base model's value: the mean over its usable (not collapsed) mask seeds."""
    vals = []
    for r in run[structure][factor]:
        if r["status"] != "ok":
            continue
        vals.append(r[metric]["metric"] if isinstance(r.get(metric), dict) else r.get(metric))
    vals = [v for v in vals if v is not None]
    return statistics.fmean(vals) if vals else None


def _sd(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.stdev(xs) if len(xs) > 1 else None


METRICS = {
    "weights": ("subnetwork", "ablation_zero", "ablation_mean", "kept_frac", "kept"),
    "nodes": ("subnetwork", "ablation_mean", "kept_frac", "nodes", "edges"),
}


def unit_of(run: dict):
    """What makes a run independent of the others of its group (see the module docstring)."""
    return run["model"] if run["regime"] in PER_CHECKPOINT else run["base_seed"]


def mean_or_none(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def _by_unit(rs: list[dict], values: list) -> tuple[list, float | None]:
    """(one value per independent unit: the mean over its runs `rs`, whose `values` are
    given in order; the mean within-unit sd)."""
    units: dict = {}
    for run, v in zip(rs, values, strict=True):
        units.setdefault(unit_of(run), []).append(v)
    sds = [_sd(vs) for vs in units.values()]
    return [mean_or_none(vs) for vs in units.values()], mean_or_none(sds)


def summarise(runs: list[dict]) -> list[dict]:
    """Per task x model config x regime x structure x subroutine: each metric over independent
    units, with the fine-tuning spread of the pretrained regime beside it."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["task"], run["kind"], run["regime"]), []).append(run)
    rows = []
    for (task, kind, regime), rs in groups.items():
        for structure, metrics in METRICS.items():
            for factor in FACTORS:
                statuses = [r["status"] for run in rs for r in run[structure][factor]]
                row = {
                    "task": task,
                    "kind": kind,
                    "regime": regime,
                    "structure": structure,
                    "factor": factor,
                    "base_models": len(rs),
                    "units": len({unit_of(run) for run in rs}),
                    "unit": "pretraining seed" if regime in PER_CHECKPOINT else "init seed",
                    "collapsed": sum(s in ("empty", "full") for s in statuses),
                    "unreachable": sum(s == "unreachable" for s in statuses),
                    "usable": sum(s == "ok" for s in statuses),
                }
                per_unit, spread = {}, {}
                for m in metrics:
                    per_unit[m], spread[m] = _by_unit(
                        rs, [_per_base(run, structure, factor, m) for run in rs]
                    )
                    row[m] = interval(per_unit[m])
                stability = [run["stability"][structure][factor] for run in rs]
                row["stability"] = interval(_by_unit(rs, stability)[0])
                overlap = [run["overlap_ab"][structure] for run in rs]
                row["overlap_ab"] = interval(_by_unit(rs, overlap)[0])
                row["spread"] = {m: _sd(per_unit[m]) for m in ("subnetwork", "ablation_mean")}
                if regime in PER_CHECKPOINT:
                    row["finetune_sd"] = {m: spread[m] for m in ("subnetwork", "ablation_mean")}
                rows.append(row)
    return rows


def consistency(summary: list[dict]) -> list[dict]:
    """Per regime x structure: how consistent the effects are across tasks, models (shapes,
    kinds) and subroutines. Each unit is one (task, model, subroutine) mean over base seeds;
    `agree` is the fraction with the modular sign (subnetwork > 0, ablation < 0)."""
    rows = []
    for regime in sorted({r["regime"] for r in summary}):
        for structure in METRICS:
            units = [r for r in summary if (r["regime"], r["structure"]) == (regime, structure)]
            row = {"regime": regime, "structure": structure, "units": len(units)}
            for metric, sign in (("subnetwork", 1), ("ablation_mean", -1)):
                xs = [u[metric]["mean"] for u in units if u.get(metric)]
                row[metric] = {
                    "mean": statistics.fmean(xs) if xs else None,
                    "sd": statistics.stdev(xs) if len(xs) > 1 else None,
                    "agree": sum(sign * x > 0 for x in xs) / len(xs) if xs else None,
                    "found": sum(bool(u[metric]["found"]) for u in units if u.get(metric)),
                }
            rows.append(row)
    return rows


def forced_vs_emergent(runs: list[dict], summary: list[dict], tol: float = 0.05) -> list[dict]:
    """Dense (emergent) and weight-sparse (forced) models side by side, per task, for the
    pretrained regime: accuracy, structure size, selectivity, A/B overlap, stability.
    `matched` says whether the compound accuracies agree within `tol`."""
    rows = []
    for task in sorted({r["task"] for r in runs}):
        accs: dict[str, list[float]] = {}
        for run in runs:
            if run["task"] == task and run["regime"] == "pretrained":
                accs.setdefault(run["kind"], []).append(run["compound_accuracy"])
        means = {k: statistics.fmean(v) for k, v in accs.items()}
        matched = bool(means) and max(means.values()) - min(means.values()) <= tol
        for kind, acc in sorted(means.items()):
            for structure in METRICS:
                s = {
                    r["factor"]: r
                    for r in summary
                    if (r["task"], r["kind"], r["regime"], r["structure"])
                    == (task, kind, "pretrained", structure)
                }
                if not s:
                    continue

                def avg(metric, s=s):
                    vals = [s[f][metric]["mean"] for f in FACTORS if s[f].get(metric)]
                    return statistics.fmean(vals) if vals else None

                rows.append(
                    {
                        "task": task,
                        "kind": kind,
                        "structure": structure,
                        "compound_accuracy": acc,
                        "matched_accuracy": matched,
                        "size": avg("kept" if structure == "weights" else "nodes"),
                        "kept_frac": avg("kept_frac"),
                        "subnetwork_metric": avg("subnetwork"),
                        "ablation_metric": avg("ablation_mean"),
                        "overlap_ab": s["a"]["overlap_ab"]["mean"]
                        if s["a"]["overlap_ab"]
                        else None,
                        "stability": avg("stability"),
                    }
                )
    return rows


def findings(summary: list[dict]) -> list[str]:
    """One sentence per task x structure x regime: the subroutine metrics of every model kind,
    with intervals over base models, both subroutines pooled by their mean."""
    lines = []
    keys = sorted({(r["task"], r["structure"], r["regime"]) for r in summary})
    for task, structure, regime in keys:
        rows = [
            r
            for r in summary
            if (r["task"], r["structure"], r["regime"]) == (task, structure, regime)
        ]
        parts = []
        for kind in sorted({r["kind"] for r in rows}):
            per = [r for r in rows if r["kind"] == kind]
            if not any(r["subnetwork"] for r in per):
                parts.append(f"{kind}: no usable structure")
                continue
            parts.append(
                f"{kind}: "
                + "; ".join(
                    f"{r['factor'].upper()} subnetwork {fmt_ci(r['subnetwork'])}, "
                    f"ablation {fmt_ci(r['ablation_mean'])}"
                    for r in per
                    if r["subnetwork"]
                )
            )
        lines.append(f"{task}, {regime}, {structure}: " + " | ".join(parts))
    return lines
