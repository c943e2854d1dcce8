"""Ground truth for node explanations on the planted model (planted.py): its token names,
the features its mechanism is made of, and the feature each planted node is known to track.
The explanation tests and benchmarks/explain_criterion.py both measure against it."""

from __future__ import annotations

from ..planted import FILLERS, QUERIES, A, B, planted_batch
from .features import Feature
from .lexer import make_context
from .run import explain_nodes

NAMES = ["A", "B", "X", "Y", "f0", "f1", "f2", "f3", "Q0", "Q1", "Q2", "Q3"]


def _is(name: str, ids: set[int]) -> Feature:
    return Feature(name, name, lambda ctx: [t in ids for t in ctx.ids])


def _query_after(key: int) -> Feature:
    return Feature(
        f"query after {NAMES[key]}",
        "a query with this key earlier",
        lambda ctx: [t in QUERIES and key in ctx.ids[:i] for i, t in enumerate(ctx.ids)],
    )


FEATURES = [
    _is("key A", {A}),
    _is("key B", {B}),
    _is("key", {A, B}),
    _is("query", set(QUERIES)),
    _is("filler", set(FILLERS)),
    _query_after(A),
    _query_after(B),
]
KNOWN = {
    "blocks.0.ln1.hook_normalized[1]": {"key A", "key B"},
    "blocks.0.ln1.hook_normalized[2]": {"key"},
    "blocks.0.ln1.hook_normalized[3]": {"query"},
    "blocks.0.attn.hook_q[0]": {"query"},
    "blocks.0.attn.hook_k[0]": {"key"},
    "blocks.0.attn.hook_v[0]": {"key A", "key B"},
    "blocks.0.hook_attn_out[4]": {"query after A", "query after B"},
}


def explain_planted(model) -> dict[str, dict]:
    """Every known node of a planted model (or a twin of it) explained against FEATURES."""
    contexts = [make_context(r.tolist(), NAMES, True) for r in planted_batch(128, 5).tokens]
    return explain_nodes(model, contexts, list(KNOWN), NAMES, features=FEATURES)
