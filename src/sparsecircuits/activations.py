"""Activation sparsity (after Jin et al. 2026): do hidden states get sparser on unfamiliar
and harder inputs, and does that emerge during training?

Metrics, defined once; each maps hidden-state vectors h [..., d] to one number per vector:
- topk_energy(h, frac): share of sum(h_i^2) held by the largest `frac` of the h_i^2
  ("energy" is the squared value, here and everywhere); higher = sparser.
- effective_rank(h): exp(entropy of p), p_i = h_i^2 / sum h^2, divided by d; lower = sparser.
- hoyer(h): (sqrt(d) - L1/L2) / (sqrt(d) - 1), 0 for a flat vector, 1 for a one-hot one.
- frac_above(h): fraction of |h_i| above mean(|h|) + 1 std(|h|) (no sparser direction).
- frac_zero(h): fraction of exact zeros (AbsTopK and ReLU make them).
A vector of all zeros has no energy to distribute: its ratio metrics are NaN, not 0 or 1.
Each is read at a hook's last (prompt) token and averaged over the positions of an input.

Inputs: seven familiarity conditions of n_ctx-token windows (training-split code, held-out
code, held-out code with identifiers renamed, with lines shuffled, only its docstrings and
comments, its tokens shuffled, random tokens), and graded tasks (bracket depth, quote
distractors, context length) whose accuracy is measured with the activations.

Statistics: intervals are 95% bootstrap intervals over inputs. An effect is a difference of
means (condition - training code, hardest - easiest level) with an unpaired bootstrap
interval. Models with the same config but different seeds form a group: with >= 3 seeds the
group's interval is a t interval across seeds; with fewer it is the union of the seeds'
input intervals. An effect whose interval contains 0 is reported as "not found".
"""

from __future__ import annotations

import ast
import builtins
import fnmatch
import functools
import io
import keyword
import math
import random
import re
import statistics
import tokenize
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .corpus import TokenData
from .errors import UserError, read_json, save_figure_atomic, write_json_atomic
from .stats import t_interval

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


# Which way is sparser: +1 if a higher value is sparser, -1 if lower; None: no direction.
SPARSER = {
    "top5_energy": 1,
    "top10_energy": 1,
    "effective_rank": -1,
    "hoyer": 1,
    "frac_above_mean_1std": None,
    "frac_zero": 1,
}
POSITIONS = ("last", "all_positions")


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


def code_prose(source: str) -> str:
    """Only the docstrings and comments of a Python file (comment text without its `#`):
    natural language from the same files, with the code taken out."""
    parts = []
    try:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    parts.append(doc)
    except (SyntaxError, ValueError):
        pass  # not Python (or not this version's): comments may still be found
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT and tok.string.lstrip("#").strip():
                parts.append(tok.string.lstrip("#").strip())
    except (tokenize.TokenError, SyntaxError):
        pass
    return "\n".join(parts)


def heldout_files(data: TokenData, max_chars: int = 2_000_000):
    """Texts of the held-out files, decoded from the token cache (each file is followed by
    the end-of-text token), until `max_chars`."""
    from .tokenizer import eot_id

    ends = (data.heldout == eot_id(data.tokenizer)).nonzero()[0]
    start, total = 0, 0
    for end in ends:
        text = data.tokenizer.decode(data.heldout[start:end].tolist())
        start = end + 1
        total += len(text)
        yield text
        if total >= max_chars:
            return


def prose_windows(data: TokenData, n: int, n_ctx: int, seed: int) -> torch.Tensor | None:
    """[n, n_ctx] windows of the held-out files' docstrings and comments; None if they hold
    fewer than one window of tokens."""
    import numpy as np

    chunks, need = [], 4 * n * n_ctx * 4  # ~4 characters a token, 4x the tokens needed
    for text in heldout_files(data):
        chunks.append(code_prose(text))
        if sum(map(len, chunks)) >= need:
            break
    ids = np.asarray(data.tokenizer.encode("\n".join(chunks)).ids, dtype=np.int64)
    if len(ids) < n_ctx + 2:
        return None
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - n_ctx - 1, (n,), generator=g)
    return TokenData._windows(ids, starts, n_ctx)[:, :-1]


