"""The weight-mask L1 per weight, 1e-4 (the default) vs 1e-8 (about the paper's): mask size
and the Lepori metrics on two tiny pretrained models (dense and sparse 1/4, d_model 32,
150 steps on a corpus of the compound tasks' lines), pretrained and untrained-control
regimes, quote_bracket. About 4 minutes on 2 cores.

    python benchmarks/mask_l1.py [--out /tmp/mask_l1]

One checkpoint per config (no pretraining-seed interval): a measurement of the setting's
effect at this scale, not a result about the models. Writes
benchmarks/results/mask_l1.{md,json} (README quotes the .md).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from sparsecircuits.benchmarking import save_results
from sparsecircuits.config import resolve
from sparsecircuits.modularity import ModularityConfig, run_modularity
from sparsecircuits.tasks.compound import COMPOUND_TASKS, get_compound_task
from sparsecircuits.train import train
from sparsecircuits.weightmask import MaskConfig


def pretrained(root: Path) -> list[Path]:
    corpus = root / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for f in range(8):
        lines = []
        for name in COMPOUND_TASKS:
            lines += [e.prompt + e.answer for e in get_compound_task(name, 40, 1, seed=f).train]
        rng.shuffle(lines)
        (corpus / f"m{f}.py").write_text("\n".join(lines) + "\n")
    dirs = []
    for density in (1.0, 0.25):
        d = root / f"pre_{density}"
        if not (d / "config.json").exists():
            sets = dict(vocab_size=400, n_ctx=24, d_model=32, n_layer=2, steps=150, lr=0.01)
            sets |= dict(batch_size=4, eval_every=50, eval_batches=1, density=density)
            train(*resolve("smoke", None, sets | {"data": [str(corpus)]}), d, progress=False)
        dirs.append(d)
    return dirs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/mask_l1")
    root = Path(ap.parse_args().out)
    dirs = pretrained(root)
    cols = ("kept_frac", "kept", "subnetwork", "ablation_zero", "ablation_mean")
    lines = [
        "weight masks, quote_bracket; means over fine-tuning orders (pretrained) or inits "
        "(random) x mask seeds",
        f"  {'l1':<6} {'model':<18} {'regime':<10} {'factor':<6} "
        + " ".join(f"{c:>13}" for c in cols)
        + "  usable",
    ]
    rows = []
    for l1 in (1e-4, 1e-8):
        cfg = ModularityConfig(
            tasks=["quote_bracket"],
            regimes=["pretrained", "random"],
            base_seeds=2,
            finetune_seeds=2,
            mask_seeds=2,
            n_train=32,
            n_test=16,
            finetune_steps=100,
            node_steps=20,
            node_target=0.6,
            masks=MaskConfig(steps=200, l1=l1),
        )
        res = run_modularity(dirs, root / f"out_{l1}", cfg, progress=False)
        for r in res.summary:
            if r["structure"] == "weights":
                cells = [r[k]["mean"] if r[k] else None for k in cols]
                text = " ".join("n/a".rjust(13) if c is None else f"{c:>+13.3g}" for c in cells)
                lines.append(
                    f"  {l1:<6g} {r['kind']:<18} {r['regime']:<10} {r['factor']:<6} {text}"
                    f"  {r['usable']}"
                )
                rows.append({"l1": l1, **{k: r[k] for k in ("kind", "regime", "factor")}})
                rows[-1] |= dict(zip(cols, cells, strict=True)) | {"usable": r["usable"]}
    print("\n".join(lines))
    save_results("mask_l1", lines, {"rows": rows})


if __name__ == "__main__":
    main()
