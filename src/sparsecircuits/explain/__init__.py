"""Node explanations: which simple concept of Python code a node tracks, and how well.

    lexer       contexts and their Python lexing
    features    the feature library
    scoring     AUC, variance explained, the best threshold: a node's explanation
    run         activations over a checkpoint, direct paths, the cache
    legibility  a circuit's legibility and the explanation table
    config      ExplainConfig (what an explanation depends on) and the legibility bar


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

from .config import CACHE_FILE, LEGIBLE_AUC, LEGIBLE_PR, VERSION, ExplainConfig
from .features import Feature, code_features, default_features, feature_matrix, token_features
from .legibility import (
    CRITERION,
    circuit_legibility,
    explanation_table,
    is_explained,
    legibility,
    legibility_line,
)
from .lexer import Context, Lexed, make_context
from .run import (
    check_nodes,
    checkpoint_contexts,
    direct_tokens,
    explain_checkpoint,
    explain_circuit,
    explain_nodes,
    node_activations,
    vocab_text,
)
from .scoring import best_threshold, explain_activations, feature_aucs, variance_explained

__all__ = [
    "CACHE_FILE",
    "CRITERION",
    "LEGIBLE_AUC",
    "LEGIBLE_PR",
    "VERSION",
    "Context",
    "ExplainConfig",
    "Feature",
    "Lexed",
    "best_threshold",
    "check_nodes",
    "checkpoint_contexts",
    "circuit_legibility",
    "code_features",
    "default_features",
    "direct_tokens",
    "explain_activations",
    "explain_checkpoint",
    "explain_circuit",
    "explain_nodes",
    "explanation_table",
    "feature_aucs",
    "feature_matrix",
    "is_explained",
    "legibility",
    "legibility_line",
    "make_context",
    "node_activations",
    "token_features",
    "variance_explained",
    "vocab_text",
]
