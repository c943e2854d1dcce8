"""The inputs: seven familiarity conditions of n_ctx-token windows built from the corpus, and
graded tasks (bracket depth, quote distractors, context length)."""

from __future__ import annotations

import ast
import builtins
import io
import keyword
import random
import re
import statistics
import tokenize
from dataclasses import dataclass

import numpy as np
import torch

from ..corpus import TokenData
from ..errors import UserError
from ..tasks import Pair, Task, get_task
from ..tasks.difficulty import AXES
from ..tokenizer import eot_id
from .config import ActivationsConfig

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
    return TokenData.windows(ids, starts, n_ctx)[:, :-1]


@dataclass
class Inputs:
    """Token windows and each one's last real position: a retokenised window may come out
    shorter than n_ctx, and what follows its last position is padding no measure reads."""

    tokens: torch.Tensor  # [n, n_ctx]
    last_pos: torch.Tensor  # [n]

    @classmethod
    def full(cls, tokens: torch.Tensor) -> Inputs:
        n, t = tokens.shape
        return cls(tokens, torch.full((n,), t - 1))


PAD = 0  # any id: positions after last_pos are masked, and causal attention never reads them

CONDITIONS = (
    "train",
    "heldout",
    "renamed_identifiers",
    "shuffled_lines",
    "non_code_text",
    "shuffled_tokens",
    "random_tokens",
)


def condition_windows(data: TokenData, n: int, n_ctx: int, seed: int = 0) -> dict[str, Inputs]:
    """n windows of n_ctx tokens per condition, from most to least familiar. non_code_text is
    left out when the held-out files have too few docstrings and comments."""
    tok = data.tokenizer
    train = data.batch("train", n, n_ctx, seed, 0)[:, :-1]
    heldout = data.batch("heldout", n, n_ctx, seed, 0)[:, :-1]

    def retokenize(windows, edit):
        out, last = [], []
        for i, w in enumerate(windows.tolist()):
            ids = tok.encode(edit(tok.decode(w), seed + i)).ids[:n_ctx] or [PAD]
            last.append(len(ids) - 1)
            out.append(ids + [PAD] * (n_ctx - len(ids)))
        return Inputs(torch.tensor(out), torch.tensor(last))

    g = torch.Generator().manual_seed(seed)
    prose = prose_windows(data, n, n_ctx, seed)
    windows = {
        "train": Inputs.full(train),
        "heldout": Inputs.full(heldout),
        "renamed_identifiers": retokenize(heldout, rename_identifiers),
        "shuffled_lines": retokenize(heldout, shuffle_lines),
        "non_code_text": None if prose is None else Inputs.full(prose),
        "shuffled_tokens": Inputs.full(
            torch.stack([w[torch.randperm(n_ctx, generator=g)] for w in heldout])
        ),
        "random_tokens": Inputs.full(
            torch.randint(0, tok.get_vocab_size(), (n, n_ctx), generator=g)
        ),
    }
    return {k: v for k, v in windows.items() if v is not None}


# --- difficulty ------------------------------------------------------------------------


def fitting_batch(task, tok, n_ctx: int, min_pairs: int = 4):
    """The task's test pairs whose prompts fit in n_ctx, encoded; or a reason why not."""

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
    tok = data.tokenizer
    base = get_task(cfg.context_task, 0, cfg.n_pairs, cfg.seed)
    longest = max(len(tok.encode(x).ids) for p in base.test for x in (p.prompt_a, p.prompt_b))
    room = n_ctx - longest - 8  # re-tokenizing at the join may add a few tokens
    g = torch.Generator().manual_seed(cfg.seed)
    out = []
    # a small context leaves little room: fractions that give the same prefix length would
    # be the same level twice (and a "hardest - easiest" of identical inputs), so once only
    lengths = dict.fromkeys(int(frac * max(room, 0)) for frac in cfg.context_fracs)
    for length in lengths:
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
    axes = {
        name: [(lv, f"level {lv}", ax.task(lv, cfg.n_pairs, cfg.seed)) for lv in ax.levels]
        for name, ax in AXES.items()
    }
    axes["context_length"] = _context_levels(cfg, data, n_ctx)
    return axes
