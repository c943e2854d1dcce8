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

import numpy as np
import torch

# False runs the plain reference code everywhere (tests and benchmarks compare the two).
ENABLED = True
CHUNK = 512  # rows of logits alive at once: 4 MB at vocab 2048, reused from the heap


def _loss_and_grads(x, W, bias, bigram, inp, tgt, need):
    """mean_i CE(x_i @ W.T + bias + bigram[inp_i], tgt_i) and the gradients of the inputs
    flagged in `need` (x, W, bias, bigram), None for the others."""
    n = x.shape[0]
    total = x.new_zeros((), dtype=torch.float32)
    dx = torch.empty_like(x) if need[0] else None
    dW = torch.zeros_like(W) if need[1] else None
    dbias = torch.zeros_like(bias) if need[2] else None
    dbigram = torch.zeros_like(bigram) if need[3] else None
    for s in range(0, n, CHUNK):
        xs, ins, ts = x[s : s + CHUNK], inp[s : s + CHUNK], tgt[s : s + CHUNK]
        if bigram is not None:  # the matmul accumulates onto the bigram rows: no extra pass
            logits = torch.addmm(bigram.index_select(0, ins), xs, W.t())
        else:
            logits = xs @ W.t()
        if bias is not None:
            logits += bias
        logits = logits.float()
        picked = logits.gather(1, ts[:, None]).squeeze(1)
        # one exp serves the log-sum-exp and the softmax of the gradient
        top = logits.amax(-1, keepdim=True)
        e = logits.sub_(top).exp_()
        z = e.sum(-1)
        total += (top.squeeze(1) + z.log() - picked).sum()
        if not any(need):
            continue
        # d(CE)/d(logits) = softmax - onehot(target), scaled by 1/n for the mean
        g = e.mul_((1.0 / (z * n))[:, None])
        g[torch.arange(len(ts), device=g.device), ts] -= 1.0 / n
        g = g.to(x.dtype)
        if dx is not None:
            dx[s : s + CHUNK] = g @ W
        if dW is not None:
            dW.addmm_(g.t(), xs)
        if dbias is not None:
            dbias += g.sum(0)
        if dbigram is not None:
            dbigram.index_add_(0, ins, g)
    return total / n, (dx, dW, dbias, dbigram)


class _NextTokenLoss(torch.autograd.Function):
    """The loss with its gradients computed in the forward pass; backward only scales them."""

    @staticmethod
    def forward(ctx, x, W, bias, bigram, inp, tgt):
        loss, grads = _loss_and_grads(x, W, bias, bigram, inp, tgt, ctx.needs_input_grad[:4])
        ctx.save_for_backward(*grads)
        return loss

    @staticmethod
    def backward(ctx, grad):
        scaled = [None if t is None else t * grad for t in ctx.saved_tensors]
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
    """Run the plain reference code inside the block."""
    global ENABLED
    saved, ENABLED = ENABLED, False
    try:
        yield
    finally:
        ENABLED = saved


def kth_largest(a: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest entry along the last axis, shape [..., 1]. On the CPU numpy's
    introselect is ~10x faster than torch.topk for rows of a few hundred entries."""
    if not ENABLED or a.device.type != "cpu":
        return a.topk(k, dim=-1, sorted=False).values.amin(-1, keepdim=True)
    flat = a.reshape(-1, a.shape[-1]).float().numpy()
    n = a.shape[-1] - k
    thr = np.partition(flat, n, axis=-1)[:, n]
    return torch.from_numpy(thr).to(a.dtype).view(*a.shape[:-1], 1)
