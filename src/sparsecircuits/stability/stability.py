"""The whole analysis of one (model, task) in memory: both repeat sets and the backup."""

from __future__ import annotations

import dataclasses
import time

from .backup import backup_rounds
from .config import StabilityConfig
from .records import Stability
from .repeat import pair_seed_set, rephrasing_set, search_seed_set
from .search import Setup


def analyse(setup: Setup, cfg: StabilityConfig, model_id: str | None = None) -> Stability:
    t0 = time.perf_counter()
    first = search_seed_set(setup, cfg)
    pairs = pair_seed_set(setup, cfg)
    rephrasing = rephrasing_set(setup, first, cfg) if first.runs else None
    backup = backup_rounds(setup, first, cfg) if cfg.backup and first.n_ok else None
    prune = dataclasses.asdict(dataclasses.replace(setup.cfg, seed=cfg.search_seed))
    return Stability(
        model=setup.where,
        model_id=model_id,
        task=setup.task_name,
        target_loss=setup.cfg.target_loss,
        prune=prune,
        n_nodes_total=setup.n_nodes_total,
        search=first,
        pairs=pairs,
        backup=backup,
        status="ok" if first.n_ok else "no_circuit",
        message=None if first.n_ok else "no search-seed run validated",
        seconds=time.perf_counter() - t0,
        rephrasing=rephrasing,
    )
