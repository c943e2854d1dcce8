"""A real `sparsecircuits explain` example for README: a few nodes of a trained model (or
the nodes of a study's circuit, those with the largest ablation effect first), the table
the command prints, and one node's quantile contexts.

    python benchmarks/explain_example.py [--model runs/quick] [--node NAME ...]
    python benchmarks/explain_example.py --circuit CIRCUIT.json [MORE.json ...] [--top 10]
        [--name explain_example]

Writes benchmarks/results/NAME.{md,json} (README quotes the .md). Uses (and
fills) the model's explanation cache.
"""

from __future__ import annotations

import argparse
import shlex

from sparsecircuits.benchmarking import save_results
from sparsecircuits.explain import (
    explain_checkpoint,
    explain_circuit,
    explanation_table,
    legibility,
    legibility_line,
)

NODES = [
    "blocks.0.attn.hook_q[5]",
    "blocks.1.mlp.hook_post[0]",
    "blocks.1.mlp.hook_post[1]",
    "blocks.1.hook_attn_out[3]",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/quick")
    ap.add_argument("--node", nargs="+", default=NODES)
    ap.add_argument(
        "--circuit",
        nargs="+",
        help="circuit.json files: the first one's nodes instead, and every one's legibility",
    )
    ap.add_argument("--top", type=int, default=10, help="with --circuit: nodes shown")
    ap.add_argument("--name", default="explain_example", help="results file (README block)")
    args = ap.parse_args()
    if args.circuit:
        first_path = args.circuit[0]
        circuit = explain_circuit(first_path)
        effect = circuit.node_effects
        order = sorted(circuit.explanations, key=lambda n: -effect.get(n, float("-inf")))
        expl = {n: circuit.explanations[n] for n in order[: args.top]}
        lines = [
            f"as printed by: sparsecircuits explain {first_path} (the {len(expl)} of "
            f"{len(order)} nodes with the largest ablation effect)"
        ]
        lines += explanation_table(expl)
        lines.append(legibility_line(legibility(circuit)))
        for other in args.circuit[1:]:
            c = explain_circuit(other)
            lines.append(f"{other} ({c.n_nodes} nodes, {c.n_edges} edges):")
            lines.append("  " + legibility_line(legibility(c)))
    else:
        expl = explain_checkpoint(args.model, args.node)
        lines = [
            f"as printed by: sparsecircuits explain {args.model} --node "
            + " ".join(map(shlex.quote, args.node))
        ]
        lines += explanation_table(expl)
    first = next(iter(expl))
    lines += ["", f"{first}: contexts at activation quantiles (the node's token in [brackets])"]
    for x in expl[first]["examples"]:
        text = "".join(f"[{t}]" if i == x["at"] else t for i, t in enumerate(x["tokens"])).replace(
            "\n", "\\n"
        )
        lines.append(f"  {x['label']:<9} {x['value'] + 0.0:>9.4g}  {text}")  # no -0
    print("\n".join(lines))
    save_results(args.name, lines, expl)


if __name__ == "__main__":
    main()
