"""Dense vs sparse: are weight-sparse circuits more stable than dense ones?

Each measure is one value per (model, task); the study's matched comparison reads it on
the dense curve and on the sparse (density) curve at fixed held-out losses inside their
overlap, per pretraining seed, and puts a t-interval across seeds on the sparse - dense
difference (study/matched.py, the same rules as the size comparison). Where the curves do
not overlap, an unmatched contrast (mean over each kind's models, per seed) is reported
and said to be unmatched.
"""

from __future__ import annotations

import statistics
from typing import Any

from ..study.matched import at_losses, fixed_losses, overlap, seed_estimate
from ..study_results import ModelRow
from .records import Stability

# name -> (what it is, how to read it from a Stability); higher = more stable for each
MEASURES = {
    "search_node_jaccard": "node Jaccard across search seeds (pairwise mean)",
    "pair_node_jaccard": "node Jaccard across train-pair samples (pairwise mean)",
    "rephrase_node_jaccard": "node Jaccard across prompt rephrasings (pairwise mean)",
    "search_edge_jaccard": "edge Jaccard across search seeds (pairwise mean)",
    "core_share": "core / mean circuit size across search seeds",
}
PRIMARY = "search_node_jaccard"


def measure(st: Stability, name: str) -> float | None:
    rs = {"pair": st.pairs, "rephrase": st.rephrasing}.get(name.split("_")[0], st.search)
    if rs is None or rs.n_ok < 2:
        return None
    if name == "core_share":
        mean = statistics.fmean(rs.sizes)
        return len(rs.core) / mean if mean else None
    j = rs.edge_jaccard if "edge" in name else rs.node_jaccard
    return j["mean"] if j else None


def values(stabilities: list[Stability], name: str) -> dict[tuple[str, str], float]:
    out = {}
    for st in stabilities:
        v = measure(st, name)
        if v is not None and st.model_id is not None:
            out[(st.model_id, st.task)] = v
    return out


def unmatched(models: list[ModelRow], vals: dict, tasks: list[str]) -> dict | None:
    """Per seed: mean over sparse (density curve) values minus mean over dense values,
    pooled over tasks; a t-interval across seeds. Not at matched loss."""
    per_seed = {}
    for seed in sorted({m.seed for m in models}):
        dense, sparse = [], []
        for m in models:
            if m.seed != seed:
                continue
            for t in tasks:
                if (m.id, t) not in vals:
                    continue
                if "dense" in m.roles:
                    dense.append(vals[(m.id, t)])
                elif "density" in m.roles:
                    sparse.append(vals[(m.id, t)])
        if dense and sparse:
            per_seed[seed] = statistics.fmean(sparse) - statistics.fmean(dense)
    return seed_estimate(per_seed)


def compare(models: list[ModelRow], stabilities: list[Stability], quantiles: list[float]) -> dict:
    """Every measure at the fixed held-out losses (sparse - dense, intervals across seeds),
    the unmatched contrast beside it, and the verdict on the primary measure."""
    tasks = sorted({st.task for st in stabilities})
    ov = overlap(models)
    losses = fixed_losses(ov, quantiles)
    out: dict[str, Any] = {"overlap": ov, "losses": losses, "measures": {}, "primary": PRIMARY}
    for name, what in MEASURES.items():
        vals = values(stabilities, name)
        out["measures"][name] = {
            "what": what,
            "matched": at_losses(models, vals, tasks, losses, log=False) if losses else None,
            "unmatched": unmatched(models, vals, tasks),
            "n_values": len(vals),
        }
    out["verdict"] = verdict(out)
    return out


def _word(est: dict) -> str:
    if est["low"] is None:
        return "undetermined"
    if est["low"] > 0:
        return "more stable"
    if est["high"] < 0:
        return "less stable"
    return "as stable"


def _fmt(est: dict) -> str:
    if est["low"] is None:
        return f"{est['value']:+.3f} (one pretraining seed: no interval)"
    return f"{est['value']:+.3f} [{est['low']:+.3f}, {est['high']:+.3f}], {est['n']} seeds"


def verdict(cmp: dict) -> str:
    """The answer in words, from the primary measure: sparse circuits are more stable, as
    stable (no difference found: the interval holds 0), or less stable than dense ones, at
    every fixed loss where both curves are read; or undetermined (one seed, no reading)."""
    m = cmp["measures"][PRIMARY]
    what = MEASURES[PRIMARY]
    points = [p for p in (m["matched"] or {}).get("points", []) if p["estimate"]]
    if points:
        words = {_word(p["estimate"]) for p in points}
        answer = words.pop() if len(words) == 1 else "mixed across losses"
        readings = "; ".join(f"at loss {p['loss']:.3f}: {_fmt(p['estimate'])}" for p in points)
        return (
            f"Sparse circuits are {answer} than dense ones at matched held-out loss "
            f"({what}, sparse - dense: {readings})."
            if answer not in ("as stable", "undetermined", "mixed across losses")
            else f"Sparse vs dense circuit stability at matched held-out loss: {answer} "
            f"({what}, sparse - dense: {readings})."
        )
    est = m["unmatched"]
    if est:
        return (
            "The dense and sparse curves give no reading at a matched held-out loss; "
            f"unmatched (every dense vs every sparse model of a seed), sparse - dense {what}: "
            f"{_fmt(est)}: {_word(est)}."
        )
    return "No dense-vs-sparse comparison: no dense and sparse circuits were measured."
