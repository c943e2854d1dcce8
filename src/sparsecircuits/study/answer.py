"""The study's answer in words, every number taken from the measures (measures.py), and
`analyse`, which computes the measures from the rows and states the answer."""

from __future__ import annotations

import dataclasses

from ..study_results import CircuitRow, EligibilityRow, ModelRow, StudyResults
from .config import StudyConfig
from .measures import (
    SCALE_AXES,
    controls,
    dense_sparse,
    density_trend,
    fixed_loss,
    frontier_rows,
    frontier_tasks,
    holm_family,
    reach_counts,
    scale,
    split_frontier,
    verdict,
    width_effect,
)

# The family a loss-resolved comparison needs (issue 30): this much overlap in held-out
# loss, with this many models of each kind inside it.
OVERLAP_NATS, OVERLAP_MODELS = 0.1, 3


def outside_line(circuits: list[CircuitRow]) -> str | None:
    """How many circuits were searched outside the frontier and how many validated."""
    skipped = ("not_eligible", "trivial")
    rows = [c for c in circuits if not c.in_frontier and c.status not in skipped]
    if not rows:
        return None
    ok = sum(c.status == "ok" for c in rows)
    return (
        f"circuits outside the frontier (a model that reaches a task not every model reaches; "
        f"not in the circuit-size comparison): {ok} validated of {len(rows)} searched; "
        f"{controls_text(controls(rows), 'their controls', 'no controls')}"
    )


def controls_text(
    ctl: dict,
    what: str = "controls",
    none: str = "no frontier circuit validated, so no controls in the comparison",
) -> str:
    """`controls` in words: which controls come close, on how many validated circuits
    (`none` when there was no validated circuit to control); and for each, how often its
    own circuit validated, how large against the real one, and its best test loss."""
    close = [
        f"{name.replace('_', ' ')} on {len(v)} of {ctl['n_checked']} ({', '.join(v[:3])}"
        + (", ...)" if len(v) > 3 else ")")
        for name, v in ctl["close"].items()
        if v
    ]
    best = "; ".join(_control_words(name, b) for name, b in ctl.get("best", {}).items())
    best = f" ({best})" if best else ""
    if close:
        return (
            f"{what} come close ({'; '.join(close)}): those circuit sizes may measure how "
            f"easily a mask fits, not a mechanism{best}"
        )
    if ctl["n_checked"]:
        return f"no control came close on {ctl['n_checked']} validated circuits{best}"
    return none


def _control_words(name: str, b: dict) -> str:
    text = f"{name.replace('_', ' ')} validated on {b.get('n_validated', 0)} of {b.get('n', '?')}"
    if b.get("edges_x"):
        low, mid, high = b["edges_x"]
        text += f" at {low:.1f}-{high:.1f}x the real circuit's edges (median {mid:.1f}x)"
    if b["best_test_loss"] is None:
        return text + " (no budget reached the target)"
    return text + (
        f", best test loss {b['best_test_loss']:.3f} (median {b['median_test_loss']:.3f})"
    )


def legibility_sentence(leg: dict, prefix: str = "Legibility") -> str:
    """The legibility comparison in words, every number from `legibility`."""
    if not leg["n_circuits"]:
        return f"{prefix}: no validated circuit was explained"
    parts = []
    for field, what in (("node_fraction", "nodes"), ("effect_fraction", "ablation effect")):
        x = leg[field]
        text = (
            f"share of {what} explained: dense {fmt_interval(x['dense'], '', 2)}, sparse "
            f"{fmt_interval(x['sparse'], '', 2)}, sparse - dense "
            f"{judged(x['sparse_minus_dense'], x['verdict'], '', 2)}"
        )
        at = [p for p in ((x.get("at_losses") or {}).get("points") or []) if p["estimate"]]
        if at:
            text += "; at fixed held-out losses, sparse - dense " + ", ".join(
                f"{p['loss']:.3f}: {judged(p['estimate'], p.get('verdict', verdict(p['estimate'], 0.0)), '', 2)}"
                for p in at
            )
        parts.append(text)
    return f"{prefix} ({leg['criterion']}; {leg['n_circuits']} circuits): " + "; ".join(parts)


def fmt_interval(iv: dict | None, unit: str = "x", digits: int = 2) -> str:
    if iv is None:
        return "not measured"
    core = f"{iv['value']:.{digits}f}{unit}"
    if iv["low"] is None:
        return f"{core} (one seed: no interval)"
    return (
        f"{core} (95% t-interval {iv['low']:.{digits}f} to {iv['high']:.{digits}f}{unit}, "
        f"{iv['n']} seeds, df {iv['df']})"
    )


