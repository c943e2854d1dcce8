"""Sampling text from a model (for `sparsecircuits sample`)."""

from __future__ import annotations

import torch

from .model import SparseGPT


@torch.no_grad()
def generate(
    model: SparseGPT,
    tokens: list[int],
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int | None = 50,
    seed: int = 0,
    stop_token: int | None = None,
) -> list[int]:
    """Autoregressive sampling; temperature 0 is greedy."""
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    out = list(tokens)
    for _ in range(max_new_tokens):
        ctx = torch.tensor([out[-model.cfg.n_ctx :]], device=device)
        logits = model(ctx)[0, -1].float().cpu()
        if temperature <= 0:
            nxt = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k:
                kth = logits.topk(min(top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = int(torch.multinomial(logits.softmax(-1), 1, generator=g))
        if nxt == stop_token:
            break
        out.append(nxt)
    return out
