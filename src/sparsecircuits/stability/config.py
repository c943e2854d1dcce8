"""The stability analysis's settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError

RESULTS_FILE = "stability.json"


@dataclass
class StabilityConfig:
    runs: int = 5  # searches per repeat set (each set varies one source of randomness)
    # The pairs every search-seed run sees, and the fixed selection and test pairs of every
    # run: the pair-seed runs draw only their train pairs from pair_seed + 1, + 2, ...
    pair_seed: int = 0
    # The search seed every pair-seed run uses; the search-seed runs use search_seed + 0, 1, ...
    search_seed: int = 0
    target_loss: float | None = None  # None: the study's target for the task, else PruneConfig's
    # PruneConfig overrides for every search (a study's own prune settings come first). The
    # search runs one setting (k_coef, mask_lr) so that runs differ only in their seed; with
    # a study it is the one its circuit was chosen at.
    prune: dict = field(default_factory=dict)
    # surface variants of the prompts (rephrase.VARIANTS), each searched once at search_seed
    rephrasings: list[str] = field(default_factory=lambda: ["renamed", "wrapped"])
    backup: bool = True  # the backup-circuit rounds (forbid the most-kept node, search again)
    backup_runs: int = 3  # searches per backup round (search seeds search_seed + 0, 1, ...)
    max_rounds: int = 8  # backup rounds at most, when the target stays reachable
    # Study mode: how many frontier (model, task) circuits at most (None: all on the curves)
    max_circuits: int | None = None

    def __post_init__(self):
        if self.runs < 2:
            raise UserError("stability needs at least 2 runs per set (pairwise Jaccard)")
        if self.backup_runs < 1 or self.max_rounds < 0:
            raise UserError("stability: backup_runs must be >= 1 and max_rounds >= 0")
