"""The study's measures, each a function of the results' rows, and the answer sentence.

    frontier_rows   per model: held-out loss and geometric-mean edges over frontier tasks
    dense_sparse    dense vs sparse circuit size at matched held-out loss, read where the
                    curves overlap (bracketing segment); extrapolated readings kept apart
    density_trend   circuit size and loss per halving of density at the base width
    width_effect    circuit size and loss per doubling of width at fixed nonzeros
    controls        how close each control comes to the real circuit
    legibility      dense vs sparse: the fraction of circuit nodes (and of ablation effect)
                    one simple feature explains (explain.py), added by study/legibility.py
    sentence        the answer, stated from the numbers above

Intervals on circuit sizes are 95% bootstrap intervals over tasks and pretraining seeds
(both resampled); held-out loss changes, one value per seed, get a 95% t-interval across
seeds. An effect is "not found" when its interval includes no change.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics

from ..stats import t_interval
from ..study_results import StudyResults
from .config import StudyConfig, task_label

BOOTSTRAP_DRAWS = 2000
CLOSE_FACTOR = 2.0  # a control circuit within this factor of the real one "comes close"


def geomean(xs: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(max(x, 1e-12)) for x in xs))


def interp_log_edges(points: list[tuple[float, float]], loss: float) -> tuple[float, bool]:
    """log(edges) of a curve of (loss, log edges) points at `loss`, linear on the segment
    whose ends bracket `loss` -> (value, extrapolated?). Outside the curve's loss range the
    end segment is extended and the reading is flagged as extrapolated."""
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


def bootstrap_interval(
    units: dict[tuple[str, int], float], stat=geomean, seed: int = 0
) -> dict | None:
    """`stat` of per-(task, seed) values with a 95% interval: tasks and seeds resampled
    with replacement (a draw keeps the units of its chosen tasks and seeds). None without
    values; no interval from a single unit."""
    if not units:
        return None
    tasks = sorted({t for t, _ in units})
    seeds = sorted({s for _, s in units})
    out = {
        "value": stat(list(units.values())),
        "low": None,
        "high": None,
        "n": len(units),
        "n_tasks": len(tasks),
        "n_seeds": len(seeds),
    }
    if len(units) < 2:
        return out
    rng = random.Random(seed)
    draws = []
    for _ in range(BOOTSTRAP_DRAWS):
        ts = [rng.choice(tasks) for _ in tasks]
        ss = [rng.choice(seeds) for _ in seeds]
        vals = [units[(t, s)] for t in ts for s in ss if (t, s) in units]
        if vals:
            draws.append(stat(vals))
    draws.sort()
    out["low"] = draws[int(0.025 * len(draws))]
    out["high"] = draws[min(len(draws) - 1, int(0.975 * len(draws)))]
    return out


def seed_interval(units: dict[tuple[str, int], float]) -> dict | None:
    """Mean of one value per pretraining seed with a 95% t-interval across the seeds (the
    independent units; a bootstrap over three values would claim more than it knows).
    None without values; no interval from a single seed."""
    if not units:
        return None
    xs = list(units.values())
    out = {
        "value": statistics.fmean(xs),
        "low": None,
        "high": None,
        "n": len(xs),
        "n_tasks": len({t for t, _ in units}),
        "n_seeds": len({s for _, s in units}),
        "method": "t across seeds",
    }
    if len(xs) >= 2:
        _, out["low"], out["high"] = t_interval(xs)
    return out


def verdict(interval: dict | None, null: float = 1.0) -> str:
    """found | not found (interval includes `null`) | no interval (one unit) | not measured."""
    if interval is None:
        return "not measured"
    if interval["low"] is None:
        return "no interval"
    return "not found" if interval["low"] <= null <= interval["high"] else "found"


def in_frontier(c: dict) -> bool:
    """A circuit row of a frontier task (rows written before circuits outside the frontier
    were searched have no flag: they were all frontier rows)."""
    return c.get("in_frontier", True)


def split_frontier(circuits: list[dict]) -> tuple[list[dict], list[dict]]:
    """(circuit rows of frontier tasks, rows outside the frontier)."""
    return [c for c in circuits if in_frontier(c)], [c for c in circuits if not in_frontier(c)]


def outside_line(circuits: list[dict]) -> str | None:
    """How many circuits were searched outside the frontier and how many validated."""
    skipped = ("not_eligible", "trivial")
    rows = [c for c in circuits if not in_frontier(c) and c["status"] not in skipped]
    if not rows:
        return None
    ok = sum(c["status"] == "ok" for c in rows)
    return (
        f"circuits outside the frontier (a model that reaches a task not every model reaches; "
        f"not in the circuit-size comparison): {ok} validated of {len(rows)} searched; "
        f"{controls_text(controls(rows), 'their controls', 'no controls')}"
    )


def ok_edges(circuits: list[dict]) -> dict[tuple[str, str], int]:
    """(model, task) -> edges of every circuit that validated."""
    return {(c["model"], c["task"]): max(c["n_edges"], 1) for c in circuits if c["status"] == "ok"}


def reaches(full: dict, target: float, min_accuracy: float) -> bool:
    """The target rule for one full model on one task: calibrated test loss at most the
    target and calibrated test accuracy at least `min_accuracy` (held-out test pairs)."""
    return full["loss_calibrated"] <= target and full["accuracy_calibrated"] >= min_accuracy


def frontier_tasks(cfg: StudyConfig, eligibility: list[dict]) -> list[str]:
    """Tasks that every full model reaches (target and accuracy, on test pairs) and that no
    model's empty circuit reaches (a task done without any node has no circuit to size)."""
    return [
        t
        for t in cfg.tasks
        if all(r["reaches"] and not r.get("trivial") for r in eligibility if r["task"] == t)
    ]


