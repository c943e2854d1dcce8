"""Activation sparsity (after Jin et al. 2026): do hidden states get sparser on unfamiliar
and harder inputs, and does that emerge during training?

Metrics, defined once; each maps hidden-state vectors h [..., d] to one number per vector:
- topk_energy(h, frac): share of sum(h_i^2) held by the largest `frac` of the h_i^2
  ("energy" is the squared value, here and everywhere); higher = sparser.
- effective_rank(h): exp(entropy of p), p_i = h_i^2 / sum h^2, divided by d; lower = sparser.
- hoyer(h): (sqrt(d) - L1/L2) / (sqrt(d) - 1), 0 for a flat vector, 1 for a one-hot one.
- frac_above(h): fraction of |h_i| above mean(|h|) + 1 std(|h|) (no sparser direction).
- frac_zero(h): fraction of exact zeros (AbsTopK and ReLU make them).
A vector of all zeros has no energy to distribute: its ratio metrics are NaN, not 0 or 1.
Each is read at a hook's last (prompt) token and averaged over the positions of an input."""

from __future__ import annotations

import math

import torch

EPS = 1e-30


def _energy(h: torch.Tensor) -> torch.Tensor:
    return h.double().pow(2)


def topk_energy(h: torch.Tensor, frac: float) -> torch.Tensor:
    e = _energy(h)
    k = max(1, math.ceil(frac * h.shape[-1]))
    total = e.sum(-1)
    top = e.topk(k, dim=-1).values.sum(-1)
    return torch.where(total > 0, top / total.clamp_min(EPS), torch.nan)


def effective_rank(h: torch.Tensor) -> torch.Tensor:
    e = _energy(h)
    total = e.sum(-1, keepdim=True)
    p = e / total.clamp_min(EPS)
    entropy = -(p * torch.log(p.clamp_min(EPS))).sum(-1)
    return torch.where(total.squeeze(-1) > 0, entropy.exp() / h.shape[-1], torch.nan)


def hoyer(h: torch.Tensor) -> torch.Tensor:
    d = h.shape[-1]
    a = h.double().abs()
    l1, l2 = a.sum(-1), a.pow(2).sum(-1).sqrt()
    value = (math.sqrt(d) - l1 / l2.clamp_min(EPS)) / (math.sqrt(d) - 1)
    return torch.where(l2 > 0, value, torch.nan)


def frac_above(h: torch.Tensor) -> torch.Tensor:
    a = h.double().abs()
    thresh = a.mean(-1, keepdim=True) + a.std(-1, keepdim=True, correction=0)
    return (a > thresh).double().mean(-1)


def frac_zero(h: torch.Tensor) -> torch.Tensor:
    return (h == 0).double().mean(-1)


METRICS = {
    "top5_energy": lambda h: topk_energy(h, 0.05),
    "top10_energy": lambda h: topk_energy(h, 0.10),
    "effective_rank": effective_rank,
    "hoyer": hoyer,
    "frac_above_mean_1std": frac_above,
    "frac_zero": frac_zero,
}


# Which way is sparser: +1 if a higher value is sparser, -1 if lower; None: no direction.
SPARSER = {
    "top5_energy": 1,
    "top10_energy": 1,
    "effective_rank": -1,
    "hoyer": 1,
    "frac_above_mean_1std": None,
    "frac_zero": 1,
}
POSITIONS = ("last", "all_positions")


def sparsity_metrics(h: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every metric for every vector: {name: tensor of h.shape[:-1]}."""
    return {name: fn(h) for name, fn in METRICS.items()}
