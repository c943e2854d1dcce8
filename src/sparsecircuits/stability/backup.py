"""Backup circuits and the irreducible core, after Hao & Goldstein: forbid the node the
validated circuits kept most often (held mean-ablated), search again, and repeat until no
search reaches the target. Every validated circuit found on the way works without the
nodes forbidden before it, so a node all of them keep is one the task needs: the core."""

from __future__ import annotations

from . import sets
from .config import StabilityConfig
from .records import Backup, BackupRound, RunSet
from .repeat import run_set
from .search import Setup, node_set_metrics, search


def backup_rounds(setup: Setup, first: RunSet, cfg: StabilityConfig) -> Backup:
    """Rounds after the repeat set `first` (round 0): each forbids one more node and runs
    `cfg.backup_runs` searches (search seeds search_seed + 0, 1, ...) on the same pairs."""
    forbidden: list[str] = []
    rounds: list[BackupRound] = []
    found = [set(r.nodes) for r in first.runs if r.ok]
    last = found
    stopped = "max_rounds"
    for r in range(1, cfg.max_rounds + 1):
        node = sets.most_kept(last, exclude=set(forbidden))
        if node is None:  # the circuits keep nothing: the direct path does the task
            stopped = "nothing_to_forbid"
            break
        forbidden.append(node)
        runs = [
            search(setup, cfg.search_seed + i, cfg.pair_seed, forbidden=set(forbidden))[0]
            for i in range(cfg.backup_runs)
        ]
        rs = run_set(setup, f"round {r}", runs, measure_losses=False)
        reached = rs.n_ok > 0
        rounds.append(BackupRound(r, node, list(forbidden), rs, reached))
        if not reached:
            stopped = "unreachable"
            break
        last = [set(x.nodes) for x in runs if x.ok]
        found += last
    core = sets.core(found)
    return Backup(
        rounds=rounds,
        forbidden=forbidden,
        stopped=stopped,
        core=sorted(core),
        circuits=len(found),
        distinct=len({frozenset(s) for s in found}),
        core_metrics=node_set_metrics(setup, core) if found else None,
    )
