"""Lookup memory vs circuits: the same models with and without the bigram table.

The bigram table (a dense vocab x vocab table added to the logits) is most of a small
model's parameters (~92% at d_model 64 with a 2048-token vocabulary) and lets the empty
circuit do tasks whose last token decides the answer (else_elif, with_as). Does taking it
away change what the model can do, which tasks need no node, and how big circuits are?

    lookup_family(base, bigram, seeds)  the base-width dense and one sparse model of a
                                        study preset, with or without the table
    compare(with_table, without)        per kind, one paired value per seed: held-out loss,
                                        tasks reached, trivial tasks, circuit edges/nodes
"""

from __future__ import annotations

import dataclasses
import math
import statistics

from ..study_results import ModelRow, StudyResults
from .config import StudyConfig
from .matched import seed_estimate
from .measures import ok_values


def lookup_family(base: StudyConfig, bigram: bool, seeds: int) -> StudyConfig:
    """The base-width dense model and the base-width sparse model at the width axis's
    density, from `seeds` pretraining seeds, trained as `base` trains, with the bigram
    table on or off; circuits searched as `base` searches them, without the task controls
    (this run compares sizes, not mechanisms)."""
    width, density = base.base_width, base.fixed_l0_density
    return dataclasses.replace(
        base,
        preset=f"{base.preset}-lookup-{'on' if bigram else 'off'}",
        train_overrides={**base.train_overrides, "bigram_table": bigram},
        dense_widths=[width],
        densities=[density],
        l0_widths=[width],  # the same model as the density one: nothing extra trains
        l0_seeds=None,
        seeds=seeds,
        controls=False,
        protocol=None,
    )


def _per_kind_seed(results: StudyResults) -> dict[tuple[str, int], ModelRow]:
    return {(m.kind, m.seed): m for m in results.models}


def compare(with_table: StudyResults, without: StudyResults) -> dict:
    """Per kind (dense, sparse): without minus with the table, one paired value per
    pretraining seed, with t-intervals across seeds: held-out loss, tasks the full model
    reaches (target and accuracy, not trivial), trivial tasks, total parameters; and the
    circuit edges and nodes ratio (without / with) over the tasks both models have a
    validated circuit for."""
    on, off = _per_kind_seed(with_table), _per_kind_seed(without)
    sizes = {
        m: (ok_values(with_table.circuits, m), ok_values(without.circuits, m))
        for m in ("edges", "nodes")
    }
    out: dict = {}
    for kind in ("dense", "sparse"):
        seeds = sorted(s for k, s in on if k == kind and (k, s) in off)
        rows: dict[str, dict[int, float]] = {
            "heldout_loss": {},
            "tasks_reached": {},
            "tasks_trivial": {},
            "edges_ratio": {},
            "nodes_ratio": {},
        }
        params = {}
        for s in seeds:
            a, b = on[(kind, s)], off[(kind, s)]
            params = {"with": a.total_params, "without": b.total_params}
            if a.heldout_loss is not None and b.heldout_loss is not None:
                rows["heldout_loss"][s] = b.heldout_loss - a.heldout_loss
            counts = [_task_counts(r, m.id) for r, m in ((with_table, a), (without, b))]
            rows["tasks_reached"][s] = counts[1][0] - counts[0][0]
            rows["tasks_trivial"][s] = counts[1][1] - counts[0][1]
            for measure, (va, vb) in sizes.items():
                tasks = [t for (m, t) in va if m == a.id and (b.id, t) in vb]
                if tasks:
                    rows[f"{measure}_ratio"][s] = statistics.fmean(
                        math.log(vb[(b.id, t)] / va[(a.id, t)]) for t in tasks
                    )
        out[kind] = {
            "seeds": seeds,
            "params": params,
            "with": _levels(with_table, on, kind, seeds),
            "without": _levels(without, off, kind, seeds),
        } | {name: seed_estimate(vals, log=name.endswith("_ratio")) for name, vals in rows.items()}
    return out


def _task_counts(results: StudyResults, model_id: str) -> tuple[int, int]:
    """(tasks the full model reaches and that need a node, tasks its empty circuit does)."""
    rows = [r for r in results.eligibility if r.model == model_id]
    reached = sum(bool(r.reaches) and not r.trivial for r in rows)
    return reached, sum(bool(r.trivial) for r in rows)


def _levels(
    results: StudyResults, models: dict[tuple[str, int], ModelRow], kind: str, seeds: list[int]
) -> dict:
    """Means over seeds of one side: held-out loss, tasks reached, trivial tasks."""
    ms = [models[(kind, s)] for s in seeds]
    ids = {m.id for m in ms}
    counts = [_task_counts(results, m.id) for m in ms]
    losses = [m.heldout_loss for m in ms if m.heldout_loss is not None]
    return {
        "heldout_loss": statistics.fmean(losses) if losses else None,
        "tasks_reached": statistics.fmean(c[0] for c in counts) if counts else None,
        "tasks_trivial": statistics.fmean(c[1] for c in counts) if counts else None,
        "trivial_tasks": sorted(
            {r.task for r in results.eligibility if r.trivial and r.model in ids}
        ),
    }