def reach_counts(cfg: StudyConfig, eligibility: list[dict]) -> str:
    """Per task, how many full models reach it, and whether the empty circuit does too."""
    parts = []
    for t in cfg.tasks:
        rows = [r for r in eligibility if r["task"] == t]
        trivial = sum(bool(r.get("trivial")) for r in rows)
        note = f", {trivial} of them with the empty circuit" if trivial else ""
        parts.append(f"{task_label(t)} {sum(r['reaches'] for r in rows)} of {len(rows)}{note}")
    return "; ".join(parts)


def frontier_rows(models: list[dict], circuits: list[dict], tasks: list[str]) -> list[dict]:
    ok = ok_edges(circuits)
    rows = []
    for m in models:
        edges = [ok[(m["id"], t)] for t in tasks if (m["id"], t) in ok]
        rows.append(
            {k: m[k] for k in ("id", "label", "kind", "d_model", "density", "seed", "heldout_loss")}
            | {
                "model": m["id"],
                "roles": m.get("roles", []),
                # over the tasks this model validated; n_tasks says how many
                "geomean_edges": geomean(edges) if edges else None,
                "n_tasks": len(edges),
            }
        )
    return rows


def _curve(models, ok, role: str, seed: int, task: str) -> list[tuple[float, float, str]]:
    return [
        (m["heldout_loss"], math.log(ok[(m["id"], task)]), m["id"])
        for m in models
        if role in m.get("roles", [])
        and m["seed"] == seed
        and m["heldout_loss"] is not None
        and (m["id"], task) in ok
    ]


def dense_sparse(models: list[dict], circuits: list[dict], tasks: list[str]) -> dict:
    """Dense / sparse circuit edges at matched held-out loss. Each dense model is read on
    the sparse curve (base width, all densities) and each sparse model on the dense curve
    (all widths); a reading inside the other curve's loss range is interpolated on its
    bracketing segment, one outside is extrapolated and kept out of the headline."""
    ok = ok_edges(circuits)
    readings = []
    for seed in sorted({m["seed"] for m in models}):
        for t in tasks:
            dense = _curve(models, ok, "dense", seed, t)
            sparse = _curve(models, ok, "density", seed, t)
            for own, other, dense_side in ((dense, sparse, True), (sparse, dense, False)):
                if len(other) < 2:
                    continue
                for loss, log_e, mid in own:
                    at, extra = interp_log_edges([(a, b) for a, b, _ in other], loss)
                    ratio = math.exp(log_e - at) if dense_side else math.exp(at - log_e)
                    readings.append(
                        {
                            "task": t,
                            "seed": seed,
                            "model": mid,
                            "ratio": ratio,
                            "extrapolated": extra,
                        }
                    )
    per_unit: dict[tuple[str, int], list[float]] = {}
    for r in readings:
        if not r["extrapolated"]:
            per_unit.setdefault((r["task"], r["seed"]), []).append(r["ratio"])
    interval = bootstrap_interval({u: geomean(v) for u, v in per_unit.items()})
    extrapolated = [r["ratio"] for r in readings if r["extrapolated"]]
    return {
        "ratio": interval,
        "verdict": verdict(interval),
        "readings": readings,
        "n_interpolated": sum(not r["extrapolated"] for r in readings),
        "n_extrapolated": len(extrapolated),
        "extrapolated_geomean": geomean(extrapolated) if extrapolated else None,
    }


