"""Node explanations: the lexical features on known text, and ground truth on the planted
model (its nodes' known features) and its rotated twin (same outputs, mixed bases)."""

from __future__ import annotations

import numpy as np
import pytest

from sparsecircuits.explain import Context, Feature, explain_nodes, feature_aucs, make_context
from sparsecircuits.fer import rotate_hidden
from sparsecircuits.planted import FILLERS, QUERIES, A, B, planted_batch, planted_model

NAMES = ["A", "B", "X", "Y", "f0", "f1", "f2", "f3", "Q0", "Q1", "Q2", "Q3"]


def _is(name, ids):
    return Feature(name, name, lambda ctx: [t in ids for t in ctx.ids])


def _query_after(key):
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


def _explain(model):
    contexts = [make_context(r.tolist(), NAMES, True) for r in planted_batch(128, 5).tokens]
    return explain_nodes(model, contexts, list(KNOWN), NAMES, features=FEATURES)


def test_planted_nodes_get_their_known_features():
    for node, e in _explain(planted_model()).items():
        assert e["feature"] in KNOWN[node] and e["auc"] >= 0.95, (node, e)
        assert e["precision"] == e["recall"] == 1.0


def test_rotated_twin_mixes_the_residual_reads():
    # The residual reads of the key and query markers become mixtures: no longer their known
    # feature, and the query marker's channel no longer explained by any one feature.
    e = _explain(rotate_hidden(planted_model(), 0))
    for node in ("blocks.0.ln1.hook_normalized[2]", "blocks.0.ln1.hook_normalized[3]"):
        assert e[node]["feature"] not in KNOWN[node], (node, e[node])
    assert e["blocks.0.ln1.hook_normalized[3]"]["auc"] < 0.9


def test_auc_with_ties():
    acts = np.array([0.0, 0.0, 1.0, 2.0])
    feats = np.array([[0, 1], [1, 1], [0, 0], [1, 0]], dtype=float)
    assert feature_aucs(acts, feats) == pytest.approx([0.625, 0.0])


def test_lexing_of_a_code_fragment():
    pieces = ["x", " =", " '", "ab", "'", "\n", "def", " f", "(", "a", ",", " [", "b", "]", "):"]
    pieces += ["\n", "    ", "return", " a", "  #", " hi", "\n", "y", " =", ' "', "q"]
    lex = Context(list(range(len(pieces))), pieces, 0).lex
    at = {p: i for i, p in reversed(list(enumerate(pieces)))}
    assert lex.quote[at["ab"]] == "'" and lex.opens[at[" '"]] and lex.closes[at["'"]]
    assert lex.quote[at["q"]] == '"'  # a string still open at the end counts
    assert lex.depth[at["b"]] == 2 and lex.inner[at["b"]] == "["
    assert lex.depth[at["]"]] == 1 and lex.depth[at["):"]] == 0
    assert lex.prev[at[" f"]] == "def" and lex.line_first[at[" a"]] == "return"
    assert lex.comment[at[" hi"]] and lex.seen[at[" a"]] and lex.indent[at["return"]] == 1
    assert lex.kind[at["def"]] == "keyword" and lex.kind[at[" f"]] == "identifier"


def test_legibility_counts_nodes_and_effect(tmp_path):
    from sparsecircuits.circuit import Circuit, Node
    from sparsecircuits.explain import legibility

    nodes = [Node(f"h[{i}]", "q", 0, i, 0.0, 1.0) for i in range(4)]
    c = Circuit("t", "masks", 0.1, nodes, [], 10, {}, {}, node_effects={"h[0]": 3.0, "h[1]": 1.0})
    c.explanations = {"h[0]": {"auc": 0.95}, "h[1]": {"auc": 0.7}, "h[2]": {"auc": 0.9}}
    back = Circuit.load(c.save(tmp_path / "circuit.json"))
    assert back.explanations == c.explanations
    leg = legibility(back)
    assert leg["node_fraction"] == 0.5 and leg["effect_fraction"] == 0.75
