"""Ground truth for circuit pruning: the hand-built model of `sparsecircuits.planted` (its
docstring explains the mechanism), and the check that `find_circuit` recovers exactly that
mechanism's nodes."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import pytest
import torch

from sparsecircuits.model import SparseGPT
from sparsecircuits.nodes import (
    NodeSite,
    ablation_hooks,
    channels,
    compute_node_means,
    node_sites,
    parse_node,
)
from sparsecircuits.planted import (
    FILLERS,
    N_CTX,
    SATURATED,
    SOFT,
    B,
    X,
    Y,
    planted_batch,
    planted_model,
)
from sparsecircuits.prune import find_circuit
from sparsecircuits.prune_methods import METHODS, PruneConfig, calibrate
from sparsecircuits.tasks import TaskBatch, pair_loss, task_logit_diff

TARGET = 0.15

PLANTED = {
    "blocks.0.ln1.hook_normalized[1]",  # key sign, read by v[0]
    "blocks.0.ln1.hook_normalized[2]",  # key marker, read by k[0]
    "blocks.0.ln1.hook_normalized[3]",  # query marker, read by q[0]
    "blocks.0.attn.hook_q[0]",
    "blocks.0.attn.hook_k[0]",
    "blocks.0.attn.hook_v[0]",
    "blocks.0.hook_attn_out[4]",
}
# Nodes that carry real, varying signal but never reach the X - Y logit difference.
DISTRACTORS = {
    "blocks.0.ln1.hook_normalized[0]",
    "blocks.0.ln1.hook_normalized[5]",
    "blocks.0.attn.hook_q[2]",
    "blocks.0.attn.hook_k[2]",
    "blocks.0.attn.hook_v[2]",
    "blocks.0.attn.hook_v[3]",
    "blocks.0.hook_attn_out[6]",
    "blocks.0.hook_attn_out[9]",
    "blocks.0.ln2.hook_normalized[4]",
    "blocks.0.ln2.hook_normalized[5]",
    "blocks.0.ln2.hook_normalized[6]",
    "blocks.0.mlp.hook_post[0]",
    "blocks.0.mlp.hook_post[1]",
    "blocks.0.mlp.hook_post[2]",
    "blocks.0.mlp.hook_post[3]",
    "blocks.0.hook_mlp_out[8]",
}
# ... of which these carry the key itself at the query (they differ within every pair).
KEY_DISTRACTORS = {
    "blocks.0.hook_attn_out[9]",
    "blocks.0.ln2.hook_normalized[4]",
    "blocks.0.mlp.hook_post[0]",
}


@dataclass
class Planted:
    model: SparseGPT
    sites: list[NodeSite]
    means: dict[str, torch.Tensor]
    train: TaskBatch
    test: TaskBatch

    @property
    def all_nodes(self) -> set[str]:
        return {s.node(i) for s in self.sites for i in range(s.width)}

    @torch.no_grad()
    def diff(self, removed: set[str], batch: TaskBatch | None = None) -> torch.Tensor:
        """Oriented logit differences with the `removed` nodes mean-ablated."""
        batch = batch if batch is not None else self.test
        masks = {s.hook: torch.ones(s.width) for s in self.sites}
        for name in removed:
            hook, i = parse_node(name)
            masks[hook][i] = 0.0
        hooks = ablation_hooks(self.sites, self.means, masks)
        return task_logit_diff(self.model.run_with_hooks(batch.tokens, fwd_hooks=hooks), batch)

    def losses(self, removed: set[str]) -> tuple[float, float]:
        """(task loss, calibrated task loss) on the test pairs with `removed` ablated."""
        d = self.diff(removed)
        return float(pair_loss(d)), calibrate(d, self.test, 16)[0]

    def calibrated_floor(self) -> float:
        """The calibrated loss of a perfect answer: the fit aims each of the N prompts at
        probability (N+1)/(N+2), not 1, so a pair costs about 2 ln(1 + 1/(N+1))."""
        return 2 * math.log1p(1 / (len(self.test) + 1))

    def suffices(self, removed: set[str]) -> bool:
        """The task is done with `removed` ablated: raw loss under TARGET/10, calibrated
        loss under that plus the calibration's floor."""
        raw, calibrated = self.losses(removed)
        return raw < TARGET / 10 and calibrated < TARGET / 10 + self.calibrated_floor()


