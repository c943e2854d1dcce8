"""A hand-built SparseGPT whose mechanism is known: the ground truth for circuit pruning
(tests/test_planted.py) and for the FER measures (fer.py), which must tell this clean model
from a rotated copy with identical outputs.

Ground truth for circuit pruning: a hand-built SparseGPT whose mechanism we know, and
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

import math

import torch

from .config import ModelConfig
from .model import SparseGPT
from .tasks import TaskBatch

A, B, X, Y = 0, 1, 2, 3
FILLERS = (4, 5, 6, 7)
FILLER_FEATURE = (1.0, -1.0, 0.5, -0.5)
QUERIES = (8, 9, 10, 11)
QUERY_PRIOR = (-2.0, -1.0, 1.0, 2.0)
VOCAB, N_CTX, D_MODEL = 12, 8, 10
KEY_SCORE = 16.0  # q[0] . k[0] / sqrt(d_head) from the query to the key
SOFT, SATURATED = 13.0, 6.0  # sink logits of the planted head


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
        block = model.block(0)
        for norm in (block.ln1, block.ln2, model.ln_final):
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

        attn = block.attn
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
        assert attn.sink_logit is not None  # cfg.sink
        attn.sink_logit.copy_(torch.tensor([sink_logit, 0.0]))

        mlp = block.mlp
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
        assert model.unembed is not None  # untied
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
