"""How many built-in tasks do the study's models reach as they train longer? Input for a
`standard` study preset (issue 10): one longer run per model (the quick study's shapes, dense
and sparse at the base width), measured at its snapshots: per snapshot, the tasks whose full
model reaches a target on held-out test pairs (calibrated on train pairs) with accuracy
>= 0.9, the study's own eligibility rule, and which of those the empty circuit (every node
mean-ablated) also reaches: the study leaves those out (they need no node).

    python benchmarks/tasks_vs_training.py [--steps 4800] [--every 1200] [--targets 0.8,0.5]

A snapshot at step s of an N-step run is not a model trained for s steps: the learning rate
(and the density anneal) follow N. Read the curve as "where along one run", not as the
budget of a shorter run. Each run goes to a temporary folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from sparsecircuits.checkpoint import load
from sparsecircuits.nodes import cached_node_means
from sparsecircuits.prune import empty_circuit_metrics, full_model_metrics
from sparsecircuits.study import model_specs, study_config
from sparsecircuits.study.config import model_configs
from sparsecircuits.study.measures import reaches
from sparsecircuits.tasks import TASKS, get_task
from sparsecircuits.train import train

sys.path.insert(0, str(Path(__file__).parent))
from results import save_results  # noqa: E402


def eligible(model_path: Path, targets: list[float], seed: int) -> dict:
    """{target: {"reached": [tasks], "trivial": [tasks]}} for one checkpoint folder: the
    tasks the full model reaches, and among them those the empty circuit (every node
    mean-ablated) reaches too, which have no circuit to measure."""
    model, tok = load(model_path)
    means = cached_node_means(model_path, model, tok, progress=False)
    out = {t: {"reached": [], "trivial": []} for t in targets}
    for name in TASKS:
        task = get_task(name, 128, 128, seed)
        pairs = [task.encode(tok, s, model.cfg.n_ctx) for s in ("train", "test")]
        if len(pairs[1]) == 0:
            continue
        m = full_model_metrics(model, *pairs, 16)
        empty = empty_circuit_metrics(model, *pairs, means, 16)
        for t in targets:
            if reaches(m, t, 0.9):
                out[t]["reached"].append(name)
                if empty["train_loss_calibrated"] <= t:
                    out[t]["trivial"].append(name)
    return out


def _line(target: float, r: dict) -> str:
    real = [t for t in r["reached"] if t not in r["trivial"]]
    trivial = f"; needing no node: {', '.join(r['trivial'])}" if r["trivial"] else ""
    return f"target {target}: {len(real)} ({', '.join(real) or 'none'}{trivial})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="quick", help="study preset whose shapes are used")
    ap.add_argument("--steps", type=int, default=4800)
    ap.add_argument("--every", type=int, default=1200)
    ap.add_argument("--targets", default="0.8,0.5")
    args = ap.parse_args()
    targets = [float(x) for x in args.targets.split(",")]
    study = study_config(args.preset)
    base = [s for s in model_specs(study) if s.seed == 0 and s.d_model == study.base_width]
    picks = [s for s in base if s.kind == "dense"][:1]
    picks += [s for s in base if s.density == min(study.densities)][:1]
    lines, rows = [], []

    def emit(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    emit(
        f"{len(TASKS)} built-in tasks; reached = test loss <= target and accuracy >= 0.9, "
        "not counting tasks the empty circuit also reaches (listed apart)"
    )
    for spec in picks:
        m, t = model_configs(study, spec)
        t = dataclasses.replace(t, steps=args.steps, save_every=args.every)
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            out = train(m, t, Path(d) / "run", progress=False)
            minutes = (time.perf_counter() - t0) / 60
            emit(f"{spec.label}: {args.steps} steps in {minutes:.1f} min (n_ctx {m.n_ctx})")
            snaps = sorted(out.glob("checkpoints/step_*"), key=lambda p: int(p.name[5:]))
            steps = [int(p.name[5:]) for p in snaps]
            for path, step in [
                *zip(snaps, steps, strict=True),
                *([(out, args.steps)] * (args.steps not in steps)),
            ]:
                reached = eligible(path, targets, spec.seed)
                rows.append({"model": spec.label, "step": step, "reached": reached})
                emit(f"  step {step:>6}: " + "; ".join(_line(tg, r) for tg, r in reached.items()))
    save_results("tasks_vs_training", lines, {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
