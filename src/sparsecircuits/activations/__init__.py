"""Activation sparsity (after Jin et al. 2026): do hidden states get sparser on unfamiliar
and harder inputs, and does that emerge during training?

    metrics     the sparsity metrics, defined once (top-k energy, effective rank, Hoyer, ...)
    conditions  the inputs: seven familiarity conditions and graded difficulty tasks
    intervals   bootstrap intervals, seed groups, "not found" verdicts
    analysis    one checkpoint (conditions, difficulty, training snapshots), groups, the run
    plots       the plots and the report section
    results     the typed record of a run (activations.json)

Statistics: intervals are 95% bootstrap intervals over inputs. An effect is a difference of
means (condition - training code, hardest - easiest level) with an unpaired bootstrap
interval. Models with the same config but different seeds form a group: with >= 3 seeds the
group's interval is a t interval across seeds; with fewer it is the union of the seeds'
input intervals. An effect whose interval contains 0 is reported as "not found".
"""

from __future__ import annotations

from .analysis import (
    analyse_checkpoint,
    effects,
    per_input,
    run_activations,
    run_study_activations,
    snapshots,
)
from .conditions import (
    CONDITIONS,
    code_prose,
    condition_windows,
    rename_identifiers,
    shuffle_lines,
)
from .config import (
    FILES,
    ActivationsConfig,
)
from .intervals import (
    bootstrap_ci,
    combine_seeds,
    verdict,
)
from .metrics import (
    METRICS,
    effective_rank,
    frac_above,
    frac_zero,
    hoyer,
    sparsity_metrics,
    topk_energy,
)
from .results import ActivationResults

__all__ = [
    "ActivationResults",
    "ActivationsConfig",
    "CONDITIONS",
    "FILES",
    "METRICS",
    "analyse_checkpoint",
    "bootstrap_ci",
    "code_prose",
    "combine_seeds",
    "condition_windows",
    "effective_rank",
    "effects",
    "frac_above",
    "frac_zero",
    "hoyer",
    "per_input",
    "rename_identifiers",
    "run_activations",
    "run_study_activations",
    "shuffle_lines",
    "snapshots",
    "sparsity_metrics",
    "topk_energy",
    "verdict",
]
