"""Does a circuit's size depend on a lucky pruning setting? For the quick study's dense and
1/8-sparse base-width models on two tasks: the size at the default k_coef, at the best of
the study's k_coef grid, and at the best of a 16-setting sweep (mask_lr x k_coef); and both
calibration orders (calibrate at every bisection step, or bisect on raw loss first).

    python benchmarks/bench_prune_grid.py [--preset quick] [--tasks single_double_quote,while_return_true]

Trains the two models into the shared model cache first if the study has not (the quick
study reuses them). A size counts only if the circuit validates on test pairs and did not
collapse; otherwise its status is printed instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from sparsecircuits.benchmarking import save_results
from sparsecircuits.prune import TargetUnreachable, prune
from sparsecircuits.prune_methods import PruneConfig
from sparsecircuits.study import model_dir, model_specs, study_config
from sparsecircuits.study.config import model_configs
from sparsecircuits.train import train

SWEEP_LRS = [0.01, 0.05, 0.2, 0.5]
SWEEP_KS = [1e-4, 1e-3, 1e-2, 3e-2]


def _size(mdir, task, cfg, k_coefs=None) -> tuple[int | None, str, float | None]:
    try:
        c = prune(mdir, task, cfg, progress=False, k_coefs=k_coefs)
    except TargetUnreachable:
        return None, "unreachable", None
    v = c.metrics.validation
    return (c.n_edges if v.status == "ok" else None), v.status, c.prune_config["k_coef"]


def _fmt(size, status) -> str:
    return f"{size} edges" if size is not None else status


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--tasks", default="single_double_quote,while_return_true")
    args = ap.parse_args()
    study = study_config(args.preset)
    base = {s.id: s for s in model_specs(study) if s.seed == 0 and s.d_model == study.base_width}
    picks = [s for s in base.values() if s.kind == "dense"][:1]
    picks += [s for s in base.values() if s.density == min(study.densities)][:1]
    lines: list[str] = []
    results: list[dict] = []

    def emit(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    for spec in picks:
        mdir = model_dir(study, spec)
        if not (mdir / "done.json").exists():
            m, t = model_configs(study, spec)
            train(m, t, mdir, resume=True, progress=False)
        for task in args.tasks.split(","):
            cfg = PruneConfig(
                **{**study.prune, "target_loss": study.target(task), "random_draws": 0}
            )
            cfg = dataclasses.replace(cfg, effect_nodes=0, example_pairs=0)
            t0 = time.perf_counter()
            default = _size(mdir, task, cfg)
            grid = _size(mdir, task, cfg, study.k_coefs)
            sweep = [
                (lr, k, *_size(mdir, task, dataclasses.replace(cfg, mask_lr=lr, k_coef=k)))
                for lr in SWEEP_LRS
                for k in SWEEP_KS
            ]
            raw_first = _size(mdir, task, dataclasses.replace(cfg, calibrate_in_bisection=False))
            valid = [x for x in sweep if x[2] is not None]
            best = min(valid, key=lambda x: x[2]) if valid else None
            emit(f"{spec.label}, {task} (target {cfg.target_loss}):")
            emit(f"  default (mask_lr {cfg.mask_lr}, k_coef {cfg.k_coef}): {_fmt(*default[:2])}")
            emit(f"  study grid {study.k_coefs}: {_fmt(*grid[:2])} at k_coef {grid[2]}")
            if best:
                emit(f"  sweep best of 16: {best[2]} edges (mask_lr {best[0]}, k_coef {best[1]})")
                if grid[0]:
                    emit(f"  grid / sweep best: {grid[0] / best[2]:.2f}x (target <= 1.5)")
            else:
                emit("  sweep: no setting validated")
            emit(f"  collapsed in the sweep: {sum(x[3] == 'collapsed' for x in sweep)} of 16")
            emit(f"  calibrated only after a raw-loss bisection: {_fmt(*raw_first[:2])}")
            emit(f"  ({time.perf_counter() - t0:.0f} s)")
            results.append(
                dict(
                    model=spec.label,
                    task=task,
                    default=default,
                    grid=grid,
                    sweep=sweep,
                    raw_first=raw_first,
                )
            )
    save_results("bench_prune_grid", lines, {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()
