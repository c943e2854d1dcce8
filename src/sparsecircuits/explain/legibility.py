"""A circuit's legibility (the share of its nodes, and of its ablation effect, one feature
explains) and the explanation table."""

from __future__ import annotations

from ..circuit import Circuit
from .config import LEGIBLE_AUC, LEGIBLE_PR
from .run import explain_circuit


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


def circuit_legibility(path_or_circuit, model_dir=None, pair_seed: int | None = None) -> dict:
    """Legibility of a circuit (object or circuit.json path), explaining its nodes first if
    they are not yet (a path's circuit.json then keeps the explanations; `pair_seed` as
    `explain_circuit` takes it)."""

    circuit = path_or_circuit
    if not isinstance(circuit, Circuit):
        circuit = Circuit.load(path_or_circuit)
    if any(n.name not in circuit.explanations for n in circuit.nodes):
        explain_circuit(circuit, model_dir, pair_seed=pair_seed)
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
