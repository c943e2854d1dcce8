"""The study's measures, each a function of the results' rows, and the answer sentence.

    frontier_rows   per model: held-out loss and geometric-mean edges and nodes
    dense_sparse    dense vs sparse circuit size at matched held-out loss: every model read
                    on the other kind's curve where that curve brackets its loss, pooled
                    per seed; extrapolated readings kept apart
    fixed_loss      the same contrast read at fixed held-out losses inside the curves'
                    overlap (matched.py), and how it changes with loss; beside it the
                    sparse Pareto curve (chosen on the outcome, so never the headline)
    density_trend   circuit size and loss per halving of density at the base width
    width_effect    circuit size and loss per doubling of width at fixed nonzeros
    controls        each control's best circuit, and whether it comes close to the real one
    legibility      dense vs sparse: the fraction of circuit nodes (and of ablation effect)
                    one simple feature explains (explain.py), overall and at fixed losses,
                    added by study/legibility.py

The answer in words, and `analyse` that puts the measures together, are in answer.py.

Every size is measured three ways (edges, the headline as in the paper; nodes; edges per
node). The independent unit is the pretraining seed: each measure is one value per seed
(a mean over tasks and models), and its interval is a 95% t-interval across seeds (df =
seeds - 1). The registered primary verdicts (the headline edges ratio, its change with
loss, the edges trends, the legibility contrasts) are one family for Holm's correction: such
an effect is "found" when its Holm-adjusted p is below 0.05. The other verdicts are
descriptive, judged on their unadjusted 95% intervals.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

from ..stats import holm
from ..study_results import CircuitRow, EligibilityRow, FrontierRow, ModelRow
from . import matched
from .config import StudyConfig, task_label
from .matched import seed_estimate

CLOSE_FACTOR = 2.0  # a control circuit within this factor of the real one "comes close"
ALPHA = 0.05
CONTROLS = ("nonsense", "inverted", "random_init")
Models = list[ModelRow]
Circuits = list[CircuitRow]


def geomean(xs: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(max(x, 1e-12)) for x in xs))


def verdict(est: dict | None, null: float = 1.0) -> str:
    """found | not found | no interval (one seed) | not measured. With a Holm-adjusted p
    (set by `holm_family`) that decides; before it, whether the interval excludes `null`."""
    if est is None:
        return "not measured"
    if est["low"] is None:
        return "no interval"
    if est.get("p_holm") is not None:
        return "found" if est["p_holm"] < ALPHA else "not found"
    return "not found" if est["low"] <= null <= est["high"] else "found"


def split_frontier(circuits: Circuits) -> tuple[Circuits, Circuits]:
    """(circuit rows of frontier tasks, rows outside the frontier)."""
    return [c for c in circuits if c.in_frontier], [c for c in circuits if not c.in_frontier]


MEASURES = ("edges", "nodes", "edges_per_node")


def ok_values(circuits: Circuits, measure: str = "edges") -> dict[tuple[str, str], float]:
    """(model, task) -> the size of every circuit that validated: its edges, its nodes, or
    edges per node (edges = nodes x edges per node, so a trend in edges splits into the two)."""
    out = {}
    for c in circuits:
        if c.status == "ok" and c.n_edges is not None:
            edges, nodes = max(c.n_edges, 1), max(c.n_nodes or 1, 1)
            out[(c.model, c.task)] = {
                "edges": edges,
                "nodes": nodes,
                "edges_per_node": edges / nodes,
            }[measure]
    return out


def reaches(full: dict, target: float, min_accuracy: float) -> bool:
    """The target rule for one full model on one task: calibrated test loss at most the
    target and calibrated test accuracy at least `min_accuracy` (held-out test pairs)."""
    return full["loss_calibrated"] <= target and full["accuracy_calibrated"] >= min_accuracy


def frontier_tasks(cfg: StudyConfig, eligibility: list[EligibilityRow]) -> list[str]:
    """Tasks that every full model reaches (target and accuracy, on test pairs) and that no
    model's empty circuit reaches (a task done without any node has no circuit to size)."""
    return [
        t for t in cfg.tasks if all(r.reaches and not r.trivial for r in eligibility if r.task == t)
    ]


