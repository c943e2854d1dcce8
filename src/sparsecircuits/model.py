"""A small GPT decoder for circuit research, readable top to bottom.

    x = embed(tokens) [+ pos_embed]
    for each block:
        x = x + attn(ln1(x))        # causal attention, optional per-head sink
        x = x + mlp(ln2(x))         # GELU or ReLU MLP
    logits = unembed(ln_final(x)) [+ logit_bias] [+ bigram[tokens]]

Two ideas from Gao et al. (2025) live here; weight sparsity lives in `sparsity.py`:
- AbsTopK activation sparsity: at chosen sites keep the k = int(afrac * width) entries of
  largest magnitude and zero the rest (q, k, v over their full width, before the head split).
- An attention sink and a dense bigram table, which absorb work that would otherwise cost
  circuit edges.

Hook points carry TransformerLens names (`blocks.0.attn.hook_q`, `blocks.1.mlp.hook_post`,
...). Each hook sees the activation *after* AbsTopK, i.e. exactly what the next layer reads,
so replacing it (a mask, a mean ablation) changes the model as one would expect.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from . import fused
from .config import ModelConfig
from .fused import kth_largest, next_token_loss
from .hooks import HookedModule, HookPoint

# Head widths the fused attention pads to, by device type. CUDA's memory-efficient kernel
# (the one that takes a mask, as the sink needs) wants widths divisible by 8 in bf16 (4 in
# fp32); at any other width SDPA falls back to its math kernel, which materialises every
# [query, key] score. The CPU kernel takes any width (d_head + 1 for the sink ran fastest).
SDPA_WIDTH_MULTIPLE = {"cuda": 8}


def abs_topk(x: torch.Tensor, frac: float) -> torch.Tensor:
    """Keep the int(frac * width) largest-|x| entries along the last axis, zero the rest.

    Written as "keep |x| >= the k-th largest |x|" (ties at the threshold are all kept, exact
    zeros never are), so forward and backward are one multiply by a 0/1 mask instead of a
    scatter/gather pair (and `torch.where`, which is ~15x slower than a multiply on CPU).
    The mask is the comparison written in place into |x| as 0.0/1.0: one pass and no
    second buffer (each extra pass over an MLP-wide activation costs ~1 ms on a small model).
    """
    k = max(1, int(frac * x.shape[-1]))
    if k >= x.shape[-1]:
        return x
    if fused.REFERENCE:
        return _abs_topk_by_index(x, k)
    a = x.detach().abs()
    thr = kth_largest(a, k).clamp_min(torch.finfo(a.dtype).tiny)
    return x * a.ge_(thr)


def _abs_topk_by_index(x: torch.Tensor, k: int) -> torch.Tensor:
    """AbsTopK as `fused.reference()` runs it: the k largest |x| by index, gathered and
    scattered into zeros (exactly k kept, ties or not)."""
    idx = x.abs().topk(k, dim=-1, sorted=False).indices
    return torch.zeros_like(x).scatter(-1, idx, x.gather(-1, idx))


def take_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x [batch, pos, ...] at one position per row -> [batch, 1, ...] ([batch] for tokens)."""
    rows = torch.arange(x.shape[0], device=x.device)
    return x[rows, positions][:, None] if x.dim() > 2 else x[rows, positions]


class ActSparsity(nn.Module):
    """AbsTopK at one named site, or the identity where the config leaves the site dense."""

    def __init__(self, cfg: ModelConfig, site: str):
        super().__init__()
        self.site = site
        self.frac = cfg.afrac if cfg.has_act_sparsity(site) else None

    def forward(self, x):
        return x if self.frac is None else abs_topk(x, self.frac)

    def extra_repr(self):
        return f"{self.site}, frac={self.frac}"


