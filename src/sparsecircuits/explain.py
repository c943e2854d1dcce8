"""Node explanations: which simple concept of Python code a node tracks, and how well.

A *feature* is a per-token yes/no concept computed from the text the model sees. For a node
(any `NodeSite` channel) we take its activation at every token of the held-out corpus windows
(the windows of the node means) and of the task's prompts, and score every feature by the ROC
AUC of "activation predicts feature". A node tracking a concept *negatively* counts too: the
reported AUC is max(AUC, 1 - AUC) with the direction beside it. The best feature, its AUC,
precision and recall at the best threshold (max F1), example contexts at several activation
quantiles, and the tokens on the node's direct input and output paths make its explanation.

The feature library (`default_features`), each a function of the visible context only, as
the model's own input is. Windows start mid-file; lexical features begin at a window's first
full line (earlier tokens have them all false), and a string still open at a window's end
counts as a string. Lexing is Python's `tokenize`, restarted after an indentation error.

| feature                  | true at a token when                                             |
|--------------------------|------------------------------------------------------------------|
| `token 'x'`              | it is the token `x` (one feature per frequent token)             |
| `kind K`                 | its first non-blank character is in a K: identifier, keyword,    |
|                          | number, operator, string, comment; `kind whitespace` otherwise   |
| `in string '`, `in string "`, `in string triple` | inside a string opened by that quote  |
|                          | (triple: either triple quote); the quotes count as inside        |
| `opens string`, `closes string` | it holds a string's opening / closing quote             |
| `in comment`, `in docstring` | inside a `#` comment / a triple-quoted string statement      |
| `bracket depth d`        | d brackets enclose it (d = 0..3, and `4+`)                       |
| `innermost (` `[` `{`    | the innermost enclosing bracket is of that type                  |
| `after X`                | the previous code token is keyword X (def, for, if, lambda, ...) |
| `line starts with X`     | its line's first code token is keyword X                         |
| `line start`             | first non-blank token of its line                                |
| `indent n`               | its line is indented n levels of 4 columns (n = 0..3, and `4+`)  |
| `newline`                | it contains a line break                                         |
| `seen before`            | an identifier that already occurred in the context               |

Users add their own: `Feature(name, description, fn)` with `fn(ctx: Context)` returning one
bool per token of the context (`ctx.ids`, `ctx.pieces`, `ctx.text`, `ctx.lex`), e.g.
`Feature("in f-string", "...", lambda ctx: [q == "f" for q in ctx.lex.prefix])` and pass
`default_features(...) + [mine]` wherever `features=` is accepted.

Explanations are stored per node in circuit.json (`Circuit.explanations`) and cached beside
the checkpoint (`explanations.json`, keyed by the weights and the settings). A circuit's
*legibility* is the fraction of its nodes, and of its summed ablation effect, that one
feature explains: AUC >= 0.9 *and*, at the best threshold, precision and recall >= 0.9.
AUC alone is lenient: a channel that mixes a rare concept with others still ranks that
concept's tokens above most others (AUC > 0.9) while any threshold on it picks them out with
many false hits; on the planted model's rotated twins such mixed channels pass AUC >= 0.9
with precision as low as 0.49 (benchmarks/explain_criterion.py).
"""

from __future__ import annotations

import bisect
import functools
import keyword
import sys
import tokenize
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import checkpoint_corpus, load, load_config
from .circuit import Circuit
from .corpus import relocate_cached
from .errors import UserError
from .io import file_digest, read_json, write_json_atomic
from .nodes import NodeSite, _weights_digest, channels, heldout_windows, node_sites, parse_node
from .tasks import TASKS, get_task

LEGIBLE_AUC = 0.9
LEGIBLE_PR = 0.9  # precision and recall at the best-F1 threshold
CACHE_FILE = "explanations.json"
VERSION = 1  # of the scoring and the library: a change invalidates every cache
KEYWORDS = (
    "def", "class", "return", "if", "elif", "else", "for", "while", "in", "not", "and", "or",
    "lambda", "with", "as", "import", "from", "try", "except", "yield", "is", "None", "self",
)  # fmt: skip
QUANTILES = (
    ("max", 1.0),
    ("top 0.1%", 0.999),
    ("top 1%", 0.99),
    ("top 10%", 0.9),
    ("median", 0.5),
    ("bottom 1%", 0.01),
    ("min", 0.0),
)


