"""Explaining every node of a quick-model circuit: wall time from a cold explanation cache
(issue 12's target: at most 30 s on 2 cores).

    python benchmarks/bench_explain.py [--model runs/quick] [--circuit CIRCUIT.json]
        [--task single_double_quote] [--target 0.3]

Without --circuit, prunes one on the model first (masks, to --target; not timed). The
model's explanation cache (explanations.json) is removed first, so every node is explained
from scratch; the circuit file itself is not changed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from sparsecircuits.benchmarking import save_results
from sparsecircuits.circuit import Circuit
from sparsecircuits.explain import CACHE_FILE, CRITERION, explain_circuit, legibility
from sparsecircuits.prune import prune
from sparsecircuits.prune_methods import PruneConfig

TARGET_SECONDS = 30.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/quick")
    ap.add_argument("--circuit", help="a circuit.json of --model (default: prune one)")
    ap.add_argument("--task", default="single_double_quote")
    ap.add_argument("--target", type=float, default=0.3)
    args = ap.parse_args()
    model = Path(args.model)
    if not (model / "model.safetensors").exists():
        sys.exit(f"{model}: no checkpoint (sparsecircuits train --preset quick --out {model})")
    if args.circuit:
        circuit = Circuit.load(args.circuit)
    else:
        circuit = prune(model, args.task, PruneConfig(target_loss=args.target), progress=False)
    (model / CACHE_FILE).unlink(missing_ok=True)
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    t = time.perf_counter()
    explain_circuit(circuit, model, save=False)
    sec = time.perf_counter() - t
    leg = legibility(circuit)
    lines = [
        f"model {model}, task {circuit.task}: {circuit.n_nodes} nodes",
        f"  explained all nodes in {sec:.1f} s (torch threads {torch.get_num_threads()}, "
        f"OMP_NUM_THREADS {threads}; target <= {TARGET_SECONDS:.0f} s on 2 cores)",
        f"  {leg['explained_nodes']} of {leg['nodes']} nodes explained ({CRITERION})",
    ]
    print("\n".join(lines))
    data = {"args": vars(args), "seconds": sec, "n_nodes": circuit.n_nodes, "legibility": leg}
    save_results("bench_explain", lines, data)


if __name__ == "__main__":
    main()
