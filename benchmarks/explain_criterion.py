"""Is AUC alone a strict enough test of "one feature explains this node"? On the planted
model (known features) and its rotated twins (the same outputs with mixed bases), the share
of the seven planted nodes explained by AUC >= 0.9 alone and by the legibility criterion
(AUC plus precision and recall at the best threshold), per rotation seed; and how many keep
their *known* feature under the criterion, apart for the nodes the rotation mixes only with
dead channels (the planted head's q, k, v) and the nodes it mixes with live residual
channels (the ground truth: the former keep it, the latter lose it).

    python benchmarks/explain_criterion.py [--seeds 5]

The features and the planted nodes are the ground truth of sparsecircuits.explain.planted_truth,
which tests/test_explain.py checks too.
Writes benchmarks/results/explain_criterion.{md,json} (README quotes the .md).
"""

from __future__ import annotations

import argparse

from sparsecircuits.benchmarking import save_results
from sparsecircuits.explain import CRITERION, LEGIBLE_AUC, is_explained
from sparsecircuits.explain.planted_truth import KNOWN, explain_planted
from sparsecircuits.fer import rotate_hidden
from sparsecircuits.planted import planted_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    lines = [
        f"criterion: {CRITERION}",
        f"  {'model':<16} {'AUC alone':>10} {'criterion':>10} {'known: q/k/v':>13} "
        f"{'known: mixed':>13}  failing the criterion only",
    ]
    data: dict = {"criterion": CRITERION, "models": {}}
    models = [("planted", planted_model())]
    models += [(f"rotated seed {s}", rotate_hidden(planted_model(), s)) for s in range(args.seeds)]
    for name, model in models:
        e = explain_planted(model)
        by_auc = [n for n, x in e.items() if x["auc"] >= LEGIBLE_AUC]
        both = [n for n in by_auc if is_explained(e[n])]
        extra = ", ".join(
            f"{n} ({e[n]['feature']}: AUC {e[n]['auc']:.3f}, precision {e[n]['precision']:.3f}, "
            f"recall {e[n]['recall']:.3f})"
            for n in by_auc
            if n not in both
        )
        known = [n for n in both if e[n]["feature"] in KNOWN[n]]
        single = [n for n in e if ".attn.hook_" in n]  # mixed with dead channels only
        ks, km = sum(n in known for n in single), sum(n not in single for n in known)
        lines.append(
            f"  {name:<16} {len(by_auc)}/{len(e):<8} {len(both)}/{len(e):<8} "
            f"{ks}/{len(single):<11} {km}/{len(e) - len(single):<11}  {extra or '-'}"
        )
        data["models"][name] = {
            "nodes": len(e),
            "auc_alone": by_auc,
            "criterion": both,
            "known_feature": known,
        }
    print("\n".join(lines))
    save_results("explain_criterion", lines, data)


if __name__ == "__main__":
    main()