CONDITIONS = (
    "train",
    "heldout",
    "renamed_identifiers",
    "shuffled_lines",
    "non_code_text",
    "shuffled_tokens",
    "random_tokens",
)


def condition_windows(
    data: TokenData, n: int, n_ctx: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """[n, n_ctx] token windows per condition, from most to least familiar. non_code_text is
    left out when the held-out files have too few docstrings and comments."""
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
    windows = {
        "train": train,
        "heldout": heldout,
        "renamed_identifiers": retokenize(heldout, rename_identifiers),
        "shuffled_lines": retokenize(heldout, shuffle_lines),
        "non_code_text": prose_windows(data, n, n_ctx, seed),
        "shuffled_tokens": torch.stack([w[torch.randperm(n_ctx, generator=g)] for w in heldout]),
        "random_tokens": torch.randint(0, tok.get_vocab_size(), (n, n_ctx), generator=g),
    }
    return {k: v for k, v in windows.items() if v is not None}


# --- statistics ------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _resample_index(n: int, n_boot: int, seed: int) -> torch.Tensor:
    # the same seeded draw for every metric: drawing it once per size saves most of the time
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (n_boot, n), generator=g)


def _boot_means(v: torch.Tensor, n_boot: int, seed: int) -> torch.Tensor:
    return v[_resample_index(v.numel(), n_boot, seed)].mean(1)


def _interval(samples: torch.Tensor, level: float) -> tuple[float, float]:
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.double)
    lo, hi = torch.quantile(samples, q)
    return float(lo), float(hi)


def _r(x: float) -> float:
    return float(f"{x:.6g}")  # six digits: the JSON stays small, the effects are ~1e-3


def _not_nan(values: torch.Tensor) -> torch.Tensor:
    return values[~torch.isnan(values)].double()


def bootstrap_ci(values: torch.Tensor, n_boot: int = 1000, seed: int = 0, level: float = 0.95):
    """(mean, low, high) of the mean over inputs, by resampling inputs."""
    v = _not_nan(values)
    if v.numel() == 0:
        return (math.nan, math.nan, math.nan)
    lo, hi = _interval(_boot_means(v, n_boot, seed), level)
    return (_r(v.mean()), _r(lo), _r(hi))


def bootstrap_diff(b: torch.Tensor, a: torch.Tensor, n_boot: int = 1000, seed: int = 0):
    """(mean(b) - mean(a), low, high): inputs of the two sets resampled independently, which
    is conservative when they are paired."""
    a, b = _not_nan(a), _not_nan(b)
    if a.numel() == 0 or b.numel() == 0:
        return (math.nan, math.nan, math.nan)
    diffs = _boot_means(b, n_boot, seed + 1) - _boot_means(a, n_boot, seed)
    lo, hi = _interval(diffs, 0.95)
    return (_r(b.mean() - a.mean()), _r(lo), _r(hi))


MIN_SEEDS = 3


def combine_seeds(stats: list) -> dict:
    """One (mean, low, high) per seed -> the group's mean and interval: a t interval across
    seeds when there are >= MIN_SEEDS, else the union of the seeds' input intervals (a seed
    disagreeing in sign then puts 0 inside)."""
    stats = [s for s in stats if not math.isnan(s[0])]
    if not stats:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n_seeds": 0}
    means = [s[0] for s in stats]
    m = statistics.fmean(means)
    if len(stats) >= MIN_SEEDS:
        m, lo, hi = t_interval(means)
        how = f"t interval across {len(means)} seeds"
    else:
        lo, hi = min(s[1] for s in stats), max(s[2] for s in stats)
        how = "inputs only" + (" (union over 2 seeds)" if len(stats) == 2 else " (1 seed)")
    return {"mean": _r(m), "low": _r(lo), "high": _r(hi), "n_seeds": len(stats), "interval": how}


def verdict(metric: str, low: float, high: float) -> str:
    """ "not found" when the interval contains 0; else which way the effect goes."""
    if math.isnan(low) or math.isnan(high):
        return "not measured"
    if low <= 0 <= high:
        return "not found"
    up = low > 0
    if SPARSER.get(metric) is None:
        return "found: higher" if up else "found: lower"
    return "found: sparser" if up == (SPARSER[metric] > 0) else "found: denser"


