"""Activation-sparsity analysis of one `quick` checkpoint: wall time of every familiarity
condition and every difficulty level (target under 60 s on 2 cores), and the extra time per
training snapshot.

    python benchmarks/bench_activations.py [--model runs/quick] [-n 64]

Needs a trained checkpoint (default runs/quick); trains the quick preset there first if it
is missing. Run time depends on the model's shape, not on how well it is trained.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from sparsecircuits.activations import ActivationsConfig, analyse_checkpoint, snapshots
from sparsecircuits.config import resolve
from sparsecircuits.train import train

TARGET_S = 60.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/quick")
    ap.add_argument("-n", type=int, default=64, help="inputs per condition")
    args = ap.parse_args()
    model = Path(args.model)
    if not (model / "model.safetensors").exists():
        print(f"{model}: no checkpoint; training the quick preset first")
        train(*resolve("quick"), model, progress=True)

    cfg = ActivationsConfig(n=args.n, training=False)
    analyse_checkpoint(model, ActivationsConfig(n=2, n_pairs=2, training=False))  # warm caches
    t = time.perf_counter()
    res = analyse_checkpoint(model, cfg)
    sec = time.perf_counter() - t
    levels = sum(len(a["levels"]) for a in res["difficulty"].values())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model {model}")
    print(
        f"  {len(res['conditions'])} conditions x {cfg.n} inputs + {levels} difficulty levels "
        f"x {2 * cfg.n_pairs} prompts, hooks {', '.join(res['hooks'])}"
    )
    print(
        f"  analysis: {sec:.1f} s (target < {TARGET_S:.0f} s); time / target: {sec / TARGET_S:.2f}"
    )
    snaps = snapshots(model)
    if snaps:
        t = time.perf_counter()
        analyse_checkpoint(model, ActivationsConfig(n=args.n, difficulty=False))
        per = (time.perf_counter() - t) / (len(snaps) + 1)
        print(f"  over training: {len(snaps)} snapshots, {per:.1f} s per snapshot")


if __name__ == "__main__":
    main()
