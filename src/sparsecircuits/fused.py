"""Fast paths that compute exactly what the plain code in `model.py` computes.

On a CPU the output head dominates a small model's training step: at vocab 2048 the logits of
one batch are a [tokens, vocab] tensor of ~32 MB, and every elementwise pass over it (the
bigram add, log-softmax and its backward, the slice copy) is paid in memory traffic and in
page faults on freshly mapped memory. `next_token_loss` never builds that tensor: it walks the
tokens in chunks and computes the loss and all its gradients in one pass, so the backward
only scales what the forward already computed. tests/test_model.py checks loss and gradients
against the plain path.
"""

from __future__ import annotations

import contextlib
import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

# Read-only flags: set them with the context managers `plain()` and `reference()` below.
# False runs the plain attention and loss (tests compare the two).
ENABLED = True
# True runs every speed-up's reference code: the step as it was before them.
REFERENCE = False
CHUNK = 512  # rows of logits alive at once: 4 MB at vocab 2048, reused from the heap


def _loss_and_grads(x, W, bias, bigram, inp, tgt, need):
    """mean_i CE(x_i @ W.T + bias + bigram[inp_i], tgt_i) and the gradients of the inputs
    flagged in `need` (x, W, bias, bigram), None for the others, each times n (the caller
    scales them by 1/n, on the small tensors, not on every chunk of logits). Under autocast
    the matmuls run in its dtype, as the plain path's would; softmax, sums and the
    accumulated gradients stay in float32."""
    n = x.shape[0]
    dev = x.device.type
    mm = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
    xc, Wc = x.to(mm), W.to(mm)
    # the bias rides on the bigram rows: one pass over [vocab, vocab], none over the logits
    table = bigram + bias if bias is not None and bigram is not None else bigram
    total = x.new_zeros((), dtype=torch.float32)
    dx = torch.empty_like(x) if need[0] else None
    dW = torch.zeros_like(W) if need[1] else None
    dtable = torch.zeros_like(table) if table is not None and (need[2] or need[3]) else None
    dbias = torch.zeros_like(bias) if need[2] and dtable is None else None
    rows = torch.arange(min(n, CHUNK), device=x.device)
    for s in range(0, n, CHUNK):
        xs, ins, ts = xc[s : s + CHUNK], inp[s : s + CHUNK], tgt[s : s + CHUNK]
        if table is not None:  # the matmul accumulates onto the gathered rows: no extra pass
            logits = _add_mm(table.index_select(0, ins), xs, Wc.t())
        else:
            logits = xs @ Wc.t() if bias is None else torch.addmm(bias.to(mm), xs, Wc.t())
        logp = torch.log_softmax(logits.float(), -1)
        total -= logp.gather(1, ts[:, None]).sum()
        if not any(need):
            continue
        # n * d(mean CE)/d(logits) = softmax - onehot(target)
        g = logp.exp_()
        g[rows[: len(ts)], ts] -= 1.0
        gc = g.to(mm)
        if dx is not None:
            dx[s : s + CHUNK] = gc @ Wc
        if dW is not None:
            _add_mm(dW, gc.t(), xs)
        if dtable is not None:
            dtable.index_add_(0, ins, g.to(dtable.dtype))
        if dbias is not None:
            dbias += g.sum(0)
    if dtable is not None and need[2]:
        dbias = dtable.sum(0)  # every logit row carries the bias once
    dbigram = dtable if need[3] else None
    return total / n, (dx, dW, dbias, dbigram)


