"""Repeat-run stability of one (model, task): searches that differ only in the search seed
(same pairs), and searches that differ only in the train-pair sample (same search seed)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from . import sets
from .config import StabilityConfig
from .records import RunSet, SearchRun
from .search import Setup, node_set_metrics, search


def run_set(
    setup: Setup, varies: str, runs: Sequence[SearchRun], measure_losses: bool = True
) -> RunSet:
    """The measures of a set of runs (only those that validated count)."""
    ok = [r for r in runs if r.ok]
    node_sets = [set(r.nodes) for r in ok]
    edge_sets = [{tuple(e) for e in r.edges} for r in ok]
    core, union = sets.core(node_sets), sets.union(node_sets)
    return RunSet(
        varies=varies,
        runs=list(runs),
        n_ok=len(ok),
        node_jaccard=sets.pairwise_jaccard(node_sets),
        edge_jaccard=sets.pairwise_jaccard(edge_sets),
        core=sorted(core),
        union=sorted(union),
        frequency=sets.frequency(node_sets),
        sizes=[len(s) for s in node_sets],
        core_metrics=node_set_metrics(setup, core) if ok and measure_losses else None,
        union_metrics=node_set_metrics(setup, union) if ok and measure_losses else None,
    )


def search_seed_set(setup: Setup, cfg: StabilityConfig) -> RunSet:
    """`cfg.runs` searches on the same pairs, search seeds search_seed + 0, 1, ..."""
    runs = [search(setup, cfg.search_seed + i, cfg.pair_seed)[0] for i in range(cfg.runs)]
    return run_set(setup, "search_seed", runs)


def rephrasing_set(setup: Setup, first: RunSet, cfg: StabilityConfig) -> RunSet | None:
    """The original prompts' circuit (search-seed run 0) and one search per surface
    variant of the prompts (`cfg.rephrasings`), each searched, validated and measured on
    its own variant's pairs at the base search seed; the core and union are measured on the
    original test pairs. None when the setup has no text to rephrase."""
    if setup.rephrased is None or not cfg.rephrasings:
        return None
    runs = [first.runs[0]]
    for variant in cfg.rephrasings:
        train, test, select = setup.rephrased(variant)
        on_variant = dataclasses.replace(setup, train=train, test=test, select=select)
        run = search(on_variant, cfg.search_seed, cfg.pair_seed)[0]
        run.variant = variant
        runs.append(run)
    return run_set(setup, "rephrasing", runs)


def pair_seed_set(setup: Setup, cfg: StabilityConfig) -> RunSet | None:
    """`cfg.runs` searches at one search seed, each on train pairs from its own pair seed
    (pair_seed + 1, + 2, ...); the selection and test pairs stay. None when the setup
    cannot draw other pairs."""
    if setup.train_pairs is None:
        return None
    runs = []
    for i in range(1, cfg.runs + 1):
        seed = cfg.pair_seed + i
        runs.append(search(setup, cfg.search_seed, seed, train=setup.train_pairs(seed))[0])
    return run_set(setup, "pair_seed", runs)
