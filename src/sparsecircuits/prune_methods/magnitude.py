"""Activation magnitude: how far a node's activation on the task prompts is, on average,
from the mean that ablation would put in its place (mean |a - mean|)."""

from __future__ import annotations

import torch

from ..nodes import channels
from .base import Problem, PruneConfig


@torch.no_grad()
def magnitude_scores(
    problem: Problem, cfg: PruneConfig, progress: bool = True
) -> dict[str, torch.Tensor]:
    batch = problem.batch
    by_hook = {s.hook: s for s in problem.sites}
    _, cache = problem.model.run_with_cache(batch.tokens, names_filter=list(by_hook))
    # only real prompt positions count, not the right padding
    real = (
        torch.arange(batch.tokens.shape[1], device=batch.last_pos.device)[None, :]
        <= batch.last_pos[:, None]
    )
    scores = {}
    for hook, act in cache.items():
        dev = (channels(act, by_hook[hook]) - problem.means[hook]).abs()
        scores[hook] = dev[real].mean(0)
    return scores