def relay_model() -> SparseGPT:
    """A held-out mechanism the mask settings were not tuned on: the planted head's key
    sign no longer reaches the logits directly but through the MLP. Neuron 0 = relu(key
    sign), neuron 1 = relu(-key sign), both read from channel 4 and written (+, -) to channel
    8, which the unembedding reads as X - Y (7.5 per unit: one neuron's share alone, ~3.4,
    loses to the query prior's +-4, so each neuron is needed). Neurons 2 and 3 stay
    distractors, now writing channel 9."""
    model = planted_model(SOFT)
    with torch.no_grad():
        mlp = model.blocks[0].mlp
        mlp.fc_in.weight[1].zero_()
        mlp.fc_in.weight[0, 4], mlp.fc_in.weight[1, 4] = 1.0, -1.0
        mlp.fc_out.weight.zero_()
        mlp.fc_out.weight[8, 0], mlp.fc_out.weight[8, 1] = 1.0, -1.0
        mlp.fc_out.weight[9, 2], mlp.fc_out.weight[9, 3] = 0.5, 0.5
        W_U = model.unembed.weight
        W_U[[X, Y], 4] = 0.0
        W_U[FILLERS[2], 8] = 0.0
        W_U[X, 8], W_U[Y, 8] = 3.75, -3.75
    return model.eval()


RELAY = PLANTED | {
    "blocks.0.ln2.hook_normalized[4]",
    "blocks.0.mlp.hook_post[0]",
    "blocks.0.mlp.hook_post[1]",
    "blocks.0.hook_mlp_out[8]",
}


@functools.cache
def planted(sink_logit: float | None) -> Planted:
    """The planted model with this sink logit; None: the held-out relay model."""
    model = (relay_model() if sink_logit is None else planted_model(sink_logit)).requires_grad_(
        False
    )
    sites = node_sites(model.cfg)
    # "Pretraining" text for the means: fresh prompts of the task distribution.
    windows = [planted_batch(64, 100 + i).tokens for i in range(2)]
    means = compute_node_means(model, windows, sites, progress=False)
    return Planted(model, sites, means, planted_batch(64, 1), planted_batch(64, 2))


pytestmark = pytest.mark.usefixtures("one_thread")


BOTH = pytest.mark.parametrize("sink", [SOFT, SATURATED], ids=["soft", "saturated"])


@BOTH
def test_planted_model_solves_the_task(sink):
    p = planted(sink)
    for batch in (p.train, p.test):
        d = p.diff(set(), batch)
        assert bool((d > 0).all())  # accuracy 1.0
        assert float(pair_loss(d)) < TARGET / 10
    _, cache = p.model.run_with_cache(p.test.tokens, names_filter="blocks.0.attn.hook_pattern")
    pattern = cache["blocks.0.attn.hook_pattern"][:, 0, -1]  # planted head, from the query
    at_key = pattern.gather(1, (p.test.tokens[:, :-1] <= B).int().argmax(1, keepdim=True))
    assert float(at_key.min()) > 0.9


@BOTH
def test_planted_nodes_are_the_unique_minimal_circuit(sink):
    p = planted(sink)
    m = p.means
    # What mean ablation puts in: nothing about the key for v, its input and the write ...
    assert abs(float(m["blocks.0.ln1.hook_normalized"][1])) < 1e-6
    assert abs(float(m["blocks.0.attn.hook_v"][0])) < 1e-6
    assert abs(float(m["blocks.0.hook_attn_out"][4])) < 1e-6
    # ... and 1/8 of the query's q and the key's k (one query and one key per 8 tokens).
    assert float(m["blocks.0.ln1.hook_normalized"][3]) == pytest.approx(1 / N_CTX)
    assert float(m["blocks.0.ln1.hook_normalized"][2]) == pytest.approx(1 / N_CTX)

    everything_else = p.all_nodes - PLANTED
    assert p.suffices(set()) and p.suffices(everything_else)  # the planted nodes alone suffice
    for node in sorted(PLANTED):
        # necessary in the full model (so every working circuit contains it) ...
        loss, calibrated = p.losses({node})
        assert min(loss, calibrated) > 5 * TARGET, node
        assert float((p.diff({node}) > 0).float().mean()) <= 0.75, node
        # ... and in the circuit (so the planted set is minimal, as bisection sees it)
        assert min(p.losses(everything_else | {node})) > 5 * TARGET, node
    for node in sorted(DISTRACTORS):
        assert p.suffices({node}), node


@BOTH
def test_distractors_carry_real_signal(sink):
    p = planted(sink)
    by_hook = {s.hook: s for s in p.sites}
    logits, cache = p.model.run_with_cache(p.test.tokens, names_filter=list(by_hook))
    acts = {h: channels(a, by_hook[h]) for h, a in cache.items()}
    for node in sorted(DISTRACTORS):
        hook, i = parse_node(node)
        assert float(acts[hook][..., i].std()) > 0.05, node  # over prompts and positions
    for node in sorted(KEY_DISTRACTORS):
        hook, i = parse_node(node)
        at_query = acts[hook][:, -1, i].view(-1, 2)
        assert float((at_query[:, 0] - at_query[:, 1]).abs().min()) > 0.1, node
    # ... and they move other tokens' logits at the query from pair to pair
    for tok in FILLERS[:3]:
        assert float(logits[:, -1, tok].std()) > 0.1


