"""Weight sparsity: after every optimizer step keep only the largest-|w| entries of each
weight matrix (Gao et al. 2025). Gradients and Adam moments stay dense, so a zeroed weight
can come back if its gradient keeps pushing.

Which parameters are sparsified, and how much:
- "matrix": every weight matrix inside the blocks, at the scheduled `density`;
- "embed":  token/positional embeddings and the unembedding, at `embed_density`;
- "bias":   biases and the logit bias, at `bias_density`;
- "dense":  norms, attention sinks and the bigram table, never sparsified.
The density anneals linearly from 1.0 to its target over `anneal_frac` of training.
"""

from __future__ import annotations

import torch
from torch import nn

from . import fused
from .config import TrainConfig
from .fused import kth_largest


def param_kind(name: str) -> str:
    leaf = name.rsplit(".", 1)[-1]
    if name == "bigram" or leaf == "sink_logit" or leaf in ("w", "b"):  # norm gains/offsets
        return "dense"
    if name in ("embed.weight", "pos_embed.weight", "unembed.weight"):
        return "embed"
    if leaf == "bias" or name == "logit_bias":
        return "bias"
    return "matrix"


def scheduled_density(target: float, step: int, total_steps: int, anneal_frac: float) -> float:
    """Density in force after `step` optimizer steps: 1.0 -> target linearly, then flat."""
    anneal_steps = anneal_frac * total_steps
    if anneal_steps <= 0 or step >= anneal_steps:
        return target
    return 1.0 - (1.0 - target) * step / anneal_steps


def topk_mask(w: torch.Tensor, density: float, min_per_neuron: int = 0) -> torch.Tensor | None:
    """Boolean mask of the max(k, reserved) largest-|w| entries, k = round(density * numel).

    For a matrix [out, in], each output neuron (row) first reserves its `min_per_neuron`
    largest entries, so no neuron dies; the remaining budget goes to the largest of the rest.
    Selection (the k-th largest as a threshold), not a sort; entries tied with the threshold
    are all kept, and an exact zero is never "kept" (it stays zero either way).
    None means "keep everything".
    """
    n = w.numel()
    k = max(1, round(density * n))
    if k >= n:
        return None
    if fused.REFERENCE:
        return _topk_mask_by_index(w, k, min_per_neuron)
    a = w.detach().abs()
    tiny = torch.finfo(a.dtype).tiny
    keep = torch.zeros(w.shape, dtype=torch.bool, device=w.device)
    if w.dim() == 2 and min_per_neuron > 0:
        m = min(min_per_neuron, w.shape[1])
        keep = a >= kth_largest(a, m).clamp_min(tiny)
        a = a.masked_fill(keep, -1.0)  # reserved entries must not be picked twice
        k -= m * w.shape[0]
    if k > 0:
        keep |= a >= kth_largest(a.view(1, -1), k).clamp_min(tiny).view(())
    return keep


def _topk_mask_by_index(w: torch.Tensor, k: int, min_per_neuron: int) -> torch.Tensor:
    """topk_mask as `fused.reference()` runs it: top-k indices per row, then over the whole
    matrix (exactly max(k, reserved) kept, ties or not)."""
    a = w.detach().abs()
    keep = torch.zeros(w.shape, dtype=torch.bool, device=w.device)
    if w.dim() == 2 and min_per_neuron > 0:
        m = min(min_per_neuron, w.shape[1])
        keep.scatter_(1, a.topk(m, dim=1, sorted=False).indices, True)
        a = a.masked_fill(keep, -1.0)
        k -= m * w.shape[0]
    if k > 0:
        keep.view(-1)[a.view(-1).topk(k, sorted=False).indices] = True
    return keep


class WeightSparsifier:
    """Projects a model's parameters onto the scheduled density, in place."""

    def __init__(self, model: nn.Module, cfg: TrainConfig):
        self.cfg = cfg
        targets = {
            "matrix": cfg.density,
            "embed": cfg.embed_density_target,
            "bias": cfg.bias_density_target,
        }
        self.params = [
            (name, p, targets[param_kind(name)])
            for name, p in model.named_parameters()
            if param_kind(name) != "dense" and targets[param_kind(name)] < 1.0
        ]

    def density_scale(self, step: int) -> float:
        """The matrix density in force after `step` steps (the learning rate scales by 1/sqrt of it)."""
        return scheduled_density(self.cfg.density, step, self.cfg.steps, self.cfg.anneal_frac)

    @torch.no_grad()
    def apply(self, step: int) -> None:
        for _name, p, target in self.params:
            d = scheduled_density(target, step, self.cfg.steps, self.cfg.anneal_frac)
            keep = topk_mask(p, d, self.cfg.min_per_neuron)
            if keep is not None:
                p.masked_fill_(~keep, 0.0)


def density_report(model: nn.Module) -> list[dict]:
    """Per-parameter fraction of nonzero entries, grouped by kind."""
    rows = []
    for name, p in model.named_parameters():
        nz = int((p != 0).sum())
        rows.append(
            dict(
                name=name,
                kind=param_kind(name),
                shape=list(p.shape),
                nonzero=nz,
                numel=p.numel(),
                density=nz / p.numel(),
            )
        )
    return rows