def judged(est: dict | None, word: str, unit: str = "x", digits: int = 2) -> str:
    """An estimate with its interval and its verdict word (none where one seed gives no
    interval: the interval's absence says it)."""
    text = fmt_interval(est, unit, digits)
    return text if word in ("no interval", "not measured") else f"{text} ({word})"


def _ratio_words(ds: dict, what: str) -> str:
    r = ds["ratio"]
    found = {
        "found": f"sparse models have {'smaller' if r['value'] > 1 else 'larger'} circuits ({what})",
        "not found": f"no dense/sparse difference in {what} found",
        "no interval": "no interval (one seed): a single comparison, not a finding",
    }[ds["verdict"]]
    text = f"dense/sparse circuit {what} at matched held-out loss: {fmt_interval(r)}; {found}"
    if r["low"] is not None:
        text += f"; rules out a ratio above {r['high']:.2f}x or below {r['low']:.2f}x"
        pw = ds.get("power")
        if pw:
            need = ", ".join(
                f"{n if n is not None else '> 1000'} seeds for {e}x"
                for e, n in pw["seeds_needed"].items()
            )
            text += (
                f"; with this seed-to-seed spread, {r['n']} seeds detect a ratio of "
                f"{pw['detectable']:.2f}x (or its inverse) with 80% power ({need})"
            )
    return text


def _fixed_loss_words(fl: dict) -> str:
    ov = fl["overlap"]
    if not ov["common"]:
        return "the dense and sparse curves do not overlap in held-out loss in every seed, so no fixed loss was read"
    lo, hi = ov["common"]
    inside = ov["inside"]
    n_dense, n_sparse = len(inside["dense"]), len(inside["sparse"])
    rule = ov["width"] >= OVERLAP_NATS and min(n_dense, n_sparse) >= OVERLAP_MODELS
    head = (
        f"the curves overlap in every seed from {lo:.3f} to {hi:.3f} ({ov['width']:.3f} nats; "
        f"{n_dense} dense and {n_sparse} sparse models inside by seed-mean loss: "
        f"{'meets' if rule else 'short of'} the rule of >= {OVERLAP_NATS} nats with >= "
        f"{OVERLAP_MODELS} of each kind)"
    )
    parts = []
    for m in ("edges", "nodes"):
        pts = [
            f"{p['loss']:.3f}: {judged(p['estimate'], p.get('verdict', verdict(p['estimate'])))}"
            for p in fl[m]["points"]
        ]
        trend = fl[m]["per_0.1_nats"]
        parts.append(
            f"dense/sparse {m} at fixed held-out losses "
            + ", ".join(pts)
            + (f"; change per 0.1 nats of loss {fmt_interval(trend)}" if trend else "")
        )
    pareto = [
        f"{p['loss']:.3f}: {fmt_interval(p['estimate'])}" for p in fl["edges_pareto"]["points"]
    ]
    parts.append(
        "against the sparse Pareto curve (every sparse model; chosen on the outcome, not the "
        "registered comparison), edges " + ", ".join(pareto)
    )
    return head + "; " + "; ".join(parts)


def _axis_words(ax: dict, what: str, loss_digits=3) -> str:
    return (
        f"{what}, circuit edges change {judged(ax['edges_factor'], ax['edges_verdict'])} = "
        f"nodes {judged(ax['nodes_factor'], ax['nodes_verdict'])} x edges per node "
        f"{judged(ax['edges_per_node_factor'], ax['edges_per_node_verdict'])}; held-out loss "
        f"{fmt_interval(ax['loss_change'], ' nats', loss_digits)} ({ax['loss_verdict']}, eval noise "
        f"{ax['eval_noise']:.3f})"
    )


def _direction(est: dict | None, word: str, unit: str = "x", digits: int = 2) -> str:
    """Whether a per-doubling change falls, holds or rises, and what its interval allows."""
    if est is None:
        return "not measured"
    text = fmt_interval(est, unit, digits)
    null = 1.0 if est["log"] else 0.0
    if word == "found":
        return f"{'rises' if est['value'] > null else 'falls'}: {text}"
    if word == "not found":
        return f"no change resolved: {text}, so it rules out changes beyond that interval"
    return text


