"""Ground truth for circuit pruning: a hand-built SparseGPT whose mechanism we know, and
the check that `find_circuit` recovers exactly that mechanism's nodes.

Task (paired prompts, no tokenizer): KEY in {A, B} sits at a random place among filler
tokens and the prompt ends with a query token Q0..Q3; the answer is X after A and Y after B.
A pair shares fillers, key place and query, and swaps the key (so also the answers).

Residual channels (d_model = 10; every token embedding has norm sqrt(10), so RMSNorm leaves
embeddings unchanged and every position has the same scale):

    0 bias          sqrt(10 - rest^2): pads every embedding to the same norm
    1 key sign      A: +1, B: -1
    2 key marker    A, B: 1
    3 query marker  Q*: 1
    4 answer        written by the planted head; unembed X +6, Y -6
    5 filler        fillers +-1, +-0.5 (distractor input)
    6, 9            written by the distractor head; unembed to filler tokens
    7 query prior   Q0..Q3: -2, -1, +1, +2; unembed X +1, Y -1 (a direct path: no node)
    8               written by the MLP (distractor); unembed to a filler token

Planted head 0: q[0] reads the query marker, k[0] the key marker (score 16 at the key,
0 elsewhere, against a sink logit), v[0] reads the key sign, o_proj writes it to channel 4.
At the query the logit difference X - Y is about 12 * key sign + 2 * prior, so the circuit
must outvote the query's prior (up to +-4). Mean ablation of q or k does not zero the
signal, it only weakens the attention (the query/key markers are on 1/8 of the positions of
the mean windows, so the score falls to 16/8 = 2, far below the sink): the remaining,
correctly signed sliver of signal is then outvoted by the prior on half of the prompts, so no
logit calibration can rescue it. v, its input and attn_out[4] have mean 0 (A and B are
balanced), so ablating them removes the signal outright.

Distractors: head 1 attends roughly uniformly (q and k read the bias channel) and carries
the filler feature (v[2]) and the key sign (v[3]: task-correlated!) into channels 6 and 9;
the MLP reads the planted answer channel (so neuron 0 fires on exactly the A prompts), the
filler feature and channel 6, and writes channel 8. All of them vary across prompts and move
other tokens' logits, but none writes the X - Y direction: the one minimal circuit is the
seven planted nodes.

Two variants differ only in the planted head's sink logit. SOFT (13): the query puts ~95% of
its attention on the key. SATURATED (6): ~1 - 5e-5. Both have the same ground truth (checked
below); the saturated one defeats the current learned masks, see
`test_learned_masks_recover_the_planted_circuit`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import pytest
import torch

from sparsecircuits.config import ModelConfig
from sparsecircuits.model import SparseGPT
from sparsecircuits.nodes import (
    NodeSite,
    ablation_hooks,
    channels,
    compute_node_means,
    node_sites,
    parse_node,
)
from sparsecircuits.prune import calibrate, find_circuit, pair_loss
from sparsecircuits.pruning import METHODS, PruneConfig
from sparsecircuits.tasks import TaskBatch, task_logit_diff

A, B, X, Y = 0, 1, 2, 3
FILLERS = (4, 5, 6, 7)
FILLER_FEATURE = (1.0, -1.0, 0.5, -0.5)
QUERIES = (8, 9, 10, 11)
QUERY_PRIOR = (-2.0, -1.0, 1.0, 2.0)
VOCAB, N_CTX, D_MODEL = 12, 8, 10
KEY_SCORE = 16.0  # q[0] . k[0] / sqrt(d_head) from the query to the key
SOFT, SATURATED = 13.0, 6.0  # sink logits of the planted head
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


def planted_model(sink_logit: float = SOFT) -> SparseGPT:
    cfg = ModelConfig(
        vocab_size=VOCAB,
        n_ctx=N_CTX,
        d_model=D_MODEL,
        n_layer=1,
        d_head=2,
        n_head=2,
        d_mlp=4,
        act="relu",
        afrac=None,
        bigram_table=False,
        pos_emb=False,
        sink=True,
        bias=False,
        norm="rms",
        tied_unembed=False,
    )
    model = SparseGPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for norm in (model.blocks[0].ln1, model.blocks[0].ln2, model.ln_final):
            norm.w.fill_(1.0)

        emb = torch.zeros(VOCAB, D_MODEL)
        emb[A, 1], emb[B, 1] = 1.0, -1.0
        emb[[A, B], 2] = 1.0
        for tok, f in zip(FILLERS, FILLER_FEATURE, strict=True):
            emb[tok, 5] = f
        for tok, prior in zip(QUERIES, QUERY_PRIOR, strict=True):
            emb[tok, 3], emb[tok, 7] = 1.0, prior
        emb[:, 0] = (D_MODEL - emb.pow(2).sum(1)).sqrt()
        model.embed.weight.copy_(emb)

        attn = model.blocks[0].attn
        gain = math.sqrt(KEY_SCORE * math.sqrt(cfg.d_head))
        attn.q_proj.weight[0, 3] = gain  # planted head 0, its channel 0
        attn.k_proj.weight[0, 2] = gain
        attn.v_proj.weight[0, 1] = 1.0
        attn.o_proj.weight[4, 0] = 1.0
        attn.q_proj.weight[2, 0] = 0.5  # distractor head 1: a near-uniform pattern
        attn.k_proj.weight[2, 0] = 0.5
        attn.v_proj.weight[2, 5] = 1.0  # the filler feature
        attn.v_proj.weight[3, 1] = 1.0  # the key sign: informative, but routed elsewhere
        attn.o_proj.weight[6, 2] = 1.0
        attn.o_proj.weight[9, 3] = 1.0
        attn.sink_logit.copy_(torch.tensor([sink_logit, 0.0]))

        mlp = model.blocks[0].mlp
        mlp.fc_in.weight[0, 4] = 1.0  # reads the planted answer channel
        mlp.fc_in.weight[1, 5] = 1.0
        mlp.fc_in.weight[2, 5] = -1.0
        mlp.fc_in.weight[3, 6] = 1.0
        mlp.fc_out.weight[8] = torch.tensor([0.5, 0.5, -0.5, 0.5])

        W_U = torch.zeros(VOCAB, D_MODEL)
        W_U[X, 4], W_U[Y, 4] = 6.0, -6.0
        W_U[X, 7], W_U[Y, 7] = 1.0, -1.0
        W_U[FILLERS[0], 6] = 3.0
        W_U[FILLERS[1], 9] = 3.0
        W_U[FILLERS[2], 8] = 3.0
        model.unembed.weight.copy_(W_U)
    return model.eval()


def planted_batch(n_pairs: int, seed: int) -> TaskBatch:
    """Pairs of [fillers with KEY somewhere, Q]. Which prompt of a pair comes first is random,
    so the calibration's shift is no fixed X-vs-Y bias."""
    g = torch.Generator().manual_seed(seed)
    rows, correct = [], []
    for _ in range(n_pairs):
        seq = torch.tensor(FILLERS)[torch.randint(len(FILLERS), (N_CTX,), generator=g)]
        seq[-1] = QUERIES[int(torch.randint(len(QUERIES), (1,), generator=g))]
        pos = int(torch.randint(N_CTX - 1, (1,), generator=g))
        order = (A, B) if float(torch.rand(1, generator=g)) < 0.5 else (B, A)
        for key in order:
            row = seq.clone()
            row[pos] = key
            rows.append(row)
            correct.append(X if key == A else Y)
    correct_t = torch.tensor(correct)
    return TaskBatch(
        tokens=torch.stack(rows),
        last_pos=torch.full((2 * n_pairs,), N_CTX - 1),
        correct=correct_t,
        incorrect=torch.where(correct_t == X, Y, X),
    )


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


