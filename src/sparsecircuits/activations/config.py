"""The analysis's settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError
from .metrics import METRICS


@dataclass
class ActivationsConfig:
    n: int = 64  # windows per familiarity condition
    seed: int = 0
    hooks: list[str] = field(default_factory=lambda: ["resid_post"])
    n_pairs: int = 32  # prompt pairs per difficulty level
    context_task: str = "single_double_quote"  # the task put after prefixes of held-out code
    context_fracs: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0])
    metric: str = "top10_energy"  # the metric of plots and report text (the JSON has all)
    difficulty: bool = True
    training: bool = True  # also every snapshot in checkpoints/step_*

    def __post_init__(self):
        if self.metric not in METRICS:
            raise UserError(f"unknown metric {self.metric!r}; choose one of {', '.join(METRICS)}")
        if self.n < 2 or self.n_pairs < 2:
            raise UserError("activations: need at least 2 inputs per condition and level")


FILES = {
    "json": "activations.json",
    "layers": "activations.png",
    "training": "activations_training.png",
    "difficulty": "activations_difficulty.png",
}