# --- measuring -------------------------------------------------------------------------

# Hooks whose activations are not one vector per position (attention scores and patterns).
_NOT_VECTORS = ("hook_attn_scores", "hook_pattern", "hook_sink")


def resolve_hooks(model, patterns: list[str], where) -> list[str]:
    """Hook names matching any pattern, in model order. A pattern with * ? or [ is a glob on
    the full name; any other pattern matches names containing it (`resid_post`, `mlp.hook_post`)."""
    names = [n for n in model.hook_dict if not n.endswith(_NOT_VECTORS)]
    chosen = set()
    for p in patterns:
        glob = p if any(c in p for c in "*?[") else f"*{p}*"
        hits = [n for n in names if fnmatch.fnmatchcase(n, glob)]
        if not hits:
            raise UserError(
                f"{where}: no per-position hook matches {p!r} (hooks: {', '.join(names[:6])}, ...)"
            )
        chosen.update(hits)
    return [n for n in names if n in chosen]


@torch.no_grad()
def per_input(model, tokens: torch.Tensor, hooks: list[str], last_pos=None):
    """(logits, {hook: {metric: {"last": [n], "all_positions": [n]}}}): every metric for each
    input at its last token (`last_pos`, default the final position) and averaged over its
    positions up to there."""
    logits, cache = model.run_with_cache(tokens, names_filter=hooks)
    n, t = tokens.shape
    last = torch.full((n,), t - 1) if last_pos is None else last_pos
    valid = torch.arange(t)[None, :] <= last[:, None]
    out = {}
    for hook in hooks:
        h = cache[hook].flatten(2) if cache[hook].dim() > 3 else cache[hook]
        out[hook] = {
            name: {
                "last": v[torch.arange(n), last],
                "all_positions": torch.where(valid, v, torch.nan).nanmean(1),
            }
            for name, v in sparsity_metrics(h).items()
        }
    return logits, out


def _map(fn, *trees):
    """fn applied leaf-wise to {hook: {metric: {position: leaf}}} trees of the same shape."""
    return {
        hook: {
            m: {p: fn(m, *(t[hook][m][p] for t in trees)) for p in trees[0][hook][m]}
            for m in trees[0][hook]
        }
        for hook in trees[0]
    }


def summarise(values: dict) -> dict:
    """{hook: {metric: {position: (mean, low, high)}}}, intervals over inputs."""
    return _map(lambda _m, v: bootstrap_ci(v), values)


def effects(values: dict, baseline: dict) -> dict:
    """{hook: {metric: {position: {diff, low, high, verdict}}}} of values - baseline."""

    def one(metric, b, a):
        d, lo, hi = bootstrap_diff(b, a)
        return {"diff": d, "low": lo, "high": hi, "verdict": verdict(metric, lo, hi)}

    return _map(one, values, baseline)


def layer_metrics(model, windows: torch.Tensor, hooks: list[str] | None = None) -> dict:
    """{hook: {metric: {"last": (mean, lo, hi), "all_positions": (mean, lo, hi)}}}; the
    interval is over inputs (windows)."""
    hooks = hooks or [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layer)]
    return summarise(per_input(model, windows, hooks)[1])


# --- difficulty ------------------------------------------------------------------------


@dataclass
class ActivationsConfig:
    n: int = 64  # windows per familiarity condition
    seed: int = 0
    hooks: list[str] = field(default_factory=lambda: ["resid_post"])
    n_pairs: int = 32  # prompt pairs per difficulty level
    context_task: str = "single_double_quote"  # the task put after prefixes of held-out code
    context_fracs: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0])
    metric: str = "top10_energy"  # the metric of plots and report text (the JSON has all)
    difficulty: bool = True
    training: bool = True  # also every snapshot in checkpoints/step_*

    def __post_init__(self):
        if self.metric not in METRICS:
            raise UserError(f"unknown metric {self.metric!r}; choose one of {', '.join(METRICS)}")
        if self.n < 2 or self.n_pairs < 2:
            raise UserError("activations: need at least 2 inputs per condition and level")