def reach_counts(cfg: StudyConfig, eligibility: list[EligibilityRow]) -> str:
    """Per task, how many full models reach it, and whether the empty circuit does too."""
    parts = []
    for t in cfg.tasks:
        rows = [r for r in eligibility if r.task == t]
        trivial = sum(r.trivial for r in rows)
        note = f", {trivial} of them with the empty circuit" if trivial else ""
        parts.append(f"{task_label(t)} {sum(r.reaches for r in rows)} of {len(rows)}{note}")
    return "; ".join(parts)


def frontier_rows(models: Models, circuits: Circuits, tasks: list[str]) -> list[FrontierRow]:
    sizes = {m: ok_values(circuits, m) for m in ("edges", "nodes")}
    rows = []
    for m in models:
        got = {k: [v[(m.id, t)] for t in tasks if (m.id, t) in v] for k, v in sizes.items()}
        rows.append(
            FrontierRow(
                **m.model_id(),
                heldout_loss=m.heldout_loss,
                model=m.id,
                roles=m.roles,
                # over the tasks this model validated; n_tasks says how many
                geomean_edges=geomean(got["edges"]) if got["edges"] else None,
                geomean_nodes=geomean(got["nodes"]) if got["nodes"] else None,
                n_tasks=len(got["edges"]),
            )
        )
    return rows


def dense_sparse(
    models: Models, circuits: Circuits, tasks: list[str], measure: str = "edges"
) -> dict:
    """Dense / sparse circuit size at matched held-out loss. Each dense model is read on
    the sparse curve (base width, all densities) and each sparse model on the dense curve
    (all widths), per task and seed; a reading inside the other curve's loss range is
    interpolated on its bracketing segment, one outside is extrapolated and kept out.
    Per seed, the geometric mean of its interpolated readings; across seeds, a t-interval."""
    values = ok_values(circuits, measure)
    readings: list[dict] = []
    for seed in sorted({m.seed for m in models}):
        for t in tasks:
            dense = matched.curve(models, values, "dense", seed, t)
            sparse = matched.curve(models, values, "density", seed, t)
            for own, other, dense_side in ((dense, sparse, True), (sparse, dense, False)):
                if len(other) < 2:
                    continue
                for loss, v, mid in own:
                    at, extra = matched.interp([(a, math.log(b)) for a, b, _ in other], loss)
                    log_ratio = math.log(v) - at if dense_side else at - math.log(v)
                    readings.append(
                        {
                            "task": t,
                            "seed": seed,
                            "model": mid,
                            "ratio": math.exp(log_ratio),
                            "extrapolated": extra,
                        }
                    )
    per_seed: dict[int, list[float]] = {}
    for r in readings:
        if not r["extrapolated"]:
            per_seed.setdefault(r["seed"], []).append(math.log(r["ratio"]))
    est = seed_estimate({s: statistics.fmean(v) for s, v in per_seed.items()}, log=True)
    extrapolated = [r["ratio"] for r in readings if r["extrapolated"]]
    return {
        "measure": measure,
        "ratio": est,
        "verdict": verdict(est),
        "power": matched.power(est),
        "readings": readings,
        "n_interpolated": sum(not r["extrapolated"] for r in readings),
        "n_extrapolated": len(extrapolated),
        "extrapolated_geomean": geomean(extrapolated) if extrapolated else None,
    }


def fixed_loss(cfg: StudyConfig, models: Models, circuits: Circuits, tasks) -> dict:
    """The dense/sparse size ratio at the fixed held-out losses (quantiles of the curves'
    overlap in every seed), for edges and nodes, against the registered sparse curve and,
    apart, the sparse Pareto curve; and the overlap itself."""
    ov = matched.overlap(models)
    losses = matched.fixed_losses(ov, cfg.loss_quantiles)
    out: dict = {"overlap": ov, "losses": losses}
    for measure in ("edges", "nodes"):
        values = ok_values(circuits, measure)
        out[measure] = matched.at_losses(models, values, tasks, losses)
        out[f"{measure}_pareto"] = matched.at_losses(
            models, values, tasks, losses, matched.pareto_curve
        )
    return out