def _slope(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def _axis(models, circuits, tasks, role: str, x_of, per: float) -> dict:
    """Along one curve of the family (role), per task and seed, the factor by which circuit
    edges change when x (log2 of density or width) moves by `per` (a least-squares slope
    over the curve's models); and held-out loss per x with its measured eval noise."""
    ok = ok_edges(circuits)
    units = {}
    loss_units = {}
    for seed in sorted({m["seed"] for m in models}):
        curve = sorted(
            (m for m in models if role in m.get("roles", []) and m["seed"] == seed), key=x_of
        )
        for t in tasks:
            pts = [
                (math.log2(x_of(m)), math.log2(ok[(m["id"], t)]))
                for m in curve
                if (m["id"], t) in ok
            ]
            if len({x for x, _ in pts}) >= 2:
                units[(t, seed)] = 2 ** (per * _slope(*zip(*pts, strict=True)))
        lp = [
            (math.log2(x_of(m)), m["heldout_loss"]) for m in curve if m["heldout_loss"] is not None
        ]
        if len({x for x, _ in lp}) >= 2:
            loss_units[("loss", seed)] = per * _slope(*zip(*lp, strict=True))
    points = {}
    for m in models:
        if role in m.get("roles", []):
            p = points.setdefault(x_of(m), {"losses": [], "se": [], "edges": []})
            p["losses"].append(m["heldout_loss"])
            p["se"].append(m.get("heldout_loss_se") or 0.0)
            p["edges"] += [ok[(m["id"], t)] for t in tasks if (m["id"], t) in ok]
    table = [
        {
            "x": x,
            "heldout_loss": statistics.fmean(p["losses"]),
            "eval_se": statistics.fmean(p["se"]),
            "geomean_edges": geomean(p["edges"]) if p["edges"] else None,
            "n_circuits": len(p["edges"]),
        }
        for x, p in sorted(points.items())
    ]
    edges = bootstrap_interval(units)
    loss = seed_interval(loss_units)
    noise = max((r["eval_se"] for r in table), default=0.0)
    return {
        "edges_factor": edges,
        "edges_verdict": verdict(edges),
        "loss_change": loss,
        # two standard errors of a held-out loss: smaller changes are eval noise
        "eval_noise": 2 * noise,
        "loss_verdict": _loss_verdict(loss, 2 * noise),
        "points": table,
    }


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


def density_trend(models, circuits, tasks) -> dict:
    """Per halving of density at the base width (x = density, step -1 in log2)."""
    return _axis(models, circuits, tasks, "density", lambda m: m["density"], -1.0)


def width_effect(models, circuits, tasks) -> dict:
    """Per doubling of width at a fixed number of nonzero weights per matrix."""
    return _axis(models, circuits, tasks, "l0", lambda m: m["d_model"], 1.0)


def controls(circuits: list[dict]) -> dict:
    """Per validated circuit, whether each control comes close: a nonsense-task or
    random-init circuit that validates within CLOSE_FACTOR of the real size, or random
    circuits of the real size that validate too."""
    rows = []
    for c in circuits:
        if c["status"] != "ok" or not c.get("controls"):
            continue
        ctl = c["controls"]
        row = {"model": c["model"], "task": c["task"], "n_edges": c["n_edges"]}
        for name in ("nonsense", "random_init"):
            x = ctl.get(name)
            row[name] = (
                None
                if x is None
                else x["status"] == "ok" and x["n_edges"] <= CLOSE_FACTOR * max(c["n_edges"], 1)
            )
        rnd = ctl.get("random_circuits") or {}
        row["random_circuits"] = bool(rnd.get("reach_target"))
        rows.append(row)
    close = {
        name: [f"{r['model']}/{task_label(r['task'])}" for r in rows if r[name]]
        for name in ("nonsense", "random_init", "random_circuits")
    }
    return {"rows": rows, "close": close, "n_checked": len(rows)}


def controls_text(
    ctl: dict,
    what: str = "controls",
    none: str = "no frontier circuit validated, so no controls in the comparison",
) -> str:
    """`controls` in words: which controls come close, on how many validated circuits
    (`none` when there was no validated circuit to control)."""
    close = [
        f"{name.replace('_', ' ')} on {len(v)} of {ctl['n_checked']} ({', '.join(v[:3])}"
        + (", ...)" if len(v) > 3 else ")")
        for name, v in ctl["close"].items()
        if v
    ]
    if close:
        return (
            f"{what} come close ({'; '.join(close)}): those circuit sizes may measure how "
            "easily a mask fits, not a mechanism"
        )
    if ctl["n_checked"]:
        return f"no control came close on {ctl['n_checked']} validated circuits"
    return none


def legibility(models: list[dict], circuits: list[dict]) -> dict:
    """Dense vs sparse legibility. Per kind, each (task, seed) unit is the mean over that
    kind's validated circuits of the explained-node fraction (and of the explained share of
    ablation effect); the kind's value is the mean over units with a bootstrap interval, and
    sparse minus dense is read on the units both kinds have ("found" when its interval
    excludes 0)."""
    kind_seed = {m["id"]: (m["kind"], m["seed"]) for m in models}
    rows = [
        c
        for c in circuits
        if c["status"] == "ok" and (c.get("legibility") or {}).get("node_fraction") is not None
    ]
    out: dict = {
        "n_circuits": len(rows),
        "criterion": rows[0]["legibility"].get("criterion") if rows else None,
    }
    for field in ("node_fraction", "effect_fraction"):
        per: dict[str, dict[tuple[str, int], list[float]]] = {}
        for c in rows:
            value = c["legibility"].get(field)
            if value is not None:
                kind, seed = kind_seed[c["model"]]
                per.setdefault(kind, {}).setdefault((c["task"], seed), []).append(value)
        means = {k: {u: statistics.fmean(v) for u, v in units.items()} for k, units in per.items()}
        dense, sparse = means.get("dense", {}), means.get("sparse", {})
        diff = {u: sparse[u] - dense[u] for u in sorted(dense.keys() & sparse.keys())}
        change = bootstrap_interval(diff, stat=statistics.fmean)
        out[field] = {
            "dense": bootstrap_interval(dense, stat=statistics.fmean),
            "sparse": bootstrap_interval(sparse, stat=statistics.fmean),
            "sparse_minus_dense": change,
            "verdict": verdict(change, null=0.0),
        }
    return out


def legibility_sentence(leg: dict, prefix: str = "Legibility") -> str:
    """The legibility comparison in words, every number from `legibility`."""
    if not leg["n_circuits"]:
        return f"{prefix}: no validated circuit was explained"
    parts = []
    for field, what in (("node_fraction", "nodes"), ("effect_fraction", "ablation effect")):
        x = leg[field]
        parts.append(
            f"share of {what} explained: dense {_fmt_interval(x['dense'], '', 2)}, sparse "
            f"{_fmt_interval(x['sparse'], '', 2)}, sparse - dense "
            f"{_fmt_interval(x['sparse_minus_dense'], '', 2)} ({x['verdict']})"
        )
    return f"{prefix} ({leg['criterion']}; {leg['n_circuits']} circuits): " + "; ".join(parts)


def _fmt_interval(iv: dict | None, unit: str = "x", digits: int = 2) -> str:
    if iv is None:
        return "not measured"
    core = f"{iv['value']:.{digits}f}{unit}"
    if iv["low"] is None:
        return f"{core} (n={iv['n']}, too few for an interval)"
    units = (
        f"{iv['n_seeds']} seeds"
        if iv.get("method") == "t across seeds"
        else f"{iv['n_tasks']} task{'s' * (iv['n_tasks'] != 1)} x {iv['n_seeds']} seeds"
    )
    kind = "t-interval" if iv.get("method") == "t across seeds" else "interval"
    return f"{core} (95% {kind} {iv['low']:.{digits}f}-{iv['high']:.{digits}f}{unit}, n={iv['n']}: {units})"


def sentence(cfg: StudyConfig, tasks, ratio: dict, density: dict, width: dict, ctl: dict) -> dict:
    """The answer in words, every number taken from the measures."""
    r = ratio["ratio"]
    if r is None:
        head = "the dense/sparse circuit-size ratio could not be read by interpolation: " + (
            "no task entered the frontier"
            if not tasks
            else "the dense and sparse curves do not overlap in held-out loss (or too few circuits validated)"
        )
    else:
        found = {
            "found": "sparse models have smaller circuits"
            if r["value"] > 1
            else "sparse models have larger circuits",
            "not found": "no dense/sparse difference found (the interval includes 1)",
            "no interval": "no interval (one task and seed): a single comparison, not a finding",
        }[ratio["verdict"]]
        head = f"dense/sparse circuit edges at matched held-out loss: {_fmt_interval(r)}; {found}"
    if ratio["n_extrapolated"]:
        head += (
            f" ({ratio['n_extrapolated']} extrapolated readings, geomean "
            f"{ratio['extrapolated_geomean']:.2f}x, kept out of this number)"
        )
    dens = (
        f"per halving of density at d_model {cfg.base_width}, circuit edges change "
        f"{_fmt_interval(density['edges_factor'])} ({density['edges_verdict']}); held-out loss "
        f"{_fmt_interval(density['loss_change'], ' nats', 3)} ({density['loss_verdict']}, eval noise "
        f"{density['eval_noise']:.3f})"
    )
    wid = (
        f"per doubling of width at fixed nonzeros, circuit edges change "
        f"{_fmt_interval(width['edges_factor'])} ({width['edges_verdict']}); held-out loss "
        f"{_fmt_interval(width['loss_change'], ' nats', 3)} ({width['loss_verdict']})"
    )
    ctl_text = controls_text(ctl)
    seeds = (
        "one pretraining seed: intervals resample tasks only, so they cannot show whether the "
        "result survives retraining; it shows what these particular models do"
        if cfg.seeds == 1
        else f"{cfg.seeds} pretraining seeds, resampled in every interval"
    )
    return {
        "sentence": ". ".join(x[0].upper() + x[1:] for x in (head, ctl_text, seeds)) + ".",
        "density_trend": dens,
        "width_effect": wid,
        "controls": ctl_text,
        "seeds": seeds,
    }


def analyse(
    cfg: StudyConfig, models: list[dict], circuits: list[dict], eligibility: list[dict]
) -> StudyResults:
    tasks = frontier_tasks(cfg, eligibility)
    ratio = dense_sparse(models, circuits, tasks)
    density = density_trend(models, circuits, tasks)
    width = width_effect(models, circuits, tasks)
    ctl = controls(split_frontier(circuits)[0])
    words = sentence(cfg, tasks, ratio, density, width, ctl)
    statuses = {}
    for c in circuits:
        statuses[c["status"]] = statuses.get(c["status"], 0) + 1
    return StudyResults(
        study={
            "preset": cfg.preset,
            "tasks": cfg.tasks,
            "seeds": list(range(cfg.seeds)),
            "targets": {t: cfg.target(t) for t in cfg.tasks},
            "min_accuracy": cfg.min_accuracy,
            "frontier_tasks": tasks,
            "config": dataclasses.asdict(cfg),
        },
        models=models,
        eligibility=eligibility,
        circuits=circuits,
        frontier=frontier_rows(models, circuits, tasks),
        measures={"dense_sparse": ratio, "density": density, "width": width, "controls": ctl},
        answer=words
        | {
            "ratio": ratio["ratio"],
            "details": [
                f"tasks in the frontier: {', '.join(tasks) or 'none'} (of {', '.join(cfg.tasks)})",
                "target loss per task: " + ", ".join(f"{t}: {cfg.target(t)}" for t in cfg.tasks),
                "full models reaching each task: " + reach_counts(cfg, eligibility),
                "circuits by status: " + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())),
                *filter(None, [outside_line(circuits)]),
            ],
        },
    )