@functools.cache
def planted(sink_logit: float) -> Planted:
    model = planted_model(sink_logit).requires_grad_(False)
    sites = node_sites(model.cfg)
    # "Pretraining" text for the means: fresh prompts of the task distribution.
    windows = [planted_batch(64, 100 + i).tokens for i in range(2)]
    means = compute_node_means(model, windows, sites, progress=False)
    return Planted(model, sites, means, planted_batch(64, 1), planted_batch(64, 2))


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors: one thread is fastest and does not fight other work for the cores.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
    full = p.losses(set())
    alone = p.losses(everything_else)
    assert max(full + alone) < TARGET / 10  # the planted nodes alone suffice
    for node in sorted(PLANTED):
        # necessary in the full model (so every working circuit contains it) ...
        loss, calibrated = p.losses({node})
        assert min(loss, calibrated) > 5 * TARGET, node
        assert float((p.diff({node}) > 0).float().mean()) <= 0.75, node
        # ... and in the circuit (so the planted set is minimal, as bisection sees it)
        assert min(p.losses(everything_else | {node})) > 5 * TARGET, node
    for node in sorted(DISTRACTORS):
        assert max(p.losses({node})) < TARGET / 10, node


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
    assert c.metrics["ablated"]["accuracy"] == pytest.approx(0.5)


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
    full, circuit, ablated, rand = (c.metrics[k] for k in ("full", "circuit", "ablated", "random"))
    assert full["accuracy"] == 1.0
    assert circuit["accuracy"] == 1.0 and circuit["loss_calibrated"] < TARGET / 10
    assert ablated["accuracy"] == pytest.approx(0.5)  # necessity: the task breaks without it
    assert ablated["loss"] > 5 * TARGET
    assert rand["loss_mean"] > 1.0 > 100 * circuit["loss_calibrated"]  # random 7 nodes fail


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