def _axis(
    models: Models,
    circuits: Circuits,
    tasks: list[str],
    role: str,
    x_of: Callable[[ModelRow], float],
    per: float,
) -> dict:
    """Along one curve of the family (role), per seed, the factor by which circuit size
    changes when x (log2 of density or width) moves by `per`: a least-squares slope per
    task, averaged over the seed's tasks; for edges, nodes and edges per node. And held-out
    loss per x, with its measured eval noise."""
    seeds = sorted({m.seed for m in models})
    curves = {
        s: sorted((m for m in models if role in m.roles and m.seed == s), key=x_of) for s in seeds
    }
    out: dict = {}
    sizes = {measure: ok_values(circuits, measure) for measure in MEASURES}
    for measure, values in sizes.items():
        per_seed = {}
        for s, curve in curves.items():
            slopes = []
            for t in tasks:
                pts = [
                    (math.log2(x_of(m)), math.log(values[(m.id, t)]))
                    for m in curve
                    if (m.id, t) in values
                ]
                if len({x for x, _ in pts}) >= 2:
                    slopes.append(per * _slope(*zip(*pts, strict=True)))
            if slopes:
                per_seed[s] = statistics.fmean(slopes)
        est = seed_estimate(per_seed, log=True)
        out[f"{measure}_factor"] = est
        out[f"{measure}_verdict"] = verdict(est)
    loss_units = {}
    for s, curve in curves.items():
        lp = [(math.log2(x_of(m)), m.heldout_loss) for m in curve if m.heldout_loss is not None]
        if len({x for x, _ in lp}) >= 2:
            loss_units[s] = per * _slope(*zip(*lp, strict=True))
    edges, nodes = sizes["edges"], sizes["nodes"]
    points: dict = {}
    for m in models:
        if role in m.roles:
            p = points.setdefault(x_of(m), {"losses": [], "se": [], "edges": [], "nodes": []})
            p["losses"].append(m.heldout_loss)
            p["se"].append(m.heldout_loss_se or 0.0)
            p["edges"] += [edges[(m.id, t)] for t in tasks if (m.id, t) in edges]
            p["nodes"] += [nodes[(m.id, t)] for t in tasks if (m.id, t) in nodes]
    table = [
        {
            "x": x,
            "heldout_loss": statistics.fmean(p["losses"]),
            "eval_se": statistics.fmean(p["se"]),
            "geomean_edges": geomean(p["edges"]) if p["edges"] else None,
            "geomean_nodes": geomean(p["nodes"]) if p["nodes"] else None,
            "n_circuits": len(p["edges"]),
        }
        for x, p in sorted(points.items())
    ]
    loss = seed_estimate(loss_units)
    noise = max((r["eval_se"] for r in table), default=0.0)
    return out | {
        "loss_change": loss,
        # two standard errors of a held-out loss: smaller changes are eval noise
        "eval_noise": 2 * noise,
        "loss_verdict": _loss_verdict(loss, 2 * noise),
        "points": table,
    }


def _slope(xs, ys) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def _loss_verdict(loss: dict | None, noise: float) -> str:
    """A held-out loss change is found when it exceeds the eval noise and its interval
    across seeds excludes no change; one seed gives no interval, and says so."""
    if loss is None:
        return "not measured"
    if abs(loss["value"]) <= noise:
        return "within eval noise"
    if loss["low"] is None:
        return "above eval noise, one seed (no interval)"
    return verdict(loss, null=0.0)


def density_trend(models: Models, circuits: Circuits, tasks: list[str]) -> dict:
    """Per halving of density at the base width (x = density, step -1 in log2)."""
    return _axis(models, circuits, tasks, "density", lambda m: m.density, -1.0)


def width_effect(models: Models, circuits: Circuits, tasks: list[str]) -> dict:
    """Per doubling of width at a fixed number of nonzero weights per matrix."""
    return _axis(models, circuits, tasks, "l0", lambda m: m.d_model, 1.0)


SCALE_AXES = (
    ("dense", "dense"),
    ("l0", "weight-sparse at fixed nonzeros"),
    ("fixed_density", "weight-sparse at fixed density"),
)


def scale(models: Models, circuits: Circuits, tasks: list[str]) -> dict:
    """Does legibility survive growth? Per axis of the width ladder (dense, sparse at fixed
    nonzeros, sparse at fixed density), with at least two widths: circuit size and held-out
    loss per doubling of width (as `width_effect`), one slope per seed; legibility is added
    by the legibility step (`scale_legibility`)."""
    out = {}
    for role, _ in SCALE_AXES:
        widths = {m.d_model for m in models if role in m.roles}
        if len(widths) >= 2:
            out[role] = _axis(models, circuits, tasks, role, lambda m: m.d_model, 1.0)
            out[role]["widths"] = sorted(widths)
    return out


