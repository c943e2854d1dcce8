"""The activation-sparsity analysis at toy scale, to exercise every statistic on independent
seeds: 3 seeds dense + 3 seeds 1/4-sparse (smoke preset with d_model 32, 2 layers, n_ctx 64,
300 steps on the stdlib corpus), then `run_activations` with 64 windows per condition and 32
pairs per level. About 1.5 minutes on one thread once the corpus is tokenized.

    python benchmarks/activations_toy.py [--out /tmp/act_toy]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sparsecircuits.activations import ActivationsConfig, run_activations
from sparsecircuits.config import resolve
from sparsecircuits.train import train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/act_toy")
    root = Path(ap.parse_args().out)
    dirs = []
    for density in (1.0, 0.25):
        for seed in range(3):
            d = root / f"d{density}_s{seed}"
            if not (d / "model.safetensors").exists():
                sets = dict(n_layer=2, n_ctx=64, steps=300, density=density, seed=seed)
                sets |= dict(save_every=100, checkpoint_every=100, eval_every=100)
                train(*resolve("smoke", None, sets), d, progress=False)
            dirs.append(d)
    res = run_activations(dirs, root / "out", ActivationsConfig(n=64, n_pairs=32))
    for g in res.groups:
        print(g["label"], "seeds", g["seeds"])
        for t in g["tests"]:
            print(f"  {t['comparison']}: {t['mean']} [{t['low']}, {t['high']}] {t['verdict']}")
    for r in res.robustness:
        deg, vs = r["loss_degradation"], r.get("minus_dense")
        print(
            f"{r['group']}, {r['condition']}: loss degradation {deg['mean']:+.3f} "
            f"[{deg['low']:+.3f}, {deg['high']:+.3f}]"
            + (
                f", sparse - dense {vs['mean']:+.3f} [{vs['low']:+.3f}, {vs['high']:+.3f}]"
                if vs
                else ""
            )
        )


if __name__ == "__main__":
    main()
