"""Masks over individual weights: continuous sparsification (Savarese et al. 2020, as used by
Lepori et al. 2023 to find subroutine subnetworks) and weight-level ablation.

A weight mask covers chosen `nn.Linear` layers of a frozen model. With mask m on layer
y = W x + c, the layer computes

    y = (W * m) x  +  (W * (1 - m)) x_removed  +  c

where x_removed is 0 or the layer's mean input, by the `Ablation` mode.

Continuous sparsification learns one logit s per weight: the soft mask sigmoid(temp * s)
is used in training while temp grows geometrically from 1 to `temp_final`, so the soft mask
hardens into a binary one; the test-time mask is s > 0. The loss is the task loss plus
`l1` times the sum of the soft mask.
"""

from __future__ import annotations

import fnmatch
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .errors import UserError
from .tasks import TaskBatch, task_accuracy, task_loss


class Ablation(str, Enum):
    """What the weights a mask removes pass on. A str, so the value is what result files hold
    (write `mode.value` in text: formatting a str-Enum changed in Python 3.12)."""

    ZERO = "zero"
    """x_removed = 0: the removed weights are gone."""
    MEAN = "mean"
    """x_removed = the layer's input averaged over the task's prompts: the removed weights
    still pass on their average contribution, as mean-ablated nodes do in `nodes.py`."""


@dataclass
class MaskConfig:
    layers: tuple[str, ...] = ("blocks.*",)  # fnmatch patterns over nn.Linear module names
    steps: int = 300
    lr: float = 0.05
    init: float = 0.05  # the mask logit's starting value (all weights softly kept)
    init_jitter: float = (
        0.01  # per-seed noise on the start, so mask seeds differ beyond batch order
    )
    temp_final: float = 200.0
    l1: float = 1e-4  # per weight of the soft mask, summed
    batch_pairs: int = 32


def masked_layers(model: nn.Module, patterns: tuple[str, ...] | list[str]) -> list[str]:
    """Names of the nn.Linear modules matching any pattern, in model order."""
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and any(fnmatch.fnmatchcase(n, p) for p in patterns)
    ]
    if not names:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise UserError(
            f"no linear layer matches {list(patterns)}; the model's are e.g. {linears[:4]}"
        )
    return names


@torch.no_grad()
def input_means(model, names: list[str], windows) -> dict[str, torch.Tensor]:
    """Mean input of each named layer over all positions of the token windows."""
    modules = dict(model.named_modules())
    sums: dict[str, float | torch.Tensor] = {n: 0.0 for n in names}
    count = 0
    handles = []

    def grab(name):
        def hook(module, inputs):
            x = inputs[0]
            sums[name] = sums[name] + x.reshape(-1, x.shape[-1]).double().sum(0)

        return hook

    for n in names:
        handles.append(modules[n].register_forward_pre_hook(grab(n)))
    try:
        for tokens in windows:
            model(tokens)
            count += tokens.numel()
    finally:
        for h in handles:
            h.remove()
    means = {}
    for n, s in sums.items():
        assert isinstance(s, torch.Tensor), f"{n}: no window reached it"  # 0.0 until one does
        means[n] = (s / count).float()
    return means


@contextmanager
def weight_masks(
    model,
    masks: dict[str, torch.Tensor],
    mode: Ablation | str = Ablation.ZERO,
    means: dict[str, torch.Tensor] | None = None,
):
    """Inside the block, the named layers compute with their weights masked (see the
    module docstring). Masks may be soft and carry gradients."""
    if mode not in set(Ablation):
        raise UserError(f"ablation mode must be one of {[a.value for a in Ablation]}, not {mode!r}")
    if mode == Ablation.MEAN and means is None:
        raise UserError("mean ablation needs the layers' input means")
    modules = dict(model.named_modules())
    handles = []

    def make(name):
        def hook(module, inputs, output):
            m = masks[name]
            y = F.linear(inputs[0], module.weight * m, module.bias)
            if mode == Ablation.MEAN:
                y = y + F.linear(means[name], module.weight * (1 - m))
            return y

        return hook

    for name in masks:
        handles.append(modules[name].register_forward_hook(make(name)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def continuous_sparsification(
    model, names: list[str], batch: TaskBatch, cfg: MaskConfig, seed: int, progress: bool = False
) -> dict[str, torch.Tensor]:
    """A binary mask over the named layers' weights that keeps the task (trained on `batch`'s
    pairs, model frozen) with as few weights as the L1 penalty buys."""
    g = torch.Generator().manual_seed(seed)
    model.requires_grad_(False)
    modules = dict(model.named_modules())
    logits = {
        n: (cfg.init + cfg.init_jitter * torch.randn(modules[n].weight.shape, generator=g))
        .to(modules[n].weight.device)
        .requires_grad_(True)
        for n in names
    }
    opt = torch.optim.Adam(logits.values(), lr=cfg.lr)
    n_pairs = len(batch) // 2
    for step in tqdm(range(cfg.steps), desc="weight mask", disable=not progress, leave=False):
        temp = cfg.temp_final ** (step / max(1, cfg.steps - 1))
        soft = {n: torch.sigmoid(temp * s) for n, s in logits.items()}
        sub = batch.subset(torch.randperm(n_pairs, generator=g)[: cfg.batch_pairs])
        with weight_masks(model, soft):
            loss = task_loss(model(sub.tokens), sub)
        loss = loss + cfg.l1 * sum(m.sum() for m in soft.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {n: (s.detach() > 0).float() for n, s in logits.items()}


@torch.no_grad()
def masked_accuracy(
    model, masks, batch: TaskBatch, mode: Ablation | str = Ablation.ZERO, means=None
) -> float:
    with weight_masks(model, masks, mode, means):
        return task_accuracy(model(batch.tokens), batch)


def kept_weights(model, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The mask restricted to weights that exist (nonzero): in a weight-sparse model the zero
    weights do nothing whether masked or not, so they are not part of any subnetwork."""
    modules = dict(model.named_modules())
    return {n: (m > 0) & (modules[n].weight != 0) for n, m in masks.items()}


def jaccard(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> float | None:
    """|x & y| / |x | y| over boolean masks with the same keys; None when both are empty."""
    inter = sum(int((x[k] & y[k]).sum()) for k in x)
    union = sum(int((x[k] | y[k]).sum()) for k in x)
    return inter / union if union else None