def _fitting_batch(task, tok, n_ctx: int, min_pairs: int = 4):
    """The task's test pairs whose prompts fit in n_ctx, encoded; or a reason why not."""
    from .tasks import Task

    def fits(p):
        return max(len(tok.encode(x).ids) for x in (p.prompt_a, p.prompt_b)) <= n_ctx

    kept = [p for p in task.test if fits(p)]
    if len(kept) < min_pairs:
        return f"{len(kept)} of {len(task.test)} pairs fit in n_ctx={n_ctx}"
    try:
        return Task(task.name, task.description, [], kept).encode(tok, "test", n_ctx)
    except UserError as e:
        return str(e)


def _context_levels(cfg: ActivationsConfig, data: TokenData, n_ctx: int):
    """(level, label, Task): the context task after held-out code prefixes of increasing
    length (in tokens, cut to whole lines)."""
    from .tasks import Pair, Task, get_task

    tok = data.tokenizer
    base = get_task(cfg.context_task, 0, cfg.n_pairs, cfg.seed)
    longest = max(len(tok.encode(x).ids) for p in base.test for x in (p.prompt_a, p.prompt_b))
    room = n_ctx - longest - 8  # re-tokenizing at the join may add a few tokens
    g = torch.Generator().manual_seed(cfg.seed)
    out = []
    for frac in cfg.context_fracs:
        length = int(frac * max(room, 0))
        pairs, sizes = [], []
        for p in base.test:
            start = int(torch.randint(0, len(data.heldout) - length - 1, (1,), generator=g))
            text = tok.decode(data.heldout[start : start + length].tolist()) if length else ""
            prefix = text[text.find("\n") + 1 : text.rfind("\n") + 1]  # whole lines only
            sizes.append(len(tok.encode(prefix).ids))
            pairs.append(Pair(prefix + p.prompt_a, prefix + p.prompt_b, p.answer_a, p.answer_b))
        label = f"~{round(statistics.fmean(sizes))} tokens of code before"
        out.append((length, label, Task(base.name, base.description, [], pairs)))
    return out


def difficulty_levels(cfg: ActivationsConfig, data: TokenData, n_ctx: int) -> dict:
    """{axis: [(level, label, Task)]} for every difficulty axis."""
    from .tasks.difficulty import AXES

    axes = {
        name: [(lv, f"level {lv}", ax.task(lv, cfg.n_pairs, cfg.seed)) for lv in ax.levels]
        for name, ax in AXES.items()
    }
    axes["context_length"] = _context_levels(cfg, data, n_ctx)
    return axes


def measure_difficulty(model, tok, levels: dict, hooks: list[str]) -> dict:
    """Per axis: per level the accuracy (correct logit > incorrect) and metrics at the last
    prompt token, and the hardest - easiest effects."""
    from .tasks import task_logit_diff

    out = {}
    for axis, rows in levels.items():
        measured, skipped = [], []
        for level, label, task in rows:
            batch = _fitting_batch(task, tok, model.cfg.n_ctx)
            if isinstance(batch, str):
                skipped.append(f"level {level}: {batch}")
                continue
            logits, vals = per_input(model, batch.tokens, hooks, batch.last_pos)
            correct = (task_logit_diff(logits, batch) > 0).double()
            measured.append((level, label, len(batch), correct, vals))
        res = {
            "levels": [
                {
                    "level": lv,
                    "label": label,
                    "n_prompts": n,
                    "accuracy": bootstrap_ci(correct),
                    "metrics": summarise(vals),
                }
                for lv, label, n, correct, vals in measured
            ],
            "skipped": skipped,
        }
        if len(measured) >= 2:
            first, last = measured[0], measured[-1]
            res["hardest_minus_easiest"] = effects(last[4], first[4])
            d, lo, hi = bootstrap_diff(last[3], first[3])
            res["accuracy_hardest_minus_easiest"] = {"diff": d, "low": lo, "high": hi}
        out[axis] = res
    return out


# --- one checkpoint --------------------------------------------------------------------


