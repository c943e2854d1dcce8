"""Which built-in tasks does every model of a study's family reach? Input for choosing a
preset's tasks (issue 10): a task enters the frontier only if every model of the family
reaches it, so one weak model can keep a task out. Applies the study's own rule (full model
on held-out test pairs, calibrated on train pairs: loss <= target and accuracy >= the bar;
the empty circuit reaching it too makes the task trivial) to every built-in task, on the
family's models as trained and cached by `sparsecircuits study`. It trains nothing: a model
not yet trained is an error.

    python benchmarks/task_survey.py [--preset standard] [--densities 0.5,0.25,...]

`--densities` replaces the preset's sparse densities at the base width, to survey a family
the preset no longer has (its models must be cached).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from sparsecircuits.benchmarking import save_results
from sparsecircuits.errors import UserError
from sparsecircuits.study import model_specs, study_config
from sparsecircuits.study.config import model_dir
from sparsecircuits.study.measures import frontier_tasks
from sparsecircuits.study.run import full_model_rows
from sparsecircuits.tasks import TASKS
from sparsecircuits.threads import in_processes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="standard")
    ap.add_argument("--densities", help="comma list replacing the preset's densities")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    cfg = dataclasses.replace(study_config(args.preset), tasks=list(TASKS))
    if args.densities:
        cfg = dataclasses.replace(cfg, densities=[float(d) for d in args.densities.split(",")])
    specs = model_specs(cfg)
    missing = [s.id for s in specs if not (model_dir(cfg, s) / "done.json").exists()]
    if missing:
        raise SystemExit(
            f"error: {len(missing)} models of the {args.preset} family are not trained "
            f"({', '.join(missing[:3])}...); run `sparsecircuits study --preset {args.preset}`"
        )
    t0 = time.perf_counter()
    try:
        cpu = torch.device("cpu")
        per_model = dict(in_processes(args.jobs, full_model_rows, [(cfg, s, cpu) for s in specs]))
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    rows = [r for i in range(len(specs)) for r in per_model[i]]
    lines = [
        f"{len(TASKS)} built-in tasks on the {len(specs)} models of the {args.preset} family "
        f"(sparse densities at d_model {cfg.base_width}: {', '.join(f'{d:g}' for d in cfg.densities)}; "
        f"{cfg.seeds} seeds); reached = test loss <= target and accuracy >= "
        f"{cfg.min_accuracy}; trivial = the empty circuit reaches it too",
    ]
    every = frontier_tasks(cfg, rows)  # the study's own rule
    summary = []
    for task in TASKS:
        rs = [r for r in rows if r.task == task]
        missed = [r for r in rs if not r.reaches]
        trivial = sum(r.trivial for r in rs)
        text = ", ".join(
            f"{r.model} ({r.loss_calibrated:.2f}, acc {r.accuracy_calibrated:.2f})"
            for r in missed[:4]
        ) + (f" and {len(missed) - 4} more" if len(missed) > 4 else "")
        verdict = "frontier" if task in every else "trivial" if trivial else "out"
        summary.append(
            {
                "task": task,
                "reach": len(rs) - len(missed),
                "of": len(rs),
                "trivial": trivial,
                "verdict": verdict,
            }
        )
        lines.append(
            f"  {task}: {len(rs) - len(missed)} of {len(rs)} reach (target "
            f"{cfg.target(task)}), {trivial} trivial -> {verdict}"
            + (f"; missed by {text}" if missed else "")
        )
    lines.append(f"tasks every model reaches, not trivial: {len(every)} ({', '.join(every)})")
    lines.append(f"{time.perf_counter() - t0:.0f} s")
    print("\n".join(lines))
    suffix = f"_d{args.densities.replace(',', '-')}" if args.densities else ""
    save_results(
        f"task_survey_{args.preset}{suffix}",
        lines,
        {"args": vars(args), "summary": summary, "rows": [r.to_json() for r in rows]},
    )


if __name__ == "__main__":
    main()
