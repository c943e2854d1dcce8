"""Activation-sparsity metrics (after Jin et al. 2026), defined once for every analysis.

Each metric maps hidden-state vectors h [..., d] to one number per vector:
- topk_energy(h, frac): share of sum(h_i^2) held by the largest `frac` of the h_i^2
  ("energy" is the squared value, here and everywhere); higher = sparser.
- effective_rank(h): exp(entropy of p), p_i = h_i^2 / sum h^2, divided by d; lower = sparser.
- hoyer(h): (sqrt(d) - L1/L2) / (sqrt(d) - 1), 0 for a flat vector, 1 for a one-hot one.
- frac_above(h): fraction of |h_i| above mean(|h|) + 1 std(|h|).
- frac_zero(h): fraction of exact zeros (AbsTopK and ReLU make them).
A vector of all zeros has no energy to distribute: its ratio metrics are NaN, not 0 or 1.
"""

from __future__ import annotations

import builtins
import keyword
import math
import random
import re
from pathlib import Path

import torch

from .corpus import TokenData
from .errors import UserError, save_figure_atomic, write_json_atomic

EPS = 1e-30


def _energy(h: torch.Tensor) -> torch.Tensor:
    return h.double().pow(2)


def topk_energy(h: torch.Tensor, frac: float) -> torch.Tensor:
    e = _energy(h)
    k = max(1, math.ceil(frac * h.shape[-1]))
    total = e.sum(-1)
    top = e.topk(k, dim=-1).values.sum(-1)
    return torch.where(total > 0, top / total.clamp_min(EPS), torch.nan)


def effective_rank(h: torch.Tensor) -> torch.Tensor:
    e = _energy(h)
    total = e.sum(-1, keepdim=True)
    p = e / total.clamp_min(EPS)
    entropy = -(p * torch.log(p.clamp_min(EPS))).sum(-1)
    return torch.where(total.squeeze(-1) > 0, entropy.exp() / h.shape[-1], torch.nan)


def hoyer(h: torch.Tensor) -> torch.Tensor:
    d = h.shape[-1]
    a = h.double().abs()
    l1, l2 = a.sum(-1), a.pow(2).sum(-1).sqrt()
    value = (math.sqrt(d) - l1 / l2.clamp_min(EPS)) / (math.sqrt(d) - 1)
    return torch.where(l2 > 0, value, torch.nan)


def frac_above(h: torch.Tensor) -> torch.Tensor:
    a = h.double().abs()
    thresh = a.mean(-1, keepdim=True) + a.std(-1, keepdim=True, correction=0)
    return (a > thresh).double().mean(-1)


def frac_zero(h: torch.Tensor) -> torch.Tensor:
    return (h == 0).double().mean(-1)


METRICS = {
    "top5_energy": lambda h: topk_energy(h, 0.05),
    "top10_energy": lambda h: topk_energy(h, 0.10),
    "effective_rank": effective_rank,
    "hoyer": hoyer,
    "frac_above_mean_1std": frac_above,
    "frac_zero": frac_zero,
}


def sparsity_metrics(h: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every metric for every vector: {name: tensor of h.shape[:-1]}."""
    return {name: fn(h) for name, fn in METRICS.items()}


# --- conditions: the same model on familiar and unfamiliar inputs ------------------------

_IDENT = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")


def rename_identifiers(text: str, seed: int = 0) -> str:
    """Replace every non-keyword, non-builtin identifier by a consistent random name: the
    code's structure stays, its vocabulary becomes unfamiliar."""
    rng = random.Random(seed)
    names: dict[str, str] = {}
    keep = set(keyword.kwlist) | set(dir(builtins))

    def sub(m):
        word = m.group(0)
        if word in keep:
            return word
        if word not in names:
            names[word] = "v" + "".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(5))
        return names[word]

    return _IDENT.sub(sub, text)


def shuffle_lines(text: str, seed: int = 0) -> str:
    lines = text.split("\n")
    random.Random(seed).shuffle(lines)
    return "\n".join(lines)


