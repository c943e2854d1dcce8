"""Nodes: the channels that circuit pruning keeps or removes, and mean ablation.

A `NodeSite` is one place where nodes live: a hook point plus the axis of its channels.
Per layer there are eight: the residual read into attention (`attn_in`), the q, k and v
channels (`attn_q`, `attn_k`, `attn_v`), attention's residual write (`attn_out`), the residual read into the MLP
(`mlp_in`), the MLP neurons and the MLP's residual write (`mlp_out`). A node has one name
everywhere: `blocks.1.attn.hook_q[37]` (q, k and v index their flattened head x d_head axis).

A removed node is *mean-ablated*: replaced by its mean over held-out pretraining text. The
means are computed once per checkpoint and cached beside it (`node_means.safetensors`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from .checkpoint import checkpoint_corpus, load_tensors, save_tensors
from .config import ModelConfig
from .errors import UserError
from .io import file_digest

# Per site, in forward order, its hook; sites are named as the config's AbsTopK sites.
_HOOK_OF = {
    "attn_in": "blocks.{l}.ln1.hook_normalized",
    "attn_q": "blocks.{l}.attn.hook_q",
    "attn_k": "blocks.{l}.attn.hook_k",
    "attn_v": "blocks.{l}.attn.hook_v",
    "attn_out": "blocks.{l}.hook_attn_out",
    "mlp_in": "blocks.{l}.ln2.hook_normalized",
    "mlp_neuron": "blocks.{l}.mlp.hook_post",
    "mlp_out": "blocks.{l}.hook_mlp_out",
}
SITE_KINDS = tuple(_HOOK_OF)
MEANS_FILE = "node_means.safetensors"


@dataclass(frozen=True)
class NodeSite:
    kind: str
    layer: int
    width: int

    @property
    def hook(self) -> str:
        return _HOOK_OF[self.kind].format(l=self.layer)

    def node(self, index: int) -> str:
        return f"{self.hook}[{index}]"


def node_sites(cfg: ModelConfig) -> list[NodeSite]:
    """Every node site of a model, in forward order."""
    qkv = cfg.heads * cfg.d_head
    widths = dict(
        attn_in=cfg.d_model,
        attn_q=qkv,
        attn_k=qkv,
        attn_v=qkv,
        attn_out=cfg.d_model,
        mlp_in=cfg.d_model,
        mlp_neuron=cfg.mlp_width,
        mlp_out=cfg.d_model,
    )
    return [
        NodeSite(kind, layer, widths[kind]) for layer in range(cfg.n_layer) for kind in SITE_KINDS
    ]


_NODE_RE = re.compile(r"(.+)\[(\d+)\]")


def parse_node(name: str) -> tuple[str, int]:
    """`blocks.0.attn.hook_q[5]` -> ("blocks.0.attn.hook_q", 5)."""
    m = _NODE_RE.fullmatch(name)
    if not m:
        raise UserError(f"not a node name: {name!r} (expected hook[index])")
    return m.group(1), int(m.group(2))


def channels(act: torch.Tensor, site: NodeSite) -> torch.Tensor:
    """View an activation with its site's channels on the last axis (q/k/v: heads flattened)."""
    return act.flatten(-2) if site.kind in ("attn_q", "attn_k", "attn_v") else act


def ablation_hooks(
    sites: list[NodeSite], means: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
) -> list[tuple[str, Callable]]:
    """Forward hooks that keep each node in proportion to its mask (1 = kept, 0 = replaced
    by its mean). Masks may carry gradients: that is how pruning learns them."""
    hooks = []
    for site in sites:
        if site.hook not in masks:
            continue
        mask, mean = masks[site.hook], means[site.hook]

        def fn(act, hook, site=site, mask=mask, mean=mean):
            # mask * act + (1 - mask) * mean: one pass over the activation, not three
            return torch.addcmul(mean - mask * mean, channels(act, site), mask).view_as(act)

        hooks.append((site.hook, fn))
    return hooks


@torch.no_grad()
def compute_node_means(
    model, windows, sites: list[NodeSite], progress: bool = True
) -> dict[str, torch.Tensor]:
    """Mean of every node over all positions of the given token windows."""
    sums = {s.hook: torch.zeros(s.width, dtype=torch.float64) for s in sites}
    count = 0
    by_hook = {s.hook: s for s in sites}
    for tokens in tqdm(windows, desc="node means", unit="batch", disable=not progress, leave=False):
        _, cache = model.run_with_cache(tokens, names_filter=list(by_hook))
        for hook, act in cache.items():
            site = by_hook[hook]
            sums[hook] += channels(act, site).reshape(-1, site.width).double().sum(0).cpu()
        count += tokens.numel()
    return {h: (s / count).float() for h, s in sums.items()}


def weights_digest(model_dir: Path) -> str:
    """The checkpoint's weights by content (a cache key for what was computed from them)."""
    return file_digest(model_dir / "model.safetensors")


def heldout_windows(corpus, n_ctx: int, batches: int, batch_size: int):
    """The held-out windows node means are taken over (the node explanations use them too):
    `batches` batches of [batch_size, n_ctx] tokens, the same for every run."""
    for w in corpus.eval_batches(batches, batch_size, n_ctx):
        yield w[:, :-1]


def cached_node_means(
    model_dir,
    model,
    tokenizer,
    batches: int = 16,
    batch_size: int = 16,
    progress: bool = True,
    data: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Node means over held-out pretraining text, cached beside the checkpoint and
    recomputed whenever the weights change. The text is the run's own corpus, or `data`
    (folders/files) for a checkpoint trained elsewhere; the default is the standard library."""
    model_dir = Path(model_dir)
    sites = node_sites(model.cfg)
    path = model_dir / MEANS_FILE
    digest = weights_digest(model_dir)
    meta_key = f"{digest}:{batches}x{batch_size}:{data}"
    if path.exists():
        try:
            with safe_open(str(path), "pt") as f:
                fresh = (f.metadata() or {}).get("key") == meta_key
        except Exception:  # a damaged cache is simply rebuilt
            fresh = False
        if fresh:
            means = load_tensors(path)
            if all(s.hook in means for s in sites):
                return means
    if tokenizer is None:
        raise UserError(
            f"{model_dir}: node means need held-out text, but the checkpoint has no tokenizer.json"
        )
    corpus = checkpoint_corpus(model_dir, model, tokenizer, data)
    device = next(model.parameters()).device
    windows = (w.to(device) for w in heldout_windows(corpus, model.cfg.n_ctx, batches, batch_size))
    means = compute_node_means(model, windows, sites, progress)
    save_tensors(means, path, {"key": meta_key})
    return means