@dataclass
class Settings:
    """What an explanation depends on besides the weights (part of the cache key)."""

    batches: int = 16  # held-out windows: as for the node means
    batch_size: int = 16
    n_tokens: int = 40  # token-identity features for the most frequent tokens
    min_positives: int = 10  # a feature true fewer times than this is not scored
    context_before: int = 12  # tokens shown before the example token
    context_after: int = 3
    top_k: int = 8  # top input tokens / pushed logits


# ---------- contexts and their lexing ----------


@dataclass
class Lexed:
    """Per token of a context: what Python's tokenizer says about its first non-blank char."""

    kind: list[
        str
    ]  # identifier | keyword | number | operator | string | comment | whitespace | unknown
    quote: list[str | None]  # the opening quote of the string it is in: ' " or triple
    prefix: list[str]  # that string's prefix letters, lowercased (f, r, b, ...)
    opens: list[bool]
    closes: list[bool]
    comment: list[bool]
    docstring: list[bool]
    depth: list[int]  # enclosing brackets; -1 before the first full line
    inner: list[str | None]
    prev: list[str | None]  # the previous code token's text
    line_first: list[str | None]  # first code token of its line
    line_start: list[bool]
    indent: list[int]  # levels of 4 columns; -1 unknown
    seen: list[bool]


@dataclass
class Context:
    """One window of tokens with its text; `lex_from` is where lexing may start (a line start)."""

    ids: list[int]
    pieces: list[str]
    lex_from: int

    @functools.cached_property
    def starts(self) -> list[int]:
        out, pos = [], 0
        for p in self.pieces:
            out.append(pos)
            pos += len(p)
        return out

    @functools.cached_property
    def text(self) -> str:
        return "".join(self.pieces)

    @functools.cached_property
    def lex(self) -> Lexed:
        return _lex_tokens(self)


def make_context(ids: Sequence[int], token_text: Sequence[str], from_line_start: bool) -> Context:
    """A context of token ids; a window cut from a file (not `from_line_start`) is lexed from
    its first full line on."""
    pieces = [token_text[i] for i in ids]
    ctx = Context(list(map(int, ids)), pieces, 0)
    if not from_line_start:
        nl = ctx.text.find("\n")
        ctx.lex_from = len(ctx.text) if nl < 0 else nl + 1
    return ctx


_CODE = {tokenize.NAME, tokenize.NUMBER, tokenize.STRING, tokenize.OP}
_OPEN, _CLOSE = "([{", ")]}"


def _lex_spans(text: str, start: int) -> list[tuple[int, int, int, str, int]]:
    """(type, start, end, string, previous token type) of the Python tokens of text[start:];
    an unterminated string runs to its line's end (single quote) or the text's end (triple)."""
    lines = text[start:].splitlines(keepends=True)
    line_at = [start]
    for line in lines:
        line_at.append(line_at[-1] + len(line))
    spans: list[tuple[int, int, int, str, int]] = []
    row0, prev = 0, tokenize.NEWLINE
    while row0 < len(lines):
        it = iter(lines[row0:])
        pos = lambda rc, row0=row0: line_at[row0 + rc[0] - 1] + rc[1]  # noqa: E731
        try:
            skip_to = -1
            for tok in tokenize.generate_tokens(it.__next__):
                a, b = pos(tok.start), pos(tok.end)
                if a < skip_to:
                    continue
                if tok.type == tokenize.ERRORTOKEN and tok.string in ("'", '"'):
                    # an opening quote with no close on its line: a string to the line's end
                    end = line_at[row0 + tok.start[0]]
                    end -= text[a:end].endswith("\n")
                    spans.append((tokenize.STRING, a, end, text[a:end], prev))
                    skip_to, prev = end, tokenize.STRING
                    continue
                if tok.type == tokenize.ERRORTOKEN and not tok.string.strip():
                    continue
                spans.append((tok.type, a, b, tok.string, prev))
                if tok.type != tokenize.COMMENT:
                    prev = tok.type
            break
        except IndentationError as e:  # a dedent below the window's first indentation
            row0 += max((e.lineno or 1) - 1, 1)
            prev = tokenize.NEWLINE
        except tokenize.TokenError as e:
            msg, rc = e.args
            if "string" in msg:
                a = pos(rc)
                spans.append((tokenize.STRING, a, len(text), text[a:], prev))
            break
    return spans