class Norm(nn.Module):
    """RMSNorm (default) or LayerNorm, then optional AbsTopK; `hook_normalized` sees the result."""

    def __init__(self, cfg: ModelConfig, sparsity_site: str | None = None):
        super().__init__()
        self.kind = cfg.norm
        self.eps = cfg.norm_eps if cfg.norm_eps is not None or cfg.norm == "rms" else 1e-5
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        self.b = (
            nn.Parameter(torch.zeros(cfg.d_model)) if cfg.norm == "layer" and cfg.ln_bias else None
        )
        self.sparsify = ActSparsity(cfg, sparsity_site) if sparsity_site else nn.Identity()
        self.hook_normalized = HookPoint()

    def forward(self, x):
        if self.kind == "rms":
            x = F.rms_norm(x, (x.shape[-1],), self.w, self.eps)
        else:
            x = F.layer_norm(x, (x.shape[-1],), self.w, self.b, self.eps)
        return self.hook_normalized(self.sparsify(x))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.d_head = cfg.heads, cfg.d_head
        width = cfg.heads * cfg.d_head
        self.q_proj = nn.Linear(cfg.d_model, width, bias=cfg.bias)
        self.k_proj = nn.Linear(cfg.d_model, width, bias=cfg.bias)
        self.v_proj = nn.Linear(cfg.d_model, width, bias=cfg.bias)
        self.o_proj = nn.Linear(width, cfg.d_model, bias=cfg.bias)
        # The sink: one extra key per head with a learned logit and a zero value vector, so a
        # head can attend "nowhere" instead of spreading attention over irrelevant tokens.
        self.sink_logit = nn.Parameter(torch.zeros(cfg.heads)) if cfg.sink else None
        self.sparse_q = ActSparsity(cfg, "attn_q")
        self.sparse_k = ActSparsity(cfg, "attn_k")
        self.sparse_v = ActSparsity(cfg, "attn_v")
        self.sparse_out = ActSparsity(cfg, "attn_out")
        self.hook_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_k = HookPoint()
        self.hook_v = HookPoint()
        self.hook_attn_scores = HookPoint()  # [batch, head, query, key], causally masked
        self.hook_pattern = HookPoint()  # [batch, head, query, key]; rows sum to 1 - sink share
        self.hook_sink = HookPoint()  # [batch, head, query]: attention paid to the sink
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]

    def forward(self, x, positions: torch.Tensor | None = None):
        """x [batch, pos, d_model]; with `positions` [batch], only those queries are
        computed (keys and values still come from every position): [batch, 1, d_model]."""
        B, T, _ = x.shape
        # [1, T] (every row alike) or [batch, 1]: the position of each query
        query_pos = (
            torch.arange(T, device=x.device)[None] if positions is None else positions[:, None]
        )
        Q = query_pos.shape[1]
        q_in = x if positions is None else take_positions(x, positions)
        q = self.hook_q(self.sparse_q(self.q_proj(q_in)).view(B, Q, self.n_head, self.d_head))
        k = self.hook_k(self.sparse_k(self.k_proj(x)).view(B, T, self.n_head, self.d_head))
        v = self.hook_v(self.sparse_v(self.v_proj(x)).view(B, T, self.n_head, self.d_head))
        # [1 or batch, 1, query, key]: a query sees its own position and the ones before
        visible = (torch.arange(T, device=x.device) <= query_pos[..., None])[:, None]
        if fused.ENABLED and not self._pattern_hooked():
            z = self.hook_z(self._sdpa(q, k, v, visible).to(v.dtype))
            return self.sparse_out(self.o_proj(z.reshape(B, Q, self.n_head * self.d_head)))
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.d_head)
        scores = self.hook_attn_scores(scores.masked_fill(~visible, float("-inf")))
        if self.sink_logit is not None:
            sink = self.sink_logit.view(1, -1, 1, 1).expand(B, -1, Q, 1)
            probs = torch.cat([scores, sink], dim=-1).softmax(dim=-1)
            pattern, sink_share = probs[..., :T], probs[..., T]
        else:
            pattern = scores.softmax(dim=-1)
            sink_share = torch.zeros_like(pattern[..., 0])
        self.hook_sink(sink_share)
        pattern = self.hook_pattern(pattern)
        z = self.hook_z(torch.einsum("bhqk,bkhd->bqhd", pattern, v))
        return self.sparse_out(self.o_proj(z.reshape(B, Q, self.n_head * self.d_head)))

    def _pattern_hooked(self) -> bool:
        return any(h.has_hooks for h in (self.hook_attn_scores, self.hook_pattern, self.hook_sink))

    def _sdpa(self, q, k, v, visible):
        """The same attention through the fused kernel, used when nothing reads the pattern.
        The sink becomes an extra key: every query gets a constant 1 feature, the sink key
        holds sink_logit * sqrt(d_head) there and zeros elsewhere, so its score is exactly
        sink_logit; its value is zero. Head widths are padded as SDPA_WIDTH_MULTIPLE says."""
        if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # the CPU kernel's bf16 backward ran ~5x slower than its float32 one (quick shape)
            with torch.autocast("cpu", enabled=False):
                return self._sdpa(q.float(), k.float(), v.float(), visible)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [batch, head, pos, d_head]
        B, H, _, D = q.shape
        scale = 1 / math.sqrt(self.d_head)
        causal = q.shape[2] == k.shape[2]  # every position queries: the kernel's own mask
        sink = self.sink_logit is not None
        multiple = SDPA_WIDTH_MULTIPLE.get(q.device.type, 1)
        pad = -(-(D + sink) // multiple) * multiple - D  # extra head-dim columns
        if pad:  # 1 in every query, 0 in every key and value: no score or output changes
            q, k, v = F.pad(q, (0, pad), value=1.0), F.pad(k, (0, pad)), F.pad(v, (0, pad))
        mask, is_causal = (None, True) if causal else (visible, False)
        if sink:  # column D of the sink's key holds its logit
            logit = (self.sink_logit / scale).view(1, H, 1, 1).expand(B, H, 1, 1)
            k = torch.cat([k, F.pad(logit, (D, pad - 1)).to(k.dtype)], dim=2)
            v = F.pad(v, (0, 0, 0, 1))  # the sink's value is 0
            mask, is_causal = F.pad(visible, (0, 1), value=True), False  # always visible
        z = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale
        )
        return z[..., :D].transpose(1, 2)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc_in = nn.Linear(cfg.d_model, cfg.mlp_width, bias=cfg.bias)
        self.fc_out = nn.Linear(cfg.mlp_width, cfg.d_model, bias=cfg.bias)
        self.act = nn.GELU() if cfg.act == "gelu" else nn.ReLU()
        self.sparse_neuron = ActSparsity(cfg, "mlp_neuron")
        self.sparse_out = ActSparsity(cfg, "mlp_out")
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp], before the nonlinearity
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]: the neurons

    def forward(self, x):
        post = self.hook_post(self.sparse_neuron(self.act(self.hook_pre(self.fc_in(x)))))
        return self.sparse_out(self.fc_out(post))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = Norm(cfg, "attn_in")
        self.attn = Attention(cfg)
        self.ln2 = Norm(cfg, "mlp_in")
        self.mlp = MLP(cfg)
        self.resid_act = nn.ReLU() if cfg.resid_act == "relu" else nn.Identity()
        self.sparse_resid_mid = ActSparsity(cfg, "resid_post_attn")
        self.sparse_resid_post = ActSparsity(cfg, "resid_post_mlp")
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x, positions: torch.Tensor | None = None):
        """With `positions` [batch], everything after the attention's keys and values is
        computed at those positions only: [batch, 1, d_model]."""
        resid_pre = self.hook_resid_pre(x)
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid_pre), positions))
        if positions is not None:
            resid_pre = take_positions(resid_pre, positions)
        resid_mid = self.hook_resid_mid(self.sparse_resid_mid(self.resid_act(resid_pre + attn_out)))
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid_mid)))
        return self.hook_resid_post(self.sparse_resid_post(self.resid_act(resid_mid + mlp_out)))


