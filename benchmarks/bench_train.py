"""Training speed: the sparsity tax, tokens/s and peak memory of the presets, and the share
of a step spent in the top-k projection. Variants are timed in alternation in one run, so
the ratios hold on a shared, noisy machine; absolute numbers are for orientation only.

    python benchmarks/bench_train.py [--steps N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from sparsecircuits.config import resolve
from sparsecircuits.model import SparseGPT
from sparsecircuits.sparsity import WeightSparsifier
from sparsecircuits.train import make_optimizer, train_step


class Runner:
    """A model + optimizer ready to take steps on a fixed random batch."""

    def __init__(self, preset: str, **overrides):
        self.mcfg, self.tcfg = resolve(preset, None, overrides)
        torch.manual_seed(0)
        self.model = SparseGPT(self.mcfg)
        self.opt = make_optimizer(self.model, self.tcfg)
        self.sparsifier = WeightSparsifier(self.model, self.tcfg)
        self.batch = torch.randint(
            0, self.mcfg.vocab_size, (self.tcfg.batch_size, self.mcfg.n_ctx + 1)
        )
        # Past the anneal, so the sparse variant runs at its target density.
        self.step = self.tcfg.steps - 1

    def time_steps(self, n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            train_step(self.model, self.opt, self.sparsifier, self.batch, self.step)
        return (time.perf_counter() - t) / n

    def time_projection(self, n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            self.sparsifier.apply(self.step)
        return (time.perf_counter() - t) / n

    @property
    def tokens_per_step(self) -> int:
        return self.tcfg.batch_size * self.mcfg.n_ctx


def sparsity_tax(steps: int, rounds: int) -> dict:
    variants = {
        "sparse (density 1/64, AbsTopK)": Runner("quick", density=1 / 64),
        "dense, same AbsTopK": Runner("quick", density=1.0),
        "dense, no AbsTopK": Runner("quick", density=1.0, afrac=None),
    }
    times = {k: [] for k in variants}
    proj = []
    for r in variants.values():
        r.time_steps(2)  # warm-up
    for _ in range(rounds):
        for name, r in variants.items():
            times[name].append(r.time_steps(steps))
        proj.append(variants["sparse (density 1/64, AbsTopK)"].time_projection(steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    sparse = med["sparse (density 1/64, AbsTopK)"]
    return {
        "step_seconds": med,
        "sparsity_tax_vs_dense_same_abstopk": sparse / med["dense, same AbsTopK"],
        "sparsity_tax_vs_plain_dense": sparse / med["dense, no AbsTopK"],
        "topk_projection_fraction_of_step": statistics.median(proj) / sparse,
    }


def throughput_one(preset: str, steps: int) -> dict:
    r = Runner(preset)
    r.time_steps(1)
    sec = r.time_steps(steps)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "preset": preset,
        "tokens_per_s": r.tokens_per_step / sec,
        "step_seconds": sec,
        "peak_rss_mb": peak_mb,
        "params": r.model.num_params(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--presets", default="quick,small")
    ap.add_argument("--throughput-one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.throughput_one:  # child process: its peak memory is the preset's alone
        print(json.dumps(throughput_one(args.throughput_one, args.steps)))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    tax = sparsity_tax(args.steps, args.rounds)
    print("\n== sparsity tax (quick shape; median of alternated rounds) ==")
    for name, sec in tax["step_seconds"].items():
        print(f"  {name:<32} {sec * 1000:8.1f} ms/step")
    print(
        f"  sparse / dense (same AbsTopK):  {tax['sparsity_tax_vs_dense_same_abstopk']:.3f}  (target <= 1.15)"
    )
    print(f"  sparse / dense (no AbsTopK):    {tax['sparsity_tax_vs_plain_dense']:.3f}")
    print(
        f"  top-k projection share of a sparse step: {tax['topk_projection_fraction_of_step']:.3f}"
    )

    print("\n== presets: tokens/s and peak memory (one process each) ==")
    rows = []
    for preset in args.presets.split(","):
        out = subprocess.run(
            [sys.executable, __file__, "--throughput-one", preset, "--steps", str(args.steps)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout))
    for row in rows:
        print(
            f"  {row['preset']:<6} {row['tokens_per_s']:>9,.0f} tokens/s  "
            f"{row['step_seconds']:.3f} s/step  peak {row['peak_rss_mb']:,.0f} MB  "
            f"{row['params']:,} params"
        )
    if len(rows) > 1:
        print(
            f"  ratio {rows[0]['preset']}/{rows[1]['preset']} tokens/s: "
            f"{rows[0]['tokens_per_s'] / rows[1]['tokens_per_s']:.2f}"
        )


if __name__ == "__main__":
    main()
