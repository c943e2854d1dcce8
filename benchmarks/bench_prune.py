"""Circuit search on the `quick` model: time of one (model, task) search, and circuit size
from learned masks vs attribution vs magnitude vs random at the same target loss.

    python benchmarks/bench_prune.py [--model runs/quick] [--task single_double_quote] [--target 0.3]

Needs a trained checkpoint (default runs/quick); trains the quick
preset there first if it is missing. The target defaults to 0.3 because the 5-minute quick
model does not reach the paper's 0.15 on most tasks.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sparsecircuits.config import resolve
from sparsecircuits.prune import prune
from sparsecircuits.prune_methods import METHODS, PruneConfig
from sparsecircuits.train import train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/quick")
    ap.add_argument("--task", default="single_double_quote")
    ap.add_argument("--target", type=float, default=0.3)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    model = Path(args.model)
    if not (model / "model.safetensors").exists():
        print(f"{model}: no checkpoint; training the quick preset first")
        train(*resolve("quick"), model, progress=True)

    prune(
        model,
        args.task,
        PruneConfig(method="random", target_loss=10, random_draws=0, refuse_trivial=False),
        progress=False,
    )  # warm the mean cache
    print(f"model {model}, task {args.task}, target loss {args.target}")
    print(
        f"  {'method':<12} {'nodes':>7} {'edges':>8} {'circuit loss':>13} {'ablated loss':>13} {'random loss':>12} {'seconds':>8}"
    )
    sizes = {}
    for method in METHODS:
        t = time.perf_counter()
        c = prune(
            model,
            args.task,
            PruneConfig(method=method, target_loss=args.target, steps=args.steps),
            progress=False,
        )
        sec = time.perf_counter() - t
        m = c.metrics
        sizes[method] = c.n_edges
        print(
            f"  {method:<12} {c.n_nodes:>7} {c.n_edges:>8} {m.circuit.loss_calibrated:>13.4f} "
            f"{m.ablated.loss:>13.4f} {m.random.loss_mean:>12.4f} {sec:>8.1f}"
            + (f"   ({args.steps} mask steps; target < 60 s)" if method == "masks" else "")
        )
    for method in ("attribution", "magnitude", "random"):
        print(f"  edges {method} / masks: {sizes[method] / max(sizes['masks'], 1):.1f}x")


if __name__ == "__main__":
    main()