def _add_mm(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """out += a @ b, in place; in one BLAS call where the dtypes agree."""
    return out.addmm_(a, b) if out.dtype == a.dtype else out.add_(a @ b)


class _NextTokenLoss(torch.autograd.Function):
    """The loss with its gradients computed in the forward pass; backward only scales them."""

    @staticmethod
    def forward(ctx, x, W, bias, bigram, inp, tgt):
        loss, grads = _loss_and_grads(x, W, bias, bigram, inp, tgt, ctx.needs_input_grad[:4])
        ctx.save_for_backward(*grads)
        ctx.n = x.shape[0]
        return loss

    @staticmethod
    def backward(ctx, grad):
        scale = grad / ctx.n
        scaled = [None if t is None else t * scale for t in ctx.saved_tensors]
        return (*scaled, None, None)


def next_token_loss(
    x: torch.Tensor,
    W_U: torch.Tensor,
    bias: torch.Tensor | None,
    bigram: torch.Tensor | None,
    tokens: torch.Tensor,
) -> torch.Tensor:
    """Mean next-token cross-entropy of the final residual `x` [batch, pos, d_model] under
    unembedding `W_U` [vocab, d_model], an optional logit bias and bigram table."""
    d = x.shape[-1]
    args = (
        x[:, :-1].reshape(-1, d),
        W_U,
        bias,
        bigram,
        tokens[:, :-1].reshape(-1),
        tokens[:, 1:].reshape(-1),
    )
    grads = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args[:4])
    if grads:
        return _NextTokenLoss.apply(*args)
    return _loss_and_grads(*args, need=(False,) * 4)[0]  # evaluation: no gradients to make


@contextlib.contextmanager
def plain():
    """Run the plain attention and loss inside the block: explicit attention instead of
    `scaled_dot_product_attention`, the logits tensor and `F.cross_entropy` instead of
    `next_token_loss`, `torch.topk` instead of the selection in `kth_largest`. The tests
    compare the fast paths against it."""
    global ENABLED
    saved, ENABLED = ENABLED, False
    try:
        yield
    finally:
        ENABLED = saved


@contextlib.contextmanager
def reference():
    """Run the code as it was before the speed work, inside the block: `plain()`, and
    AbsTopK and the weight projection by top-k indices with gather and scatter (not by a
    threshold), AdamW's default implementation (not the fused one; it applies to an
    optimizer `train.make_optimizer` makes inside the block), and a forward at
    `positions=` through every position (a circuit search's task passes with the padding
    after each batch's longest prompt), read at those positions at the end. Each
    computes what the default computes (which of several entries tied at the k-th largest
    magnitude are kept aside); `benchmarks/bench_train.py` times the default training step
    and circuit search against it ("today's step"), and tests/test_benchmarks.py checks
    that a training step and a task pass give the same numbers both ways."""
    global REFERENCE
    saved, REFERENCE = REFERENCE, True
    try:
        with plain():
            yield
    finally:
        REFERENCE = saved


def kth_largest(a: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest entry along the last axis of `a`, shape [..., 1]. `a` holds
    magnitudes (>= 0), or negatives that only mark entries to pass over. On the CPU numpy's
    introselect is ~10x faster than torch.topk for rows of a few hundred entries; it runs on
    the float32 bit patterns as int32 (non-negative floats order as their patterns do, every
    negative one below them, and integer compares are ~1.5x faster) and, for big inputs, on
    one slice of rows per torch thread (numpy releases the GIL)."""
    if not ENABLED or a.device.type != "cpu":
        return a.topk(k, dim=-1, sorted=False).values.amin(-1, keepdim=True)
    flat = a.reshape(-1, a.shape[-1]).float().numpy().view(np.int32)
    n = a.shape[-1] - k
    parts = min(torch.get_num_threads(), flat.shape[0], max(1, flat.size // _ENTRIES_PER_THREAD))
    if parts > 1:
        slices = np.array_split(flat, parts)
        thr = np.concatenate(list(_pool().map(lambda s: _select(s, n), slices)))
    else:
        thr = _select(flat, n)
    return torch.from_numpy(thr.view(np.float32)).to(a.dtype).view(*a.shape[:-1], 1)


_ENTRIES_PER_THREAD = 1 << 18  # fewer per thread and the hand-off costs more than it saves


def _select(rows: np.ndarray, n: int) -> np.ndarray:
    return np.partition(rows, n, axis=-1)[:, n]


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max(2, os.cpu_count() or 2), "kth_largest")