def snapshots(model_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of the snapshots training kept, oldest first."""
    found = []
    for d in (model_dir / "checkpoints").glob("step_*"):
        m = re.fullmatch(r"step_(\d+)", d.name)
        if m and d.is_dir():
            found.append((int(m.group(1)), d))
    return sorted(found)


def familiarity(model, windows: dict, hooks: list[str]) -> tuple[dict, dict]:
    """(summaries, effects vs training code) of every condition."""
    vals = {name: per_input(model, w, hooks)[1] for name, w in windows.items()}
    return (
        {name: summarise(v) for name, v in vals.items()},
        {name: effects(v, vals["train"]) for name, v in vals.items() if name != "train"},
    )


def describe_config(model_dir) -> tuple[str, str, dict]:
    """(kind, label, config without the seed) of a checkpoint: models that differ only in
    seed get the same config and so form one group."""
    from .checkpoint import load_config
    from .config import config_to_dict

    m, t = load_config(model_dir)
    key = config_to_dict(m, t)
    if t is None:
        return "imported", f"d_model {m.d_model} (imported)", key
    key["train"].pop("seed")
    kind = "dense" if t.density >= 1 else "sparse"
    label = (
        f"dense, d_model {m.d_model}"
        if kind == "dense"
        else f"sparse {t.density:.4g}, d_model {m.d_model}"
    )
    return kind, label, key


def analyse_checkpoint(model_dir, cfg: ActivationsConfig | None = None) -> dict:
    """Every condition x hook x metric for one checkpoint on its own corpus, difficulty
    levels with accuracy, and the same on every training snapshot."""
    from .checkpoint import checkpoint_corpus, load, load_config

    cfg = cfg or ActivationsConfig()
    model_dir = Path(model_dir)
    model, tok = load(model_dir)
    if tok is None:
        raise UserError(f"{model_dir}: activation analysis needs the checkpoint's tokenizer.json")
    hooks = resolve_hooks(model, cfg.hooks, model_dir)
    data = checkpoint_corpus(model_dir, model, tok)
    windows = condition_windows(data, cfg.n, model.cfg.n_ctx, cfg.seed)
    summaries, effs = familiarity(model, windows, hooks)
    kind, label, _ = describe_config(model_dir)
    _, train_cfg = load_config(model_dir)
    out = {
        "model_dir": str(model_dir),
        "kind": kind,
        "label": label,
        "seed": train_cfg.seed if train_cfg else None,
        "n_inputs": cfg.n,
        "hooks": hooks,
        "conditions": summaries,
        "effects": effs,
        "skipped_conditions": [c for c in CONDITIONS if c not in windows],
    }
    if cfg.difficulty:
        out["difficulty"] = measure_difficulty(
            model, tok, difficulty_levels(cfg, data, model.cfg.n_ctx), hooks
        )
    if cfg.training:
        out["training"] = _over_training(model_dir, windows, hooks, train_cfg, model)
    return out


def _over_training(model_dir: Path, windows: dict, hooks: list[str], train_cfg, final) -> dict:
    """The familiarity measurement on every snapshot (and the final weights, when training
    ended between snapshots), on the same windows."""
    from .checkpoint import load

    steps = []
    snaps = snapshots(model_dir)
    for step, d in snaps:
        model, _ = load(d)
        if model.cfg != final.cfg:
            raise UserError(f"{d / 'config.json'}: snapshot does not match {model_dir}")
        steps.append((step, *familiarity(model, windows, hooks)))
    if snaps and train_cfg and train_cfg.steps not in {s for s, _ in snaps}:
        steps.append((train_cfg.steps, *familiarity(final, windows, hooks)))
    return {
        "steps": [s for s, _, _ in steps],
        "conditions": [c for _, c, _ in steps],
        "effects": [e for _, _, e in steps],
    }


# --- groups of seeds -------------------------------------------------------------------


def _group_tree(trees: list[dict], with_verdict: bool = False) -> dict:
    """Leaf-wise combine_seeds over the seeds' trees (leaves (mean, lo, hi) or effects)."""

    def one(metric, *leaves):
        stats = [(x["diff"], x["low"], x["high"]) if isinstance(x, dict) else x for x in leaves]
        c = combine_seeds(stats)
        if with_verdict:
            c["verdict"] = verdict(metric, c["low"], c["high"])
        return c

    return _map(one, *trees)


def _group_difficulty(models: list[dict]) -> dict:
    out = {}
    for axis in models[0].get("difficulty", {}):
        per = [m["difficulty"][axis] for m in models]
        common = set.intersection(*({lv["level"] for lv in p["levels"]} for p in per))
        levels = []
        for row in per[0]["levels"]:
            if row["level"] in common:
                rows = [next(x for x in p["levels"] if x["level"] == row["level"]) for p in per]
                levels.append(
                    {
                        "level": row["level"],
                        "label": row["label"],
                        "accuracy": combine_seeds([r["accuracy"] for r in rows]),
                        "metrics": _group_tree([r["metrics"] for r in rows]),
                    }
                )
        res = {"levels": levels}
        if all("hardest_minus_easiest" in p for p in per):
            res["hardest_minus_easiest"] = _group_tree(
                [p["hardest_minus_easiest"] for p in per], True
            )
            acc = combine_seeds([tuple(p["accuracy_hardest_minus_easiest"].values()) for p in per])
            res["accuracy_hardest_minus_easiest"] = acc | {
                "verdict": verdict("accuracy", acc["low"], acc["high"])
            }
        out[axis] = res
    return out


def _group_training(models: list[dict], hook: str, metric: str) -> dict | None:
    runs = [m.get("training") for m in models]
    if not all(r and r["steps"] for r in runs):
        return None
    steps = sorted(set.intersection(*(set(r["steps"]) for r in runs)))
    pick = [[r["steps"].index(s) for s in steps] for r in runs]
    conditions = [
        {
            c: _group_tree([r["conditions"][i[k]][c] for r, i in zip(runs, pick, strict=True)])
            for c in runs[0]["conditions"][0]
        }
        for k in range(len(steps))
    ]
    effs = [
        {
            c: _group_tree([r["effects"][i[k]][c] for r, i in zip(runs, pick, strict=True)], True)
            for c in runs[0]["effects"][0]
        }
        for k in range(len(steps))
    ]
    emergence = {}
    for c in effs[0] if effs else {}:
        vs = [e[c][hook][metric]["last"]["verdict"] for e in effs]
        # the first snapshot from which the unfamiliar input stays sparser to the end
        at = next(
            (steps[i] for i in range(len(vs)) if all(v == "found: sparser" for v in vs[i:])), None
        )
        emergence[c] = {"verdicts": vs, "sparser_from_step": at}
    return {"steps": steps, "conditions": conditions, "effects": effs, "emergence": emergence}


def group_results(models: list[dict], keys: list[dict], cfg: ActivationsConfig) -> list[dict]:
    """Models of the same config (all but the seed) as one group, dense groups first."""
    import json

    by_key: dict[str, list[dict]] = {}
    for m, key in zip(models, keys, strict=True):
        by_key.setdefault(json.dumps(key, sort_keys=True), []).append(m)
    groups = []
    for members in by_key.values():
        hook = members[0]["hooks"][-1]
        groups.append(
            {
                "label": members[0]["label"],
                "kind": members[0]["kind"],
                "model_dirs": [m["model_dir"] for m in members],
                "seeds": [m["seed"] for m in members],
                "headline": {"hook": hook, "metric": cfg.metric, "position": "last"},
                "conditions": {
                    c: _group_tree([m["conditions"][c] for m in members])
                    for c in members[0]["conditions"]
                },
                "effects": {
                    c: _group_tree([m["effects"][c] for m in members], True)
                    for c in members[0]["effects"]
                },
                "difficulty": _group_difficulty(members),
                "training": _group_training(members, hook, cfg.metric),
            }
        )
    return sorted(groups, key=lambda g: (g["kind"] != "dense", g["label"]))


# --- running ---------------------------------------------------------------------------

RESULTS_VERSION = 2
FILES = {
    "json": "activations.json",
    "layers": "activations.png",
    "training": "activations_training.png",
    "difficulty": "activations_difficulty.png",
}


def run_activations(model_dirs: list, out, cfg: ActivationsConfig | None = None) -> dict:
    """Analyse every checkpoint, group seeds, write activations.json, the plots and a
    report section into `out`."""
    from .report import _finite

    cfg = cfg or ActivationsConfig()
    out = Path(out)
    models = [analyse_checkpoint(d, cfg) for d in model_dirs]
    keys = [describe_config(d)[2] for d in model_dirs]
    results = {
        "schema_version": RESULTS_VERSION,
        "metric_definitions": __doc__,
        "config": asdict(cfg),
        "groups": group_results(models, keys, cfg),
        "models": models,
    }
    results = _finite(results)
    write_json_atomic(out / FILES["json"], results)
    plot_by_layer(results, out / FILES["layers"], cfg.metric)
    images = [("layers", "metric by layer per input condition")]
    if any(g["training"] for g in results["groups"]):
        plot_training(results, out / FILES["training"], cfg.metric)
        images.append(("training", "metric over training, familiar vs unfamiliar"))
    if any(g["difficulty"] for g in results["groups"]):
        plot_difficulty(results, out / FILES["difficulty"], cfg.metric)
        images.append(("difficulty", "metric and accuracy by difficulty level"))
    write_activation_section(results, out, images)
    return results


def run_study_activations(study_dir, out=None, cfg: ActivationsConfig | None = None):
    """The analysis on a study's models (every kind and seed), into DIR/activations by
    default, then the study report rebuilt with its section."""
    from .report import build_report

    study_dir = Path(study_dir)
    rows = read_json(study_dir / "results.json").get("models")
    if not isinstance(rows, list) or not rows:
        raise UserError(f"{study_dir / 'results.json'}: lists no models")
    dirs = [Path(r["dir"]) if Path(r["dir"]).is_absolute() else study_dir / r["dir"] for r in rows]
    results = run_activations(dirs, Path(out) if out else study_dir / "activations", cfg)
    return results, build_report(study_dir)


# --- text and plots --------------------------------------------------------------------


def _fmt(c: dict) -> str:
    return f"{c['mean']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]"


def write_activation_section(results: dict, out: Path, images: list) -> Path:
    from .report import write_section

    metric = results["config"]["metric"]
    paras = [
        "Do hidden states get sparser on unfamiliar or harder inputs (Jin et al. 2026)? "
        f"Metric: {metric}; effects are condition minus training-split code at the last "
        "token, with 95% intervals (over inputs, or across seeds for groups of >= 3 seeds). "
        "An effect whose interval contains 0 is reported as not found.",
    ]
    rows = []
    for g in results["groups"]:
        h = g["headline"]["hook"]
        found = []
        for c, e in g["effects"].items():
            last, allp = e[h][metric]["last"], e[h][metric]["all_positions"]
            rows.append(
                [
                    g["label"],
                    len(g["seeds"]),
                    c,
                    _fmt(last),
                    last["verdict"],
                    _fmt(allp),
                    allp["verdict"],
                ]
            )
            if last["verdict"] != "not found":
                found.append(f"{c} ({last['verdict']})")
        paras.append(
            f"{g['label']} ({len(g['seeds'])} seed(s), {h}): "
            + (f"effects found for {', '.join(found)}" if found else "no effect found")
            + "."
        )
        tr = g.get("training")
        if tr:
            em = ", ".join(
                f"{c}: {'from step ' + str(e['sparser_from_step']) if e['sparser_from_step'] is not None else 'never stably sparser'}"
                for c, e in tr["emergence"].items()
            )
            paras.append(f"{g['label']} over training (steps {tr['steps']}): {em}.")
    diff_rows = []
    for g in results["groups"]:
        h = g["headline"]["hook"]
        for axis, res in g["difficulty"].items():
            for lv in res["levels"]:
                diff_rows.append(
                    [
                        g["label"],
                        axis,
                        lv["label"],
                        f"{lv['accuracy']['mean']:.3f}",
                        f"{lv['metrics'][h][metric]['last']['mean']:.4f}",
                    ]
                )
            e = res.get("hardest_minus_easiest")
            if e:
                d = e[h][metric]["last"]
                paras.append(
                    f"{g['label']}, {axis}: hardest - easiest {metric} {_fmt(d)} ({d['verdict']}); "
                    f"accuracy {_fmt(res['accuracy_hardest_minus_easiest'])}."
                )
    paras.append(
        "Many metric x layer x condition comparisons are made; treat a single 'found' among "
        "them with the usual caution. The JSON (activations.json) holds every metric, hook and "
        "position."
    )
    tables = [
        {
            "caption": f"{metric}: condition minus training code",
            "columns": [
                "model",
                "seeds",
                "condition",
                "last token",
                "verdict",
                "all positions",
                "verdict",
            ],
            "rows": rows,
        },
        {
            "caption": f"difficulty: accuracy and {metric} at the last token",
            "columns": ["model", "axis", "level", "accuracy", metric],
            "rows": diff_rows,
        },
    ]
    imgs = [{"caption": cap, "file": FILES[k]} for k, cap in images]
    return write_section(out, "Activation sparsity", paras, tables, imgs)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _errorbar(ax, x, stats, **kw):
    ax.errorbar(
        x,
        [s["mean"] for s in stats],
        yerr=[[s["mean"] - s["low"] for s in stats], [s["high"] - s["mean"] for s in stats]],
        marker="o",
        capsize=3,
        **kw,
    )


def _panels(groups, rows: int = 1):
    plt = _plt()
    fig, axes = plt.subplots(
        rows, len(groups), figsize=(4.6 * len(groups), 3.6 * rows), squeeze=False
    )
    for ax, g in zip(axes[0], groups, strict=True):
        ax.set_title(f"{g['label']} ({len(g['seeds'])} seed(s))", fontsize=9)
    return fig, axes


def plot_by_layer(results: dict, path: Path, metric: str = "top10_energy") -> None:
    """One panel per model group (dense first): metric at the last token vs hook, a line per
    condition."""
    groups = results["groups"]
    fig, axes = _panels(groups)
    for ax, g in zip(axes[0], groups, strict=True):
        for cond, hooks in g["conditions"].items():
            _errorbar(ax, range(len(hooks)), [hooks[h][metric]["last"] for h in hooks], label=cond)
        ax.set_xticks(range(len(hooks)), [h.removeprefix("blocks.") for h in hooks], fontsize=6)
        ax.set_ylabel(f"{metric}, last token (95% CI)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)


def plot_training(results: dict, path: Path, metric: str = "top10_energy") -> None:
    groups = [g for g in results["groups"] if g["training"]]
    fig, axes = _panels(groups)
    for ax, g in zip(axes[0], groups, strict=True):
        tr, h = g["training"], g["headline"]["hook"]
        for cond in tr["conditions"][0]:
            _errorbar(
                ax, tr["steps"], [s[cond][h][metric]["last"] for s in tr["conditions"]], label=cond
            )
        ax.set_xlabel("training step")
        ax.set_ylabel(f"{metric} at {h}, last token")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)


def plot_difficulty(results: dict, path: Path, metric: str = "top10_energy") -> None:
    """A row per difficulty axis, a column per group: metric (solid) and accuracy (dashed,
    right axis) by level."""
    groups = [g for g in results["groups"] if g["difficulty"]]
    axis_names = list(groups[0]["difficulty"])
    fig, axes = _panels(groups, rows=len(axis_names))
    for col, g in enumerate(groups):
        h = g["headline"]["hook"]
        for row, axis in enumerate(axis_names):
            ax, levels = axes[row][col], g["difficulty"].get(axis, {}).get("levels", [])
            x = range(len(levels))
            _errorbar(ax, x, [lv["metrics"][h][metric]["last"] for lv in levels], color="C0")
            acc = ax.twinx()
            _errorbar(acc, x, [lv["accuracy"] for lv in levels], color="C3", linestyle="--")
            acc.set_ylim(-0.05, 1.05)
            acc.set_ylabel("accuracy (dashed)", fontsize=7, color="C3")
            ax.set_xticks(x, [str(lv["level"]) for lv in levels])
            ax.set_xlabel(axis + (" (prefix tokens)" if axis == "context_length" else " level"))
            ax.set_ylabel(f"{metric}, last token", fontsize=7, color="C0")
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
