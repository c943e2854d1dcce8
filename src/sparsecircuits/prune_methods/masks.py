"""Learned node masks (Gao et al. 2025): one real parameter per node, clamped to [-1, 1];
the forward pass keeps a node iff its parameter is positive (Heaviside), the backward pass
pretends the step was a sigmoid. Loss = task loss + k_coef * (number of kept nodes).

During training each node is kept with probability sigmoid(tau / mask_noise) (logistic
noise added before the step). Deterministic masks fail on a real case (tests/test_planted):
nodes whose task gradient is tiny at the start (a saturated attention pattern) all drift
down in lockstep, switch off in the same step, and a dead q/k chain then gets exactly zero
gradient forever. Noise decorrelates them and lets a dead chain switch back on."""

from __future__ import annotations

import torch
from tqdm import tqdm

from .. import threads
from ..tasks import task_loss
from .base import Problem, PruneConfig


class HeavisideSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tau):
        ctx.save_for_backward(tau)
        return (tau > 0).to(tau.dtype)

    @staticmethod
    def backward(ctx, grad):
        (tau,) = ctx.saved_tensors
        s = torch.sigmoid(tau)
        return grad * s * (1 - s)


def _logistic(shape, g: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=g).clamp(1e-6, 1 - 1e-6)
    return torch.log(u) - torch.log1p(-u)


def learned_mask_scores(
    problem: Problem, cfg: PruneConfig, progress: bool = True
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(cfg.seed)
    hooks, widths = [s.hook for s in problem.sites], [s.width for s in problem.sites]
    # One logit per node in one flat vector, viewed per site: the noise, the step, Adam,
    # the clamp and the running mean are then one op each, not one per site (16 on quick).
    device = next(problem.model.parameters()).device
    tau = torch.full((sum(widths),), cfg.mask_init, device=device, requires_grad=True)
    ema = tau.detach().clone()
    opt = torch.optim.Adam([tau], lr=cfg.mask_lr)
    n_pairs = len(problem.batch) // 2
    for _ in tqdm(range(cfg.steps), desc="masks", unit="step", disable=not progress, leave=False):
        threads.adapt()
        sub = problem.batch.subset(torch.randperm(n_pairs, generator=g)[: cfg.batch_pairs])
        mask = HeavisideSTE.apply(tau + cfg.mask_noise * _logistic(tau.shape, g).to(device))
        masks = dict(zip(hooks, mask.split(widths), strict=True))
        loss = task_loss(problem.logits(masks, sub), sub) + cfg.k_coef * mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            tau.clamp_(-1.0, 1.0)
            ema.mul_(cfg.score_ema).add_((1 - cfg.score_ema) * tau)
    return {h: e.clone() for h, e in zip(hooks, ema.split(widths), strict=True)}  # own storage