def scale_legibility(models: Models, circuits: Circuits, axes: dict) -> None:
    """Per axis of `scale`, the change of the explained share of nodes per doubling of
    width (a least-squares slope per task, mean over a seed's tasks, t across seeds)."""
    values = legibility_values(circuits, "node_fraction")
    for role, ax in axes.items():
        per_seed: dict[int, list[float]] = {}
        for seed in sorted({m.seed for m in models}):
            curve = [m for m in models if role in m.roles and m.seed == seed]
            for t in sorted({t for _, t in values}):
                pts = [
                    (math.log2(m.d_model), values[(m.id, t)]) for m in curve if (m.id, t) in values
                ]
                if len({x for x, _ in pts}) >= 2:
                    per_seed.setdefault(seed, []).append(_slope(*zip(*pts, strict=True)))
        est = seed_estimate({s: statistics.fmean(v) for s, v in per_seed.items()})
        ax["legibility_change"] = est
        ax["legibility_verdict"] = verdict(est, null=0.0)


def controls(circuits: Circuits) -> dict:
    """Per validated circuit, each control's best circuit (size, losses, status) and
    whether it comes close: a nonsense-task, inverted-rule or random-init circuit that
    validates within CLOSE_FACTOR of the real size, or random circuits of the real size
    that validate too."""
    rows = []
    for c in circuits:
        if c.status != "ok" or not c.controls:
            continue
        ctl = c.controls
        row: dict = {"model": c.model, "task": c.task, "n_edges": c.n_edges}
        for name in CONTROLS:
            x = ctl.get(name)
            row[name] = (
                None
                if x is None
                else x["status"] == "ok" and x["n_edges"] <= CLOSE_FACTOR * max(c.n_edges or 0, 1)
            )
            if x is not None:
                row[f"{name}_best"] = {
                    k: x.get(k) for k in ("status", "n_edges", "n_nodes", "test_loss_calibrated")
                }
        rnd = ctl.get("random_circuits") or {}
        row["random_circuits"] = bool(rnd.get("reach_target"))
        rows.append(row)
    names = (*CONTROLS, "random_circuits")
    close = {
        name: [f"{r['model']}/{task_label(r['task'])}" for r in rows if r[name]] for name in names
    }
    best = {}
    for name in CONTROLS:
        got = [(r, r[f"{name}_best"]) for r in rows if r.get(f"{name}_best")]
        losses = [
            b["test_loss_calibrated"] for _, b in got if b["test_loss_calibrated"] is not None
        ]
        # how much larger than the real circuit a control's validated circuit is
        sizes = [b["n_edges"] / max(r["n_edges"], 1) for r, b in got if b["status"] == "ok"]
        if got:
            best[name] = {
                "n": len(got),
                "n_validated": len(sizes),
                "best_test_loss": min(losses) if losses else None,
                "median_test_loss": statistics.median(losses) if losses else None,
                "edges_x": [min(sizes), statistics.median(sizes), max(sizes)] if sizes else None,
            }
    return {"rows": rows, "close": close, "n_checked": len(rows), "best": best}


def legibility_values(circuits: Circuits, field: str) -> dict[tuple[str, str], float]:
    """(model, task) -> a validated circuit's explained share (`field`)."""
    return {
        (c.model, c.task): c.legibility[field]
        for c in circuits
        if c.status == "ok" and c.legibility and c.legibility.get(field) is not None
    }


def legibility(models: Models, circuits: Circuits, losses: Sequence[float] = (), tasks=()) -> dict:
    """Dense vs sparse legibility. Per kind and seed, the mean over that kind's validated
    circuits of the explained-node fraction (and of the explained share of ablation effect);
    the kind's value is the mean over seeds with a t-interval, and sparse minus dense is
    taken per seed. Given the study's fixed held-out losses (`fixed_loss`) and frontier
    tasks, also read at those losses as circuit size is (matched.at_losses)."""
    kind_seed = {m.id: (m.kind, m.seed) for m in models}
    rows = [
        c
        for c in circuits
        if c.status == "ok" and c.legibility and c.legibility.get("node_fraction") is not None
    ]
    out: dict = {
        "n_circuits": len(rows),
        "criterion": (rows[0].legibility or {}).get("criterion") if rows else None,
    }
    for field in ("node_fraction", "effect_fraction"):
        values = legibility_values(rows, field)
        per: dict[str, dict[int, list[float]]] = {}
        for (mid, _), value in values.items():
            kind, seed = kind_seed[mid]
            per.setdefault(kind, {}).setdefault(seed, []).append(value)
        means = {k: {s: statistics.fmean(v) for s, v in by.items()} for k, by in per.items()}
        dense, sparse = means.get("dense", {}), means.get("sparse", {})
        change = seed_estimate(
            {s: sparse[s] - dense[s] for s in sorted(dense.keys() & sparse.keys())}
        )
        out[field] = {
            "dense": seed_estimate(dense),
            "sparse": seed_estimate(sparse),
            "sparse_minus_dense": change,
            "verdict": verdict(change, null=0.0),
            "at_losses": matched.at_losses(models, values, list(tasks), list(losses), log=False)
            if losses
            else None,
        }
    return out


