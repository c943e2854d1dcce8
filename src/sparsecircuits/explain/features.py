"""The feature library: per-token yes/no concepts of Python code, each a function of the
visible context only."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .lexer import OPEN_BRACKETS, Context

KEYWORDS = (
    "def", "class", "return", "if", "elif", "else", "for", "while", "in", "not", "and", "or",
    "lambda", "with", "as", "import", "from", "try", "except", "yield", "is", "None", "self",
)  # fmt: skip

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
        for b in OPEN_BRACKETS
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


def _is_token(i: int) -> Callable[[Context], list[bool]]:
    return lambda ctx: [t == i for t in ctx.ids]


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
                _is_token(i),
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
