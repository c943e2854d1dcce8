"""Find the smallest set of nodes that still does a task, with the rest mean-ablated, and
validate it.

    scores  = METHODS[method](problem, cfg, progress)  # one number per node (prune_methods/)
    k       = bisect the budget: the smallest top-k by score whose calibrated task loss
              on the training pairs is <= target_loss
    circuit = those k nodes + the edges between them, validated on the test pairs:
              full model, circuit alone (sufficiency), full model with only the circuit
              ablated (necessity), and random circuits of the same size (the control)

A task the empty circuit already does (every node mean-ablated: what is left is the token
embedding -> unembedding path and the bigram table, which every circuit keeps) has no
circuit to find; it is refused (TaskTrivial) rather than reported as a circuit of one node.

Every method goes through the same bisection and validation, so their sizes compare.
Calibration (a positive logit scale and a shift) is fitted on train pairs only and applied
unchanged to test pairs, so it can sharpen or soften an answer but never invert it.
Given a grid of settings (k_coef x mask_lr), each is searched and the smallest circuit that
validates without collapsing (keeping most nodes) is kept; every try is recorded. With
selection pairs (`n_select`) the choice and the validation use them and the test pairs are
only reported; without, both use the test pairs, and the record says so.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import load
from .circuit import Circuit, Edge, Node, circuit_edges
from .circuit_metrics import (
    CircuitMetrics,
    EvalMetrics,
    FittedMetrics,
    GridRow,
    RandomCircuits,
    Validation,
)
from .device import deterministic, pick_device
from .errors import UserError
from .nodes import ablation_hooks, cached_node_means, channels, node_sites, parse_node
from .prune_methods import METHODS, Problem, PruneConfig
from .prune_methods.evaluate import Evaluator, calibrate, diff_metrics, empty_metrics
from .tasks import Task, TaskBatch, get_task, pair_loss

MAX_PAIRS = 16384  # prompt pairs per split


class TargetUnreachable(UserError):
    """The full model itself does not reach the target task loss."""

    def __init__(self, message: str, full_loss: float):
        super().__init__(message)
        self.full_loss = full_loss


class TaskTrivial(UserError):
    """The empty circuit reaches the target: the task needs no node."""


@dataclass
class SearchResult:
    """One setting of the grid searched (`_search`), kept in memory only: the chosen one
    becomes the Circuit, every one a row of its grid."""

    cfg: PruneConfig  # the setting: k_coef and mask_lr filled in
    scores: dict[str, torch.Tensor]  # per hook, one score per node (forbidden ones -inf)
    k: int  # the budget the bisection found
    masks: dict[str, torch.Tensor]  # 1.0 for the k nodes kept, on the model's device
    kept: dict[str, torch.Tensor]  # the same as booleans on the CPU
    edges: list[Edge]
    history: list[dict]  # the bisection: [{"k", "loss"}] in search order
    reached: bool  # some budget reached the target on the train pairs
    calibration: tuple[float, float]  # scale, shift fitted on the train pairs
    select: EvalMetrics  # on the pairs the grid chooses on
    test: EvalMetrics  # on the test pairs (the same object when those are the selection)
    limit: float  # the target plus 2 standard errors of the selection loss
    status: str  # ok | failed_validation | collapsed

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    def grid_row(self) -> GridRow:
        return GridRow(
            k_coef=self.cfg.k_coef,
            mask_lr=self.cfg.mask_lr,
            k=self.k,
            n_edges=self.n_edges,
            reached=self.reached,
            status=self.status,
            select_loss_calibrated=self.select.loss_calibrated,
            test_loss_calibrated=self.test.loss_calibrated,
        )


def top_k_masks(
    problem: Problem, scores: dict[str, torch.Tensor], k: int
) -> dict[str, torch.Tensor]:
    """1.0 for the k highest-scoring nodes (ties broken by position), 0.0 elsewhere."""
    flat = torch.cat([scores[s.hook].float().cpu() for s in problem.sites])
    order = torch.sort(flat, descending=True, stable=True).indices
    keep = torch.zeros_like(flat)
    keep[order[:k]] = 1.0
    keep = keep.to(next(problem.model.parameters()).device)  # the scores may live elsewhere
    return dict(
        zip(
            [s.hook for s in problem.sites],
            keep.split([s.width for s in problem.sites]),
            strict=True,
        )
    )


def bisect_budget(
    problem, scores, train_eval: Evaluator, cfg: PruneConfig
) -> tuple[int, list[dict], bool]:
    """Smallest k whose train loss reaches the target (loss assumed to fall with k) ->
    (k, history, reached). The loss is calibrated at every step, or raw when
    `cfg.calibrate_in_bisection` is off (calibration then comes after, as in the paper)."""
    total = problem.n_allowed()  # forbidden nodes rank last and are never kept
    history = []

    def loss_at(k):
        d = train_eval.diff(top_k_masks(problem, scores, k))
        if cfg.calibrate_in_bisection:
            loss, _, _ = calibrate(d, train_eval.batch, cfg.calib_steps)
        else:
            loss = float(pair_loss(d))
        history.append({"k": k, "loss": loss})
        return loss

    lo, hi = 0, total  # loss(lo) > target is assumed (nothing kept)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if loss_at(mid) <= cfg.target_loss:
            hi = mid
        else:
            lo = mid
    # hi was never tested when every midpoint failed: a control task may not be reachable.
    reached = any(h["k"] == hi and h["loss"] <= cfg.target_loss for h in history)
    return hi, history, reached or loss_at(hi) <= cfg.target_loss


def prune(
    model_dir: str | Path,
    task: str | Task,
    cfg: PruneConfig | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    data: list[str] | None = None,
    k_coefs: list[float] | None = None,
    mask_lrs: list[float] | None = None,
) -> Circuit:
    """Find and validate the circuit of `task` in the checkpoint at `model_dir`. `data`
    names the text for node means when the checkpoint has no corpus of its own (imports);
    `k_coefs` and `mask_lrs` the grid to search (see find_circuit)."""
    cfg = cfg or PruneConfig()
    _check_config(cfg)
    device = pick_device(device)
    deterministic(device)  # before the node means' first matmul (cuBLAS)
    model, tokenizer = load(model_dir, device=device)
    if tokenizer is None:
        raise UserError(
            f"{model_dir}: pruning needs the checkpoint's tokenizer.json to encode task prompts"
        )
    if isinstance(task, str):
        task = get_task(task, cfg.n_train, cfg.n_test, cfg.seed, cfg.n_select)
    else:
        task = task.with_selection(cfg.n_select, cfg.seed)
    train_b, test_b, select_b = encode_splits(task, tokenizer, model.cfg.n_ctx, device)
    means = cached_node_means(model_dir, model, tokenizer, progress=progress, data=data)
    circuit = find_circuit(
        model,
        train_b,
        test_b,
        means,
        cfg,
        progress,
        task.name,
        str(model_dir),
        token_text=lambda i: tokenizer.decode([i]),
        k_coefs=k_coefs,
        mask_lrs=mask_lrs,
        select_b=select_b,
    )
    circuit.model_dir = str(model_dir)
    return circuit


def encode_splits(task: Task, tokenizer, n_ctx: int, device) -> tuple:
    """(train, test, selection) batches on `device`; selection None when the task has none."""
    train_b, test_b = (task.encode(tokenizer, s, n_ctx).to(device) for s in ("train", "test"))
    select_b = task.encode(tokenizer, "select", n_ctx).to(device) if task.select else None
    return train_b, test_b, select_b


def _check_config(cfg: PruneConfig) -> None:
    if cfg.method not in METHODS:
        raise UserError(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    if not cfg.target_loss > 0:
        raise UserError(f"target loss must be positive, got {cfg.target_loss}")
    if cfg.batch_pairs < 1:
        raise UserError(f"batch pairs must be at least 1, got {cfg.batch_pairs}")
    for what, n in (
        ("--n-train", cfg.n_train),
        ("--n-test", cfg.n_test),
        ("--n-select", cfg.n_select),
    ):
        # ~78 KB of peak memory per pair (measured): the bound keeps a split under ~1.3 GB
        if not 0 <= n <= MAX_PAIRS:
            raise UserError(f"{what} must be between 0 and {MAX_PAIRS} pairs, got {n}")


def find_circuit(
    model,
    train_b: TaskBatch,
    test_b: TaskBatch,
    means: dict[str, torch.Tensor],
    cfg: PruneConfig,
    progress: bool = True,
    task_name: str = "task",
    where: str = "model",
    token_text=None,
    k_coefs: list[float] | None = None,
    require_full_model: bool = True,
    mask_lrs: list[float] | None = None,
    select_b: TaskBatch | None = None,
    forbidden: set[str] | None = None,
) -> Circuit:
    """The work of `prune` on objects in memory: any SparseGPT, encoded pairs, node means.
    `token_text(id) -> str` (the tokenizer's decode) adds example prompts for the viewer.
    `k_coefs` x `mask_lrs`: the grid to search (default: cfg's own values alone), chosen
    among and validated on `select_b` (default: the test pairs). A control (a nonsense
    task, a random-init model) passes require_full_model=False: the full model cannot do
    it, but a mask might still manufacture the behaviour, which is what the control asks.
    `forbidden` node names stay mean-ablated throughout (mask training, bisection, the full
    model's check, validation and the controls): the search for a backup circuit."""
    _check_config(cfg)
    t0 = time.perf_counter()
    model.requires_grad_(False)  # only masks learn
    device = next(model.parameters()).device
    deterministic(device)  # same seed -> same circuit
    sites = node_sites(model.cfg)
    means = {h: m.to(device) for h, m in means.items()}
    problem = Problem(model, sites, means, train_b, _allowed(sites, forbidden, device))
    train_eval, test_eval = Evaluator(problem, train_b), Evaluator(problem, test_b)
    select_eval = Evaluator(problem, select_b) if select_b is not None else test_eval
    full = problem.full_masks(1.0)
    full_loss, full_scale, full_shift = calibrate(train_eval.diff(full), train_b, cfg.calib_steps)
    empty = empty_metrics(train_eval, test_eval, cfg.calib_steps)
    if require_full_model:
        _check_task(full_loss, empty, cfg, f"{where}: ", task_name)

    grid = itertools.product(k_coefs or [cfg.k_coef], mask_lrs or [cfg.mask_lr])
    tries = [
        _search(
            problem,
            train_eval,
            select_eval,
            test_eval,
            dataclasses.replace(cfg, k_coef=k, mask_lr=lr),
            progress,
        )
        for k, lr in grid
    ]
    reached = [t for t in tries if t.reached]
    if not reached:
        raise TargetUnreachable(
            f"{where}: no node budget reaches the target {cfg.target_loss} on {task_name} "
            f"(train pairs; full model {full_loss:.4f})",
            full_loss,
        )
    # The smallest circuit that validates and keeps less than most of the model; failing
    # that, the smallest one that at least did not collapse (reported as failing).
    best = min(reached, key=lambda t: (t.status != "ok", t.status == "collapsed", t.n_edges))
    cfg, k, masks, scores = best.cfg, best.k, best.masks, best.scores
    scale, shift = best.calibration

    removed = {h: 1.0 - m for h, m in masks.items()}
    metrics = CircuitMetrics(
        full=test_eval.metrics(full, (full_scale, full_shift)),
        circuit=best.test,
        ablated=test_eval.raw_metrics(removed),
        empty=empty,
        random=_random_circuits(problem, train_eval, test_eval, k, cfg, best.limit),
        full_train_loss_calibrated=full_loss,
        validation=_validation(best, cfg, "select" if select_b is not None else "test"),
        grid=[t.grid_row() for t in tries],
        forbidden=sorted(forbidden) if forbidden else None,
    )

    nodes = _circuit_nodes(sites, best.kept, means, scores)
    return Circuit(
        task=task_name,
        method=cfg.method,
        target_loss=cfg.target_loss,
        nodes=nodes,
        edges=best.edges,
        n_nodes_total=sum(s.width for s in sites),
        metrics=metrics,
        calibration={"scale": scale, "shift": shift},
        model_config=dataclasses.asdict(model.cfg),
        prune_config=dataclasses.asdict(cfg),
        bisection=best.history,
        node_effects=node_effects(problem, test_b, masks, scores, (scale, shift), cfg),
        examples=examples(problem, test_b, masks, scores, token_text, cfg) if token_text else [],
        seconds=time.perf_counter() - t0,
    )


def _circuit_nodes(sites, kept, means, scores) -> list[Node]:
    """The kept nodes, each with its mean (what ablation puts in its place) and score."""
    return [
        Node(s.node(i), s.kind, s.layer, i, float(means[s.hook][i]), float(scores[s.hook][i]))
        for s in sites
        for i in kept[s.hook].nonzero().flatten().tolist()
    ]


def _check_task(
    full_loss: float, empty: FittedMetrics, cfg: PruneConfig, where: str, task: str
) -> None:
    """Refuse a search with nothing to find: the full model misses the target, or the
    empty circuit already meets it (train pairs, calibrated)."""
    if full_loss > cfg.target_loss:
        raise TargetUnreachable(
            f"{where}the full model's task loss on {task} is {full_loss:.4f} "
            f"(calibrated, train pairs), above the target {cfg.target_loss}; no circuit can reach it "
            "(train longer, or pass a higher --target-loss)",
            full_loss,
        )
    if cfg.refuse_trivial and empty.train_loss_calibrated <= cfg.target_loss:
        raise TaskTrivial(
            f"{where}{task} needs no circuit: with every node mean-ablated the task loss "
            f"is {empty.train_loss_calibrated:.4f} (calibrated, train pairs), within the "
            f"target {cfg.target_loss}; the embedding -> unembedding path and the bigram table "
            "do it alone"
        )


def _random_circuits(
    problem, train_eval, test_eval, k: int, cfg: PruneConfig, limit: float
) -> RandomCircuits:
    """The control beside every circuit: `cfg.random_draws` random sets of k allowed nodes,
    each calibrated on the train pairs and measured on the test pairs."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    rand_masks = [
        top_k_masks(
            problem,
            _forbidden_last(
                problem, {s.hook: torch.rand(s.width, generator=g) for s in problem.sites}
            ),
            k,
        )
        for _ in range(cfg.random_draws)
    ]
    runs = []
    for train_d, test_d in zip(
        train_eval.diffs(rand_masks), test_eval.diffs(rand_masks), strict=True
    ):
        _, rs, rb = calibrate(train_d, train_eval.batch, cfg.calib_steps)
        runs.append(diff_metrics(test_d, test_eval.batch, (rs, rb)))
    rl = torch.tensor([r.loss_calibrated for r in runs])
    ra = torch.tensor([r.accuracy_calibrated for r in runs])
    return RandomCircuits(
        draws=len(runs),
        loss_mean=float(rl.mean()) if len(rl) else None,
        loss_std=float(rl.std()) if len(rl) > 1 else None,
        accuracy_mean=float(ra.mean()) if len(ra) else None,
        reach_target=float((rl <= limit).float().mean()) if len(rl) else None,
    )


def _validation(best: SearchResult, cfg: PruneConfig, split: str) -> Validation:
    """The chosen circuit against the target on `split` (where the grid chose), and its
    test loss against the same rule (held out from every choice)."""
    return Validation(
        status=best.status,
        split=split,
        loss_calibrated=best.select.loss_calibrated,
        test_loss_calibrated=best.test.loss_calibrated,
        limit=best.limit,
        tolerance=best.limit - cfg.target_loss,
        tolerance_rule="2 standard errors of the circuit's per-pair loss on that split",
        test_within_limit=best.test.loss_calibrated
        <= cfg.target_loss + 2 * (best.test.loss_se or 0.0),
    )


def _search(
    problem,
    train_eval: Evaluator,
    select_eval: Evaluator,
    test_eval: Evaluator,
    cfg: PruneConfig,
    progress,
) -> SearchResult:
    """One pruning setting: scores, bisection, calibration on train pairs, validation on
    the selection pairs, the test pairs measured for the record, and whether the circuit
    collapsed (kept `collapse_frac` of all nodes)."""
    torch.manual_seed(cfg.seed)
    scores = _forbidden_last(problem, METHODS[cfg.method](problem, cfg, progress))
    k, history, reached = bisect_budget(problem, scores, train_eval, cfg)
    masks = top_k_masks(problem, scores, k)
    _, scale, shift = calibrate(train_eval.diff(masks), train_eval.batch, cfg.calib_steps)
    select = select_eval.metrics(masks, (scale, shift))
    test = select if select_eval is test_eval else test_eval.metrics(masks, (scale, shift))
    limit = cfg.target_loss + 2 * (select.loss_se or 0.0)
    total = sum(s.width for s in problem.sites)
    kept = {h: m.cpu() > 0 for h, m in masks.items()}
    edges = circuit_edges(problem.model, problem.sites, kept)
    status = (
        "collapsed"
        if k >= cfg.collapse_frac * total
        else "ok"
        if select.loss_calibrated <= limit
        else "failed_validation"
    )
    return SearchResult(
        cfg=cfg,
        scores=scores,
        k=k,
        masks=masks,
        kept=kept,
        edges=edges,
        history=history,
        reached=reached,
        calibration=(scale, shift),
        select=select,
        test=test,
        limit=limit,
        status=status,
    )


def _allowed(sites, forbidden: set[str] | None, device) -> dict[str, torch.Tensor] | None:
    """{hook: 1.0 per node, 0.0 where forbidden}; None when nothing is forbidden."""
    if not forbidden:
        return None
    allowed = {s.hook: torch.ones(s.width, device=device) for s in sites}
    for name in forbidden:
        hook, i = parse_node(name)
        if hook not in allowed or not 0 <= i < allowed[hook].numel():
            raise UserError(f"forbidden node {name!r} is not a node of this model")
        allowed[hook][i] = 0.0
    return allowed


def _forbidden_last(problem: Problem, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scores with every forbidden node at -inf, so no top-k takes one before the others."""
    if problem.allowed is None:
        return scores
    return {
        h: torch.where(problem.allowed[h].to(sc.device) > 0, sc.float(), float("-inf"))
        for h, sc in scores.items()
    }


def _ranked_circuit_nodes(problem: Problem, masks, scores, limit: int) -> list[tuple]:
    """(site, index) of the circuit's nodes, highest score first, at most `limit`."""
    nodes = [
        (s, i) for s in problem.sites for i in (masks[s.hook] > 0).nonzero().flatten().tolist()
    ]
    return (
        nodes[:limit]
        if len(nodes) <= limit
        else sorted(nodes, key=lambda n: -float(scores[n[0].hook][n[1]]))[:limit]
    )


def node_effects(problem, test_b, masks, scores, calibration, cfg: PruneConfig) -> dict[str, float]:
    """Task loss increase when one node alone is removed from the circuit (calibrated as
    the circuit is), on up to `effect_pairs` test pairs, for up to `effect_nodes` nodes."""
    sub = test_b.subset(range(min(cfg.effect_pairs, len(test_b) // 2)))
    ev = Evaluator(problem, sub)
    base = ev.metrics(masks, calibration).loss_calibrated
    nodes = _ranked_circuit_nodes(problem, masks, scores, cfg.effect_nodes)
    without = []
    for site, i in nodes:
        m = dict(masks)
        m[site.hook] = masks[site.hook].clone()
        m[site.hook][i] = 0.0
        without.append(m)
    return {
        site.node(i): round(diff_metrics(d, sub, calibration).loss_calibrated - base, 5)
        for (site, i), d in zip(nodes, ev.diffs(without), strict=True)
    }


@torch.no_grad()
def examples(problem, test_b, masks, scores, token_text, cfg: PruneConfig) -> list[dict]:
    """A few test prompts with every circuit node's activation at each token, run on the
    circuit alone (what the viewer shows when a node is selected)."""
    sub = test_b.subset(range(min(cfg.example_pairs, len(test_b) // 2)))
    nodes = _ranked_circuit_nodes(problem, masks, scores, cfg.effect_nodes)
    cache = {}

    def grab(act, hook):
        cache[hook.name] = channels(act, by_hook[hook.name])

    by_hook = {s.hook: s for s in problem.sites}
    hooks = ablation_hooks(problem.sites, problem.means, masks)
    problem.model.run_with_hooks(sub.tokens, fwd_hooks=hooks + [(h, grab) for h in by_hook])
    out = []
    for row in range(len(sub)):
        n = int(sub.last_pos[row]) + 1
        out.append(
            {
                "label": f"pair {row // 2}, prompt {'ab'[row % 2]}",
                "tokens": [token_text(int(t)) for t in sub.tokens[row, :n]],
                "correct": token_text(int(sub.correct[row])),
                "incorrect": token_text(int(sub.incorrect[row])),
                "activations": {
                    site.node(i): [round(float(v), 4) for v in cache[site.hook][row, :n, i]]
                    for site, i in nodes
                },
            }
        )
    return out