def _verdict_rows(measures: dict) -> list[tuple]:
    """Every verdict of the study as (name, holder, estimate key, verdict key, null, in the
    Holm family?). The family is the registered primary questions: the headline edges
    ratio, its change with loss, the edges trends along density and width, and the two
    legibility contrasts. The rest (nodes, edges per node, each fixed loss) are
    descriptive: shown with their intervals, judged unadjusted, and named as such."""
    rows = []
    ds, dsn = measures.get("dense_sparse") or {}, measures.get("dense_sparse_nodes") or {}
    if ds:
        rows.append(("dense/sparse edges at matched loss", ds, "ratio", "verdict", 1.0, True))
    if dsn:
        rows.append(("dense/sparse nodes at matched loss", dsn, "ratio", "verdict", 1.0, False))
    fl = measures.get("fixed_loss") or {}
    for m in ("edges", "nodes"):
        if m in fl:
            trend = fl[m]
            name = f"change of dense/sparse {m} per 0.1 nats"
            rows.append((name, trend, "per_0.1_nats", "verdict", 1.0, m == "edges"))
            for p in trend["points"]:
                name = f"dense/sparse {m} at loss {p['loss']:.3f}"
                rows.append((name, p, "estimate", "verdict", 1.0, False))
    for axis, what in (("density", "per halving of density"), ("width", "per doubling of width")):
        ax = measures.get(axis) or {}
        for m in MEASURES:
            if f"{m}_factor" in ax:
                name = f"{m.replace('_', ' ')} {what}"
                rows.append((name, ax, f"{m}_factor", f"{m}_verdict", 1.0, m == "edges"))
    for role, name in SCALE_AXES:  # the ladder's primary questions: size and legibility
        ax = (measures.get("scale") or {}).get(role)
        if ax:
            rows.append(
                (f"{name}: edges per doubling", ax, "edges_factor", "edges_verdict", 1.0, True)
            )
            rows.append(
                (f"{name}: nodes per doubling", ax, "nodes_factor", "nodes_verdict", 1.0, False)
            )
            if "legibility_change" in ax:
                rows.append(
                    (
                        f"{name}: legibility per doubling",
                        ax,
                        "legibility_change",
                        "legibility_verdict",
                        0.0,
                        True,
                    )
                )
    leg = measures.get("legibility") or {}
    for field in ("node_fraction", "effect_fraction"):
        if field in leg:
            name = f"legibility {field}, sparse - dense"
            rows.append((name, leg[field], "sparse_minus_dense", "verdict", 0.0, True))
            for p in (leg[field].get("at_losses") or {}).get("points") or []:
                name = f"legibility {field} at loss {p['loss']:.3f}"
                rows.append((name, p, "estimate", "verdict", 0.0, False))
    return rows


def holm_family(measures: dict) -> list[dict]:
    """Holm's correction over the study's family of primary verdicts (`_verdict_rows`):
    the adjusted p is written into each estimate (`p_holm`) and each verdict recomputed
    from it; descriptive verdicts are judged on their unadjusted intervals. Returns every
    verdict's row (name, p, p_holm, family, verdict) for the summary."""
    rows = [r for r in _verdict_rows(measures) if (r[1].get(r[2]) or {}).get("p") is not None]
    primary = [r for r in rows if r[5]]
    adjusted = dict(
        zip(map(id, primary), holm([h[k]["p"] for _, h, k, *_ in primary]), strict=True)
    )
    out = []
    for row in rows:
        name, holder, key, vkey, null, in_family = row
        est = holder[key]
        est["p_holm"] = adjusted.get(id(row))
        holder[vkey] = verdict(est, null)
        family = "Holm" if in_family else "descriptive"
        out.append(
            {"name": name, "p": est["p"], "p_holm": est["p_holm"], "family": family}
            | {"verdict": holder[vkey]}
        )
    return out