def oracle_scores(problem, cfg, progress=True):
    """The answer key as a pruning method: 1 for planted nodes, 0 elsewhere."""
    return {
        s.hook: torch.tensor([float(s.node(i) in PLANTED) for i in range(s.width)])
        for s in problem.sites
    }


@BOTH
def test_bisection_lands_on_the_planted_set_given_the_right_ranking(sink, monkeypatch):
    """Control for the tests below: with a perfect ranking, the bisection and validation of
    `find_circuit` return exactly the planted nodes (so a miss is the ranking's fault)."""
    monkeypatch.setitem(METHODS, "oracle", oracle_scores)
    p = planted(sink)
    cfg = PruneConfig(method="oracle", target_loss=TARGET, random_draws=3)
    c = find_circuit(p.model, p.train, p.test, p.means, cfg, progress=False)
    assert {n.name for n in c.nodes} == PLANTED
    assert c.metrics.ablated.accuracy == pytest.approx(0.5)


@pytest.mark.parametrize(
    "sink,seed",
    # The saturated case failed with deterministic masks (nodes switched off in lockstep and
    # a dead q/k chain never got gradient again); the logistic mask noise fixed it.
    [(SOFT, 0), (SOFT, 1), (SATURATED, 0), (SATURATED, 1)],
    ids=["soft-seed0", "soft-seed1", "saturated-seed0", "saturated-seed1"],
)
def test_learned_masks_recover_the_planted_circuit(sink, seed):
    p = planted(sink)
    cfg = PruneConfig(method="masks", target_loss=TARGET, steps=300, random_draws=3, seed=seed)
    c = find_circuit(p.model, p.train, p.test, p.means, cfg, progress=False, task_name="planted")
    names = {n.name for n in c.nodes}
    assert names == PLANTED, f"missing {sorted(PLANTED - names)}, extra {sorted(names - PLANTED)}"
    m = c.metrics
    full, circuit, ablated, rand = m.full, m.circuit, m.ablated, m.random
    assert full.accuracy == 1.0
    assert circuit.accuracy == 1.0 and circuit.loss < TARGET / 10
    assert circuit.loss_calibrated < TARGET / 10 + p.calibrated_floor()
    assert ablated.accuracy == pytest.approx(0.5)  # necessity: the task breaks without it
    assert ablated.loss > 5 * TARGET
    assert rand.loss_mean > 1.0 > 30 * circuit.loss_calibrated  # random 7 nodes fail


@pytest.mark.parametrize(
    "sink",
    [
        SOFT,
        pytest.param(
            SATURATED,
            marks=pytest.mark.xfail(
                strict=True,
                raises=AssertionError,
                reason="first-order attribution sees ~0 gradient through a saturated softmax",
            ),
        ),
    ],
    ids=["soft", "saturated"],
)
def test_attribution_ranks_the_planted_nodes_first(sink):
    p = planted(sink)
    cfg = PruneConfig(method="attribution", target_loss=TARGET, random_draws=0)
    c = find_circuit(p.model, p.train, p.test, p.means, cfg, progress=False)
    assert {n.name for n in c.nodes} == PLANTED


def test_relay_nodes_are_a_minimal_circuit():
    """Ground truth of the held-out mechanism: its 11 nodes suffice, each is necessary in
    the full model and in the circuit, and no other node matters alone."""
    p = planted(None)
    everything_else = p.all_nodes - RELAY
    # calibrated only (the relay's raw logits are right but timid): the 11 nodes alone do
    # what the full model does, well under the target
    full, alone = p.losses(set())[1], p.losses(everything_else)[1]
    assert alone == pytest.approx(full, abs=1e-3) and alone < TARGET / 4
    for node in sorted(RELAY):
        assert min(p.losses({node})) > 5 * TARGET, node
        assert min(p.losses(everything_else | {node})) > 5 * TARGET, node
    for node in sorted(everything_else):
        assert max(p.losses({node})) < TARGET / 3, node


@pytest.mark.parametrize("seed", [0, 1])
def test_learned_masks_recover_a_mechanism_they_were_not_tuned_on(seed):
    p = planted(None)
    cfg = PruneConfig(method="masks", target_loss=TARGET, steps=300, random_draws=3, seed=seed)
    c = find_circuit(p.model, p.train, p.test, p.means, cfg, progress=False, task_name="relay")
    names = {n.name for n in c.nodes}
    assert names == RELAY, f"missing {sorted(RELAY - names)}, extra {sorted(names - RELAY)}"
    assert c.metrics.ablated.accuracy == pytest.approx(0.5)
