"""Random scores: the baseline every method must beat (and the control's ordering)."""

from __future__ import annotations

import torch

from .base import Problem, PruneConfig


def random_scores(
    problem: Problem, cfg: PruneConfig, progress: bool = True
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(cfg.seed)
    return {s.hook: torch.rand(s.width, generator=g) for s in problem.sites}
