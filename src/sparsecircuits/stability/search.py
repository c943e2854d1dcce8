"""One (model, task) made ready for repeated searches, one search, and the loss of any
node set alone.

The study's `prune` draws the prompt pairs and the search's randomness from one seed
(PruneConfig.seed). Here they are apart: the pairs are encoded once from `pair_seed`, and
`find_circuit` is called on them with PruneConfig.seed as the search seed alone (mask
noise, pair order, the random controls). A pair-seed run redraws only the train pairs the
search fits its masks and calibration on; the selection pairs it is validated on and the
test pairs it is measured on stay those of `pair_seed`, so every run is judged alike.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import load
from ..circuit import Circuit
from ..circuit_metrics import CircuitMetrics
from ..errors import UserError
from ..model import SparseGPT
from ..nodes import cached_node_means, node_sites, parse_node
from ..prune import TargetUnreachable, encode_splits, find_circuit
from ..prune_methods import Evaluator, Problem, PruneConfig, calibrate
from ..tasks import TaskBatch, get_task
from .records import SearchRun
from .rephrase import rephrase


@dataclass
class Setup:
    model: SparseGPT  # frozen
    means: dict[str, torch.Tensor]
    train: TaskBatch
    test: TaskBatch
    select: TaskBatch | None
    cfg: PruneConfig  # every search's settings; its seed is replaced per run
    task_name: str = "task"
    where: str = "model"
    # pair seed -> train pairs drawn from it (disjoint from the selection and test pairs)
    train_pairs: Callable[[int], TaskBatch] | None = None
    # rephrasing -> (train, test, selection) pairs of that surface variant (rephrase.py)
    rephrased: Callable[[str], tuple] | None = None

    @property
    def n_nodes_total(self) -> int:
        return sum(s.width for s in node_sites(self.model.cfg))


def setup_from_dir(
    model_dir: str | Path, task: str, cfg: PruneConfig, pair_seed: int, device="cpu"
) -> Setup:
    """A checkpoint and a task (built-in or .jsonl) with its pairs from `pair_seed`."""
    model, tok = load(model_dir, device=device)
    if tok is None:
        raise UserError(f"{model_dir}: no tokenizer.json (needed to encode the task prompts)")
    model.requires_grad_(False)
    n_ctx = model.cfg.n_ctx
    base = get_task(task, cfg.n_train, cfg.n_test, pair_seed, cfg.n_select)
    train_b, test_b, select_b = encode_splits(base, tok, n_ctx, device)
    held = {p for pair in base.test + base.select for p in (pair.prompt_a, pair.prompt_b)}

    def train_pairs(seed: int) -> TaskBatch:
        other = get_task(task, cfg.n_train, cfg.n_test, seed, cfg.n_select).train
        train = [p for p in other if not {p.prompt_a, p.prompt_b} & held]
        if not train:
            raise UserError(f"{task}: pair seed {seed} leaves no train pair apart from the test")
        return dataclasses.replace(base, train=train).encode(tok, "train", n_ctx).to(device)

    def rephrased(variant: str) -> tuple:
        return encode_splits(rephrase(base, variant, pair_seed), tok, n_ctx, device)

    means = cached_node_means(model_dir, model, tok, progress=False)
    return Setup(
        model,
        means,
        train_b,
        test_b,
        select_b,
        cfg,
        base.name,
        str(model_dir),
        train_pairs,
        rephrased,
    )


def search(
    setup: Setup,
    search_seed: int,
    pair_seed: int,
    train: TaskBatch | None = None,
    forbidden: set[str] | None = None,
) -> tuple[SearchRun, Circuit | None]:
    """One search at `search_seed` on `train` (default: the setup's train pairs), the
    `forbidden` nodes held mean-ablated. An unreachable target is an outcome, not an error."""
    cfg = dataclasses.replace(setup.cfg, seed=search_seed)
    t0 = time.perf_counter()
    n_forbidden = len(forbidden or ())
    try:
        c = find_circuit(
            setup.model,
            train if train is not None else setup.train,
            setup.test,
            setup.means,
            cfg,
            False,
            setup.task_name,
            setup.where,
            select_b=setup.select,
            forbidden=forbidden,
        )
    except TargetUnreachable:
        run = SearchRun(search_seed, pair_seed, "unreachable", forbidden=n_forbidden)
        run.seconds = time.perf_counter() - t0
        return run, None
    assert isinstance(c.metrics, CircuitMetrics)  # find_circuit types the metrics it measures
    run = SearchRun(
        search_seed,
        pair_seed,
        c.metrics.validation.status,
        nodes=sorted(n.name for n in c.nodes),
        edges=sorted([e.src, e.dst] for e in c.edges),
        test_loss_calibrated=c.metrics.circuit.loss_calibrated,
        forbidden=n_forbidden,
        seconds=time.perf_counter() - t0,
    )
    return run, c


def node_set_metrics(setup: Setup, nodes: set[str]) -> dict:
    """A node set alone (every other node mean-ablated): the logit calibration fitted on the
    train pairs, the calibrated loss and accuracy on the test pairs."""
    device = next(setup.model.parameters()).device
    sites = node_sites(setup.model.cfg)
    means = {h: m.to(device) for h, m in setup.means.items()}
    problem = Problem(setup.model, sites, means, setup.train)
    masks = problem.full_masks(0.0)
    for name in nodes:
        hook, i = parse_node(name)
        masks[hook][i] = 1.0
    train_d = Evaluator(problem, setup.train).diff(masks)
    _, scale, shift = calibrate(train_d, setup.train, setup.cfg.calib_steps)
    m = Evaluator(problem, setup.test).metrics(masks, (scale, shift))
    return {
        "nodes": len(nodes),
        "loss_calibrated": m.loss_calibrated,
        "accuracy_calibrated": m.accuracy_calibrated,
        "loss_se": m.loss_se,
        "within_target": m.loss_calibrated <= setup.cfg.target_loss + 2 * (m.loss_se or 0.0),
    }