class Embed(nn.Module):
    """A lookup table [rows, d_model], as nn.Embedding, but with no random init on the meta
    device: the first one there imports torch._dynamo, ~2 s of every command that loads a
    checkpoint (it builds the model on meta, then assigns the saved weights)."""

    def __init__(self, rows: int, d_model: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(rows, d_model))
        if not self.weight.is_meta:  # nn.Embedding's draw, so a seed gives the same model
            nn.init.normal_(self.weight)

    def forward(self, idx):
        return F.embedding(idx, self.weight)


class SparseGPT(HookedModule):
    """The model. `model(tokens)` -> logits [batch, pos, vocab], as in TransformerLens."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg.vocab_size, cfg.d_model)
        self.pos_embed = Embed(cfg.n_ctx, cfg.d_model) if cfg.pos_emb else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_final = Norm(cfg)
        self.unembed = (
            None if cfg.tied_unembed else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        )
        self.logit_bias = nn.Parameter(torch.zeros(cfg.vocab_size)) if cfg.final_bias else None
        # Dense bigram logits indexed by the current token: cheap statistics that the sparse
        # network then need not spend circuits on.
        self.bigram = (
            nn.Parameter(torch.zeros(cfg.vocab_size, cfg.vocab_size)) if cfg.bigram_table else None
        )
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        if not self.W_U.is_meta:  # a shapes-only model (loading a checkpoint) needs no init
            self.reset_parameters()
        self.setup_hooks()

    def reset_parameters(self):
        std = self.cfg.init_std
        # Output projections write into the residual stream once per layer: scale them down.
        out_std = std / math.sqrt(2 * self.cfg.n_layer)
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "fc_out.weight")):
                nn.init.normal_(p, 0.0, out_std)
            elif name.endswith("weight") and p.dim() == 2:
                nn.init.normal_(p, 0.0, std)
            elif name.endswith(".w"):
                nn.init.ones_(p)
            else:  # biases, norm offsets, sink logits, bigram table
                nn.init.zeros_(p)

    @property
    def W_U(self) -> torch.Tensor:
        """Unembedding as [vocab, d_model] (the embedding itself when tied)."""
        return self.embed.weight if self.unembed is None else self.unembed.weight

    def block(self, i: int) -> Block:
        """Block `i`, typed as a `Block` (an nn.ModuleList's items type as plain Modules)."""
        return cast(Block, self.blocks[i])  # every item of blocks is a Block (__init__)

    def forward(
        self,
        tokens: torch.Tensor,
        return_type: str = "logits",
        positions: torch.Tensor | None = None,
    ):
        """tokens [batch, pos] -> logits; return_type "loss" gives the mean next-token
        cross-entropy, "both" gives (logits, loss). `positions` [batch] (logits only) gives
        the logits at one position per row, [batch, vocab]: what a task reads, without
        unembedding every other position, and the last block computes only what those
        positions need (its hooks see [batch, 1, ...]). At the quick shape (2 layers, d_model
        128, vocab 2048) that skips about half the work of a task's forward pass."""
        if positions is not None and return_type != "logits":
            raise ValueError("positions= gives logits only (a loss needs every position)")
        if positions is not None and fused.REFERENCE:  # every position, read at the end
            return take_positions(self.forward(tokens), positions)[:, 0]
        if tokens.shape[-1] > self.cfg.n_ctx and self.pos_embed is not None:
            raise ValueError(
                f"sequence of {tokens.shape[-1]} tokens exceeds n_ctx={self.cfg.n_ctx}"
            )
        x = self.hook_embed(self.embed(tokens))
        if self.pos_embed is not None:
            pos = torch.arange(tokens.shape[-1], device=tokens.device)
            x = x + self.hook_pos_embed(self.pos_embed(pos))
        *early, last = self.blocks
        for block in early:
            x = block(x)
        x = self.ln_final(last(x, positions))
        if return_type == "loss" and fused.ENABLED:  # the same loss, no logits tensor
            return next_token_loss(x, self.W_U, self.logit_bias, self.bigram, tokens)
        if positions is not None:
            x, tokens = x[:, 0], take_positions(tokens, positions)
        logits = F.linear(x, self.W_U, self.logit_bias)
        if self.bigram is not None:
            logits = logits + self.bigram[tokens]
        if return_type == "logits":
            return logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
        return loss if return_type == "loss" else (logits, loss)

    def num_params(self, nonzero: bool = False) -> int:
        return sum(int((p != 0).sum()) if nonzero else p.numel() for p in self.parameters())
