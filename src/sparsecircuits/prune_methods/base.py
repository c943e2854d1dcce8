"""The shared type of every pruning method: a `Problem` in, one score per node out.

A method returns {hook name: scores [width]}; higher means "keep first". The bisection in
`prune.py` then keeps the top-k nodes by score, so methods differ only in their ordering.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import fused
from ..model import SparseGPT
from ..nodes import NodeSite, ablation_hooks
from ..tasks import TaskBatch


@dataclass
class PruneConfig:
    target_loss: float = 0.15  # task loss (summed over a pair) the circuit must reach
    method: str = "masks"  # masks | attribution | magnitude | random
    steps: int = 300  # mask-training steps (masks only)
    mask_lr: float = 0.05
    k_coef: float = 1e-3  # penalty per kept node, against the task loss
    mask_init: float = 1.0  # every node starts kept
    mask_noise: float = 0.1  # logistic noise on the mask logits while training (see masks.py)
    score_ema: float = 0.95  # masks are ranked by a running mean of their logits (fewer ties)
    batch_pairs: int = 32
    n_train: int = 128
    n_test: int = 128
    # Selection pairs: a grid's setting is chosen and the circuit validated on them, so the
    # test pairs are only reported. 0: validate on the test pairs (a single search chooses
    # nothing; a grid then selects on the test pairs, which the record says).
    n_select: int = 0
    seed: int = 0
    random_draws: int = 10  # random circuits of the same size: the control
    calib_steps: int = 16  # L-BFGS steps of the logit scale/shift calibration
    # Calibrate at every bisection step (True), or bisect on the raw loss and calibrate the
    # found circuit after (the paper's order; never smaller, as calibration only lowers loss).
    calibrate_in_bisection: bool = True
    collapse_frac: float = 0.5  # a circuit keeping this share of all nodes is no circuit
    # Refuse a task the empty circuit already does (its loss within the target): every
    # circuit keeps the embedding -> unembedding path and the bigram table, so such a task
    # measures no node. Off only where a test needs the pipeline to run on a model at chance.
    refuse_trivial: bool = True
    # For the viewer: per-node ablation effects and example activations (bounded cost).
    effect_nodes: int = 300
    effect_pairs: int = 32
    example_pairs: int = 2


@dataclass
class Problem:
    """A frozen model, its node sites and means, and the task's training pairs."""

    model: SparseGPT
    sites: list[NodeSite]
    means: dict[str, torch.Tensor]
    batch: TaskBatch
    # {hook: 0/1 per node}: forbidden nodes (0) stay mean-ablated whatever their mask says,
    # in training, bisection and validation alike (None: every node may be kept)
    allowed: dict[str, torch.Tensor] | None = None

    def logits(
        self, masks: dict[str, torch.Tensor], batch: TaskBatch | None = None
    ) -> torch.Tensor:
        """Logits at each prompt's last position [2N, vocab], with every node scaled by its
        mask (0 = mean-ablated) and a forbidden node held at 0."""
        batch = batch if batch is not None else self.batch
        if self.allowed is not None:
            masks = {h: m * self.allowed[h] for h, m in masks.items()}
        hooks = ablation_hooks(self.sites, self.means, masks)
        # causal: the padding after the longest prompt's last token changes nothing read here
        # (fused.reference(), the code before the speed work, runs the padding too)
        cut = batch.tokens.shape[1] if fused.REFERENCE else int(batch.last_pos.max()) + 1
        tokens = batch.tokens[:, :cut]
        return self.model.run_with_hooks(tokens, fwd_hooks=hooks, positions=batch.last_pos)

    def n_allowed(self) -> int:
        """How many nodes a circuit may keep (all but the forbidden ones)."""
        if self.allowed is None:
            return sum(s.width for s in self.sites)
        return int(sum(float(a.sum()) for a in self.allowed.values()))

    def full_masks(
        self, value: float = 1.0, requires_grad: bool = False
    ) -> dict[str, torch.Tensor]:
        device = next(self.model.parameters()).device
        return {
            s.hook: torch.full((s.width,), value, device=device, requires_grad=requires_grad)
            for s in self.sites
        }


# (problem, config, progress bar on?) -> {hook: score per node}
ScoreFn = Callable[[Problem, PruneConfig, bool], dict[str, torch.Tensor]]