def condition_windows(
    data: TokenData, n: int, n_ctx: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """[n, n_ctx] token windows per condition, from most to least familiar."""
    tok = data.tokenizer
    train = data.batch("train", n, n_ctx, seed, 0)[:, :-1]
    heldout = data.batch("heldout", n, n_ctx, seed, 0)[:, :-1]

    def retokenize(windows, edit):
        out = []
        for i, w in enumerate(windows.tolist()):
            ids = tok.encode(edit(tok.decode(w), seed + i)).ids[:n_ctx]
            ids += [ids[-1]] * (n_ctx - len(ids)) if ids else [0] * n_ctx
            out.append(ids)
        return torch.tensor(out)

    g = torch.Generator().manual_seed(seed)
    return {
        "train": train,
        "heldout": heldout,
        "renamed_identifiers": retokenize(heldout, rename_identifiers),
        "shuffled_lines": retokenize(heldout, shuffle_lines),
        "shuffled_tokens": torch.stack([w[torch.randperm(n_ctx, generator=g)] for w in heldout]),
        "random_tokens": torch.randint(0, tok.get_vocab_size(), (n, n_ctx), generator=g),
    }


def bootstrap_ci(values: torch.Tensor, n_boot: int = 1000, seed: int = 0, level: float = 0.95):
    """(mean, low, high) of the mean over inputs, by resampling inputs."""
    v = values[~torch.isnan(values)].double()
    if v.numel() == 0:
        return (math.nan, math.nan, math.nan)
    g = torch.Generator().manual_seed(seed)
    means = v[torch.randint(0, v.numel(), (n_boot, v.numel()), generator=g)].mean(1)
    lo, hi = torch.quantile(
        means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.double)
    )
    return (float(v.mean()), float(lo), float(hi))


@torch.no_grad()
def layer_metrics(model, windows: torch.Tensor, hooks: list[str] | None = None) -> dict:
    """{hook: {metric: {"last": (mean, lo, hi), "all_positions": (mean, lo, hi)}}}; the
    interval is over inputs (windows)."""
    hooks = hooks or [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layer)]
    _, cache = model.run_with_cache(windows, names_filter=hooks)
    out = {}
    for hook in hooks:
        h = cache[hook].flatten(2) if cache[hook].dim() > 3 else cache[hook]
        m = sparsity_metrics(h)  # each [n, pos]
        out[hook] = {
            name: {"last": bootstrap_ci(v[:, -1]), "all_positions": bootstrap_ci(v.nanmean(1))}
            for name, v in m.items()
        }
    return out


def analyse_checkpoint(model_dir, n: int = 64, seed: int = 0) -> dict:
    """Every condition x layer x metric for one checkpoint, on its own corpus."""
    from .checkpoint import checkpoint_corpus, load

    model, tok = load(model_dir)
    if tok is None:
        raise UserError(f"{model_dir}: activation analysis needs the checkpoint's tokenizer.json")
    data = checkpoint_corpus(model_dir, model, tok)
    windows = condition_windows(data, n, model.cfg.n_ctx, seed)
    return {
        "model_dir": str(model_dir),
        "n_inputs": n,
        "conditions": {name: layer_metrics(model, w) for name, w in windows.items()},
    }


def run_activations(model_dirs: list[str], out, n: int = 64, seed: int = 0) -> dict:
    out = Path(out)
    results = {
        "schema_version": 1,
        "metric_definitions": __doc__,
        "models": [analyse_checkpoint(d, n, seed) for d in model_dirs],
    }
    write_json_atomic(out / "activations.json", results)
    plot_by_layer(results, out / "activations.png")
    return results


def plot_by_layer(results: dict, path: Path, metric: str = "top10_energy") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.8), squeeze=False)
    for ax, m in zip(axes[0], models, strict=True):
        for cond, layers in m["conditions"].items():
            stats = [layers[h][metric]["last"] for h in layers]
            x = range(len(stats))
            ax.errorbar(
                x,
                [s[0] for s in stats],
                yerr=[[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]],
                marker="o",
                capsize=3,
                label=cond,
            )
        ax.set_title(Path(m["model_dir"]).name, fontsize=9)
        ax.set_xlabel("layer (residual stream after the block)")
        ax.set_ylabel(f"{metric} at the last token (95% CI)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