def _quote_of(s: str) -> tuple[str, str, bool]:
    """(prefix, quote, terminated) of a string literal's text."""
    body = s.lstrip("rRbBuUfF")
    prefix = s[: len(s) - len(body)].lower()
    q = body[:3] if body[:3] in ('"""', "'''") else body[:1]
    terminated = len(body) >= 2 * len(q) and body.endswith(q)
    return prefix, ("triple" if len(q) == 3 else q), terminated


def _lex_tokens(ctx: Context) -> Lexed:
    text, n = ctx.text, len(ctx.ids)
    spans = _lex_spans(text, ctx.lex_from)
    span_starts = [s[1] for s in spans]
    # bracket state before each span, and after it
    stack: list[str] = []
    before, after = [], []
    for typ, _, _, s, _ in spans:
        before.append((len(stack), stack[-1] if stack else None))
        if typ == tokenize.OP and s in _OPEN:
            stack.append(s)
        elif typ == tokenize.OP and s in _CLOSE and stack:
            stack.pop()
        after.append((len(stack), stack[-1] if stack else None))
    code_idx = [k for k, sp in enumerate(spans) if sp[0] in _CODE]
    code_ends = [spans[k][2] for k in code_idx]
    # first code token of each line, and names seen before each span
    line_starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
    first_code: dict[int, str] = {}
    for k in code_idx:
        first_code.setdefault(bisect.bisect_right(line_starts, spans[k][1]) - 1, spans[k][3])
    names: set[str] = set()
    seen_at: list[bool] = []
    for typ, _, _, s, _ in spans:
        is_name = typ == tokenize.NAME and not keyword.iskeyword(s)
        seen_at.append(is_name and s in names)
        if is_name:
            names.add(s)

    out = Lexed(*([] for _ in range(14)))
    for t in range(n):
        s0, piece = ctx.starts[t], ctx.pieces[t]
        blank = len(piece) - len(piece.lstrip())
        a = s0 + (blank if blank < len(piece) else 0)
        e0 = s0 + len(piece)
        line = bisect.bisect_right(line_starts, a) - 1
        known = a >= ctx.lex_from
        j = bisect.bisect_right(span_starts, a) - 1
        inside = known and j >= 0 and a < spans[j][2]
        typ, sa, sb, s, prev_type = spans[j] if inside else (None, 0, 0, "", None)
        kind = "unknown"
        if known:
            kind = {
                tokenize.NAME: "keyword" if keyword.iskeyword(s) else "identifier",
                tokenize.NUMBER: "number",
                tokenize.OP: "operator",
                tokenize.STRING: "string",
                tokenize.COMMENT: "comment",
            }.get(typ, "whitespace")
        prefix, quote, terminated = _quote_of(s) if typ == tokenize.STRING else ("", None, False)
        out.kind.append(kind)
        out.quote.append(quote)
        out.prefix.append(prefix)
        out.opens.append(quote is not None and s0 <= sa + len(prefix) < e0)
        out.closes.append(quote is not None and terminated and s0 <= sb - 1 < e0)
        out.comment.append(typ == tokenize.COMMENT)
        out.docstring.append(
            quote == "triple"
            and prev_type in (tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT)
        )
        if not known:
            depth, inner = -1, None
        elif inside:
            closing = typ == tokenize.OP and s in _CLOSE
            depth, inner = (after if closing else before)[j]
        else:
            depth, inner = after[j] if j >= 0 else (0, None)
        out.depth.append(depth)
        out.inner.append(inner)
        c = bisect.bisect_right(code_ends, sa if inside else a) - 1
        out.prev.append(spans[code_idx[c]][3] if known and c >= 0 else None)
        out.line_first.append(first_code.get(line) if known else None)
        lstart = line_starts[line]
        line_text = text[lstart : line_starts[line + 1] if line + 1 < len(line_starts) else None]
        lead = len(line_text) - len(line_text.lstrip(" \t"))
        out.line_start.append(known and a == lstart + lead and blank < len(piece))
        width = len(text[lstart : lstart + lead].expandtabs(8))
        out.indent.append(width // 4 if known and line_starts[line] >= ctx.lex_from else -1)
        out.seen.append(inside and seen_at[j])
    return out


# ---------- the feature library ----------


@dataclass(frozen=True)
class Feature:
    name: str
    description: str
    fn: Callable[[Context], Sequence[bool]]


def _lex_feature(name: str, description: str, field_name: str, test: Callable) -> Feature:
    return Feature(name, description, lambda ctx: [test(v) for v in getattr(ctx.lex, field_name)])


def code_features() -> list[Feature]:
    """The library's lexical features (see the table in the module docstring)."""
    f = _lex_feature
    out = [
        f(f"kind {k}", f"first non-blank character is in a {k}", "kind", lambda v, k=k: v == k)
        for k in ("identifier", "keyword", "number", "operator", "string", "comment", "whitespace")
    ]
    out += [
        f(f"in string {q}", f"inside a string opened by {q} quote", "quote", lambda v, q=q: v == q)
        for q in ("'", '"', "triple")
    ]
    out += [
        f("opens string", "holds a string's opening quote", "opens", bool),
        f("closes string", "holds a string's closing quote", "closes", bool),
        f("in comment", "inside a # comment", "comment", bool),
        f("in docstring", "inside a triple-quoted string statement", "docstring", bool),
    ]
    out += [
        f(f"bracket depth {d}{'+' if d == 4 else ''}", f"{d} enclosing brackets", "depth",
          lambda v, d=d: v >= 4 if d == 4 else v == d)
        for d in range(5)
    ]  # fmt: skip
    out += [
        f(f"innermost {b}", f"innermost enclosing bracket is {b}", "inner", lambda v, b=b: v == b)
        for b in _OPEN
    ]
    out += [
        f(f"after {k}", f"previous code token is {k}", "prev", lambda v, k=k: v == k)
        for k in KEYWORDS
    ]
    out += [
        f(f"line starts with {k}", f"its line begins with {k}", "line_first", lambda v, k=k: v == k)
        for k in KEYWORDS
    ]
    out += [
        f("line start", "first non-blank token of its line", "line_start", bool),
        f("seen before", "an identifier already in the context", "seen", bool),
    ]
    out += [
        f(f"indent {n}{'+' if n == 4 else ''}", f"line indented {n} levels", "indent",
          lambda v, n=n: v >= 4 if n == 4 else v == n)
        for n in range(5)
    ]  # fmt: skip
    out.append(
        Feature("newline", "contains a line break", lambda ctx: ["\n" in p for p in ctx.pieces])
    )
    return out


def token_features(contexts: list[Context], n: int) -> list[Feature]:
    """`token 'x'` for the n most frequent tokens of the contexts."""
    counts = Counter(i for c in contexts for i in c.ids)
    out = []
    for i, _ in counts.most_common(n):
        piece = next(c.pieces[c.ids.index(i)] for c in contexts if i in c.ids)
        out.append(
            Feature(
                f"token {piece!r}",
                f"the token {piece!r}",
                lambda ctx, i=i: [t == i for t in ctx.ids],
            )
        )
    return out


def default_features(contexts: list[Context], n_tokens: int = 40) -> list[Feature]:
    return token_features(contexts, n_tokens) + code_features()


def feature_matrix(contexts: list[Context], features: list[Feature]) -> np.ndarray:
    """[positions, features] 0/1, positions in context order."""
    cols = []
    for f in features:
        col = []
        for ctx in contexts:
            v = list(f.fn(ctx))
            if len(v) != len(ctx.ids):
                raise UserError(
                    f"feature {f.name!r} gave {len(v)} values for a context of {len(ctx.ids)} tokens"
                )
            col += v
        cols.append(np.asarray(col, dtype=bool))
    return np.stack(cols, axis=1).astype(np.float64)


# ---------- scoring ----------


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (as the Mann-Whitney statistic needs)."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    new = np.r_[True, xs[1:] != xs[:-1]]
    first = np.flatnonzero(new)
    last = np.r_[first[1:], len(x)]
    ranks = np.empty(len(x))
    ranks[order] = ((first + last + 1) / 2)[np.cumsum(new) - 1]
    return ranks


def feature_aucs(acts: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """ROC AUC of the activation as a score for each feature column (NaN where a feature is
    always or never true)."""
    pos = feats.sum(0)
    neg = len(acts) - pos
    rank_sum = _average_ranks(acts) @ feats
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def variance_explained(acts: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """Per feature, the share of the activation's variance that the feature's on/off split
    explains (the correlation ratio; a node that is a function of the feature scores 1)."""
    n, pos = len(acts), feats.sum(0)
    mean, total = acts.mean(), ((acts - acts.mean()) ** 2).sum()
    on = acts @ feats
    with np.errstate(invalid="ignore", divide="ignore"):
        between = on**2 / pos + (acts.sum() - on) ** 2 / (n - pos) - n * mean**2
        return between / total if total > 0 else np.full(feats.shape[1], np.nan)


def best_threshold(acts: np.ndarray, truth: np.ndarray, direction: int) -> dict:
    """Precision and recall of `direction * act >= threshold` at the threshold of best F1."""
    a = direction * acts
    order = np.argsort(-a, kind="stable")
    sa, st = a[order], truth[order].astype(bool)
    tp = np.cumsum(st)
    cuts = np.flatnonzero(np.r_[sa[1:] != sa[:-1], True])  # only between distinct values
    precision = tp[cuts] / (cuts + 1)
    recall = tp[cuts] / max(int(st.sum()), 1)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    k = int(np.argmax(f1))
    return {
        "precision": float(precision[k]),
        "recall": float(recall[k]),
        "threshold": float(direction * sa[cuts[k]]),
    }


def _r(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def explain_activations(
    acts: np.ndarray,
    feats: np.ndarray,
    features: list[Feature],
    contexts: list[Context],
    where: np.ndarray,
    settings: Settings,
) -> dict:
    """One node's explanation from its activation at every position (`where[p]` = (context,
    token) of position p)."""
    spread = float(np.abs(acts - np.median(acts)).max())
    # Float noise (a rotated channel's 1e-7 "zeros") must not rank: values within 1e-4 of
    # the node's spread are ties.
    acts = np.round(acts / (spread * 1e-4), 0) * (spread * 1e-4) if spread > 0 else acts
    aucs = feature_aucs(acts, feats)
    aucs[feats.sum(0) < settings.min_positives] = np.nan
    directed = np.round(np.fmax(aucs, 1 - aucs), 4)
    r2 = variance_explained(acts, feats)
    # best AUC first; among equal AUCs the feature that explains more of the variance
    ranked = [int(i) for i in np.lexsort((-np.nan_to_num(r2), -np.nan_to_num(directed, nan=-1.0)))]
    out: dict = {"feature": None, "auc": None, "positions": int(len(acts))}
    if spread > 1e-6 and ranked and np.isfinite(directed[ranked[0]]):
        b = ranked[0]
        direction = 1 if aucs[b] >= 0.5 else -1
        out.update(
            feature=features[b].name,
            description=features[b].description,
            auc=_r(directed[b]),
            direction=direction,
            r2=_r(r2[b]),
            positives=int(feats[:, b].sum()),
            **{k: _r(v) for k, v in best_threshold(acts, feats[:, b], direction).items()},
            runners_up=[
                [features[i].name, _r(directed[i]), 1 if aucs[i] >= 0.5 else -1]
                for i in ranked[1:4]
                if np.isfinite(directed[i])
            ],
        )
    out["examples"] = _quantile_examples(acts, contexts, where, settings)
    return out


def _quantile_examples(acts, contexts, where, settings: Settings) -> list[dict]:
    order = np.argsort(acts, kind="stable")
    examples = []
    for label, q in QUANTILES:
        p = int(order[min(int(round(q * (len(acts) - 1))), len(acts) - 1)])
        c, t = (int(v) for v in where[p])
        lo = max(0, t - settings.context_before)
        hi = min(len(contexts[c].ids), t + 1 + settings.context_after)
        examples.append(
            {
                "label": label,
                "value": _r(float(acts[p])),
                "tokens": contexts[c].pieces[lo:hi],
                "at": t - lo,
            }
        )
    return examples


# ---------- direct paths: which tokens feed a node, which logits it pushes ----------


@torch.no_grad()
def direct_tokens(model, site: NodeSite, index: int, token_text, k: int) -> dict:
    """Top tokens by their embedding's direct effect on the node (through the site's norm and
    read weight; earlier layers ignored), and top logits by the node's direct write (through
    the final norm's gain). Sites without such a path get no list."""
    block = model.blocks[site.layer]
    norm = block.ln1 if site.kind in ("attn_in", "attn_q", "attn_k", "attn_v") else block.ln2
    read = {"attn_q": block.attn.q_proj, "attn_k": block.attn.k_proj, "attn_v": block.attn.v_proj}
    read["mlp_neuron"] = block.mlp.fc_in
    write = {"attn_v": block.attn.o_proj, "mlp_neuron": block.mlp.fc_out}
    out = {}
    if site.kind in ("attn_in", "mlp_in") or site.kind in read:
        normed = norm(model.embed.weight[None])[0]  # [vocab, d_model]
        proj = read.get(site.kind)
        vals = normed[:, index] if proj is None else normed @ proj.weight[index]
        out["top_inputs"] = _top(vals, token_text, k)
    if site.kind in ("attn_out", "mlp_out") or site.kind in write:
        gain = model.ln_final.w
        vals = (
            model.W_U @ (gain * write[site.kind].weight[:, index])
            if site.kind in write
            else model.W_U[:, index] * gain[index]
        )
        out["top_logits"] = _top(vals, token_text, k)
    return out


def _top(vals: torch.Tensor, token_text, k: int) -> list:
    top = vals.float().cpu().topk(min(k, len(vals)))
    return [
        [token_text[int(i)], _r(float(v))] for v, i in zip(top.values, top.indices, strict=True)
    ]


# ---------- activations and the whole pipeline ----------


def check_nodes(cfg, nodes: list[str]) -> list[tuple[str, int]]:
    """(hook, index) of each node name; a name that is no node of the model is an error."""
    sites = {s.hook: s for s in node_sites(cfg)}
    out = []
    for name in nodes:
        hook, idx = parse_node(name)
        if hook not in sites:
            raise UserError(
                f"{name}: {hook} is not a node site of this model ({cfg.n_layer} layers; "
                f"sites look like {next(iter(sites))})"
            )
        if not 0 <= idx < sites[hook].width:
            raise UserError(f"{name}: index out of range ({hook} has {sites[hook].width} nodes)")
        out.append((hook, idx))
    return out


@torch.no_grad()
def node_activations(
    model, contexts: list[Context], nodes: list[str], batch_size: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """([positions, nodes] activations, [positions, 2] (context, token)), positions in context
    order. Contexts of unequal length are padded at the end (the model is causal)."""
    sites = {s.hook: s for s in node_sites(model.cfg)}
    wanted: dict[str, list[int]] = {}
    cols: list[tuple[str, int]] = []
    for hook, idx in check_nodes(model.cfg, nodes):
        wanted.setdefault(hook, []).append(idx)
        cols.append((hook, len(wanted[hook]) - 1))
    device = next(model.parameters()).device
    chunks, where = [], []
    for b in range(0, len(contexts), batch_size):
        group = contexts[b : b + batch_size]
        width = max(len(c.ids) for c in group)
        tokens = torch.zeros(len(group), width, dtype=torch.long)
        for r, c in enumerate(group):
            tokens[r, : len(c.ids)] = torch.tensor(c.ids)
        _, cache = model.run_with_cache(tokens.to(device), names_filter=list(wanted))
        per_hook = {
            h: channels(cache[h], sites[h])[..., idx].float().cpu() for h, idx in wanted.items()
        }
        acts = torch.stack([per_hook[h][..., j] for h, j in cols], dim=-1)  # [B, T, nodes]
        for r, c in enumerate(group):
            chunks.append(acts[r, : len(c.ids)].numpy())
            where += [(b + r, t) for t in range(len(c.ids))]
    return np.concatenate(chunks), np.asarray(where, dtype=np.int64)


def explain_nodes(
    model,
    contexts: list[Context],
    nodes: list[str],
    token_text: Sequence[str],
    features: list[Feature] | None = None,
    settings: Settings | None = None,
) -> dict[str, dict]:
    """{node: explanation} for any model and contexts (see the module docstring)."""
    settings = settings or Settings()
    features = features if features is not None else default_features(contexts, settings.n_tokens)
    if not nodes:
        return {}
    feats = feature_matrix(contexts, features)
    acts, where = node_activations(model, contexts, nodes)
    sites = {s.hook: s for s in node_sites(model.cfg)}
    out = {}
    for j, name in enumerate(nodes):
        hook, idx = parse_node(name)
        e = explain_activations(acts[:, j], feats, features, contexts, where, settings)
        e.update(direct_tokens(model, sites[hook], idx, token_text, settings.top_k))
        out[name] = e
    return out


def vocab_text(tokenizer, vocab_size: int) -> list[str]:
    return [tokenizer.decode([i]) for i in range(vocab_size)]


def checkpoint_contexts(
    model_dir, model, tokenizer, task: str | None, settings: Settings, prune_cfg: dict | None = None
) -> tuple[list[Context], list[str]]:
    """(contexts, token text): the node means' held-out windows, then the task's test prompts."""

    text = vocab_text(tokenizer, model.cfg.vocab_size)
    corpus = checkpoint_corpus(model_dir, model, tokenizer)
    contexts = [
        make_context(row.tolist(), text, from_line_start=False)
        for w in heldout_windows(corpus, model.cfg.n_ctx, settings.batches, settings.batch_size)
        for row in w
    ]
    if task:
        p = prune_cfg or {}
        t = get_task(task, p.get("n_train", 128), p.get("n_test", 128), p.get("seed", 0))
        batch = t.encode(tokenizer, "test", model.cfg.n_ctx)
        contexts += [
            make_context(batch.tokens[r, : int(batch.last_pos[r]) + 1].tolist(), text, True)
            for r in range(len(batch))
        ]
    return contexts, text


def _cache_key(model_dir: Path, settings: Settings, task: str | None) -> str:
    # A task file by its content too: an edited file has other prompts under the same name.
    if task is not None and task not in TASKS and Path(task).is_file():
        task = f"{task}@{file_digest(task)}"
    return f"v{VERSION}:{_weights_digest(model_dir)}:{sorted(vars(settings).items())}:{task}"


def explain_checkpoint(
    model_dir,
    nodes: list[str],
    task: str | None = None,
    prune_cfg: dict | None = None,
    settings: Settings | None = None,
    model=None,
    tokenizer=None,
) -> dict[str, dict]:
    """Explanations of nodes of a checkpoint, on its held-out windows plus `task`'s prompts;
    cached beside the checkpoint (the default library only: custom features use
    `explain_nodes`)."""

    model_dir = Path(model_dir)
    settings = settings or Settings()
    if model is None:
        model, tokenizer = load(model_dir)
    if tokenizer is None:
        raise UserError(f"{model_dir}: explaining nodes needs the checkpoint's tokenizer.json")
    try:
        check_nodes(model.cfg, nodes)
    except UserError as e:
        raise UserError(f"{model_dir}: {e}") from None
    key = _cache_key(model_dir, settings, task)
    path = model_dir / CACHE_FILE
    cache = {}
    if path.exists():
        try:
            stored = read_json(path)
            cache = stored.get("nodes", {}) if stored.get("key") == key else {}
        except UserError:  # a damaged cache is rebuilt
            cache = {}
    missing = [n for n in dict.fromkeys(nodes) if n not in cache]
    if missing:
        contexts, text = checkpoint_contexts(model_dir, model, tokenizer, task, settings, prune_cfg)
        cache.update(explain_nodes(model, contexts, missing, text, settings=settings))
        try:
            write_json_atomic(path, {"key": key, "nodes": cache})
        except UserError as e:  # a read-only model folder: the answer stands, uncached
            print(f"note: {e}; the explanations were not cached", file=sys.stderr)
    return {n: cache[n] for n in nodes}


def explain_circuit(path_or_circuit, model_dir=None, settings: Settings | None = None, save=True):
    """Explain every node of a circuit and store the explanations in it (and in its
    circuit.json when given a path and `save`)."""

    path = None
    circuit = path_or_circuit
    if not isinstance(circuit, Circuit):
        path = Path(path_or_circuit)
        circuit = Circuit.load(path)
    model_dir = model_dir or (circuit.model_dir and str(relocate_cached(circuit.model_dir)))
    if not model_dir or not (Path(model_dir) / "model.safetensors").is_file():
        raise UserError(
            f"{path or 'circuit'}: its model folder {model_dir!r} is not there; pass the model folder"
        )
    # Another model's nodes would be explained under this circuit's names and stored in it.
    if circuit.model_config:
        have = asdict(load_config(model_dir)[0])
        differ = [
            k
            for k in sorted(set(have) | set(circuit.model_config))
            if have.get(k) != circuit.model_config.get(k)
        ]
        if differ:
            raise UserError(
                f"{model_dir}: not this circuit's model ({path or 'circuit'} was found in a "
                f"model with other {', '.join(differ)})"
            )
    circuit.explanations = explain_checkpoint(
        model_dir, [n.name for n in circuit.nodes], circuit.task, circuit.prune_config, settings
    )
    if path is not None and save:
        circuit.save(path)
    return circuit


def is_explained(e: dict | None, auc: float = LEGIBLE_AUC, pr: float = LEGIBLE_PR) -> bool:
    """One feature explains the node: AUC >= `auc`, and precision and recall >= `pr` at the
    best threshold (see the module docstring for why AUC alone is not enough)."""
    if not e or e.get("auc") is None:
        return False
    return e["auc"] >= auc and e.get("precision", 0) >= pr and e.get("recall", 0) >= pr


CRITERION = f"AUC >= {LEGIBLE_AUC}, precision and recall >= {LEGIBLE_PR} at the best threshold"


def legibility(circuit) -> dict:
    """Fraction of a circuit's nodes one feature explains (`is_explained`), and the fraction
    of its (positive) single-node ablation effect they carry (over the nodes whose effect was
    measured; None when none was)."""
    names = [n.name for n in circuit.nodes]
    ok = {n for n in names if is_explained(circuit.explanations.get(n))}
    effects = {n: max(float(e), 0.0) for n, e in circuit.node_effects.items() if n in set(names)}
    total = sum(effects.values())
    return {
        "nodes": len(names),
        "explained_nodes": len(ok),
        "node_fraction": len(ok) / len(names) if names else None,
        "effect_fraction": sum(effects[n] for n in ok if n in effects) / total
        if total > 0
        else None,
        "criterion": CRITERION,
    }


def legibility_line(leg: dict) -> str:
    """One line: how many of a circuit's nodes are explained, and their share of its effect."""
    share = leg["effect_fraction"]
    return f"explained ({CRITERION}): {leg['explained_nodes']} of {leg['nodes']} nodes" + (
        "" if share is None else f", {share:.1%} of the ablation effect"
    )


def circuit_legibility(path_or_circuit, model_dir=None) -> dict:
    """Legibility of a circuit (object or circuit.json path), explaining its nodes first if
    they are not yet (a path's circuit.json then keeps the explanations)."""

    circuit = path_or_circuit
    if not isinstance(circuit, Circuit):
        circuit = Circuit.load(path_or_circuit)
    if any(n.name not in circuit.explanations for n in circuit.nodes):
        explain_circuit(circuit, model_dir)
        if not isinstance(path_or_circuit, Circuit):
            circuit.save(path_or_circuit)
    return legibility(circuit)


def _tokens(pairs: list | None, n: int = 3) -> str:
    return " ".join(repr(t) for t, _ in (pairs or [])[:n]) or "-"


def explanation_table(explanations: dict[str, dict]) -> list[str]:
    """Lines of a text table: per node its best feature ("X (low)" when the node is low on X),
    AUC, precision and recall at the best threshold, whether it counts as explained, and the
    top tokens of its direct input and output paths."""
    head = [
        "node",
        "best feature",
        "AUC",
        "prec",
        "recall",
        "explained",
        "top inputs",
        "top logits",
    ]
    rows = []
    for name, e in explanations.items():
        feature = e.get("feature")
        if feature is not None and e.get("direction") == -1:
            feature = f"{feature} (low)"
        rows.append(
            [
                name,
                feature or "(constant: no feature)",
                *(
                    f"{e[k]:.3f}" if e.get(k) is not None else "-"
                    for k in ("auc", "precision", "recall")
                ),
                "yes" if is_explained(e) else "no",
                _tokens(e.get("top_inputs")),
                _tokens(e.get("top_logits")),
            ]
        )
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    return [
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
        for r in [head, *rows]
    ]