def _scale_words(axes: dict) -> str:
    """Per axis of the width ladder: circuit edges, nodes, legibility and loss per doubling."""
    if not axes:
        return "the ladder has fewer than two widths with validated circuits on every axis"
    parts = []
    for role, name in SCALE_AXES:
        ax = axes.get(role)
        if ax is None:
            continue
        text = (
            f"{name} (d_model {ax['widths'][0]}-{ax['widths'][-1]}), per doubling of width: "
            f"circuit edges {_direction(ax['edges_factor'], ax['edges_verdict'])}; nodes "
            f"{_direction(ax['nodes_factor'], ax['nodes_verdict'])}; held-out loss "
            f"{fmt_interval(ax['loss_change'], ' nats', 3)} ({ax['loss_verdict']})"
        )
        if "legibility_change" in ax:
            text += (
                f"; share of nodes explained "
                f"{_direction(ax['legibility_change'], ax['legibility_verdict'], '', 3)}"
            )
        parts.append(text)
    return "; ".join(parts)


def sentence(cfg: StudyConfig, tasks, ms: dict) -> dict:
    """The answer in words, every number taken from the measures."""
    ratio, nodes = ms["dense_sparse"], ms["dense_sparse_nodes"]
    if ratio["ratio"] is None:
        head = "the dense/sparse circuit-size ratio could not be read by interpolation: " + (
            "no task entered the frontier"
            if not tasks
            else "the dense and sparse curves do not overlap in held-out loss (or too few circuits validated)"
        )
    else:
        head = _ratio_words(ratio, "edges")
        if nodes["ratio"] is not None:
            head += f". Nodes beside it: {_ratio_words(nodes, 'nodes')}"
    if ratio["n_extrapolated"]:
        head += (
            f" ({ratio['n_extrapolated']} extrapolated readings of edges, geomean "
            f"{ratio['extrapolated_geomean']:.2f}x, kept out of this number)"
        )
    ctl_text = controls_text(ms["controls"])
    seeds = (
        "one pretraining seed: no interval can show whether the result survives retraining; "
        "it shows what these particular models do"
        if cfg.seeds == 1
        else f"{cfg.seeds} pretraining seeds, the unit of every interval (Holm over the "
        "study's verdicts)"
    )
    return {
        "sentence": ". ".join(x[0].upper() + x[1:] for x in (head, ctl_text, seeds)) + ".",
        "fixed_loss": _fixed_loss_words(ms["fixed_loss"]),
        "density_trend": _axis_words(
            ms["density"], f"per halving of density at d_model {cfg.base_width}"
        ),
        "width_effect": _axis_words(ms["width"], "per doubling of width at fixed nonzeros"),
        "controls": ctl_text,
        "seeds": seeds,
        "ratio": ratio["ratio"],
    } | ({"scale": _scale_words(ms["scale"])} if "scale" in ms else {})


def analyse(
    cfg: StudyConfig,
    models: list[ModelRow],
    circuits: list[CircuitRow],
    eligibility: list[EligibilityRow],
) -> StudyResults:
    tasks = frontier_tasks(cfg, eligibility)
    frontier = split_frontier(circuits)[0]
    ms: dict = {
        "dense_sparse": dense_sparse(models, circuits, tasks),
        "dense_sparse_nodes": dense_sparse(models, circuits, tasks, "nodes"),
        "fixed_loss": fixed_loss(cfg, models, circuits, tasks),
        "density": density_trend(models, circuits, tasks),
        "width": width_effect(models, circuits, tasks),
        "controls": controls(frontier),
    }
    if cfg.fixed_density_widths:  # the scale ladder
        ms["scale"] = scale(models, circuits, tasks)
    ms["holm"] = holm_family(ms)
    words = sentence(cfg, tasks, ms)
    statuses: dict[str, int] = {}
    for c in circuits:
        statuses[c.status] = statuses.get(c.status, 0) + 1
    return StudyResults(
        study={
            "preset": cfg.preset,
            "protocol": cfg.protocol,
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
        measures=ms,
        answer=words
        | {
            "details": [
                f"tasks in the frontier: {', '.join(tasks) or 'none'} (of {', '.join(cfg.tasks)})",
                "target loss per task: " + ", ".join(f"{t}: {cfg.target(t)}" for t in cfg.tasks),
                "full models reaching each task: " + reach_counts(cfg, eligibility),
                "circuits by status: " + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())),
                *filter(None, [outside_line(circuits)]),
            ],
        },
    )
