"""The base models of each regime: a pretrained checkpoint fine-tuned on the compound task,
the same architecture trained from scratch, or left untrained (the control)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import load
from ..model import SparseGPT
from ..sparsity import WeightSparsifier
from ..tasks.compound import CompoundBatch, compound_loss
from .config import PER_CHECKPOINT, ModularityConfig


def _support(model: SparseGPT) -> dict[str, torch.Tensor]:
    return {n: p != 0 for n, p in model.named_parameters() if p.dim() == 2 and (p == 0).any()}


def train_on_compound(
    model: SparseGPT, batch: CompoundBatch, steps: int, lr: float, batch_size: int, seed: int
) -> float:
    """Train on the compound task's prompts (next-token loss of the answer); weights that are
    zero stay zero, so a weight-sparse model keeps its sparsity. Returns the last loss."""
    support = _support(model)
    params = dict(model.named_parameters())
    model.requires_grad_(True).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        sub = batch.subset(torch.randperm(len(batch), generator=g)[:batch_size])
        loss = compound_loss(model(sub.tokens), sub)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for n, keep in support.items():
                params[n].mul_(keep)
    model.requires_grad_(False).eval()
    return float(loss.detach())


def base_model(
    model_dir: Path,
    train_cfg,
    regime: str,
    seed: int,
    batch: CompoundBatch,
    cfg: ModularityConfig,
    device: torch.device | str = "cpu",
) -> SparseGPT:
    """The model of one regime (see the package docstring), ready for mask search on
    `device` (where `batch` lives); `train_cfg` is the checkpoint's (its density is kept)."""
    model, _ = load(model_dir, device=device)
    if regime in PER_CHECKPOINT:  # shuffled: the same model, other mask-search data
        train_on_compound(model, batch, cfg.finetune_steps, cfg.finetune_lr, cfg.batch_size, seed)
        return model
    torch.manual_seed(seed)
    fresh = SparseGPT(model.cfg).to(device)  # drawn on the CPU: the same init on any device
    if train_cfg is not None and train_cfg.density < 1.0:
        WeightSparsifier(fresh, train_cfg).apply(train_cfg.steps)  # the base's final density
    fresh.eval().requires_grad_(False)
    if regime == "scratch":
        train_on_compound(fresh, batch, cfg.finetune_steps, cfg.scratch_lr, cfg.batch_size, seed)
    return fresh
