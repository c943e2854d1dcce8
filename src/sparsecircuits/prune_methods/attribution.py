"""First-order attribution (EAP-style): the estimated change of the task loss if a node
were mean-ablated, (activation - mean) . dLoss/dactivation, summed over prompts and
positions. It is the gradient of the loss with respect to a node's mask at mask = 1, so it
reuses the same ablation hooks as the learned masks."""

from __future__ import annotations

import torch

from ..tasks import task_loss
from .base import Problem, PruneConfig


def attribution_scores(
    problem: Problem, cfg: PruneConfig, progress: bool = True
) -> dict[str, torch.Tensor]:
    masks = problem.full_masks(1.0, requires_grad=True)
    task_loss(problem.logits(masks), problem.batch).backward()
    scores = {}
    for h, m in masks.items():
        assert m.grad is not None  # each mask requires grad and feeds the loss
        scores[h] = m.grad.abs()
    return scores
