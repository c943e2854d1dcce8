"""How many built-in tasks do the study's models reach, against the tokens they train on?
Input for the `standard` study preset (issue 10): the frontier needs every model of the
family to reach a task, so the family's two extremes at the base width, the dense model and
the sparsest one, bound what any budget can give. Each is trained at several token budgets
from several pretraining seeds, and the study's own rule is applied to every built-in task:
the full model reaches a target on held-out test pairs (calibrated on train pairs) with
accuracy >= the preset's bar, not counting tasks the empty circuit (every node
mean-ablated) also reaches, which need no node.

    python benchmarks/tasks_vs_training.py [--preset standard] [--budgets 1,2,4]
        [--seeds 3] [--targets 0.8,0.5] [--jobs 2] [--set afrac=null ...] [--sparsest 0.0625]

`--set KEY=VALUE` changes a model or training setting of every run (as `train --set` does),
to ask what another recipe would give at the same budgets; its results go to a file named
after the settings, beside the preset's own.

A budget of b times the preset's tokens is the preset's batch size times b: steps, the
learning-rate schedule and the density anneal stay as they are, so every point is the end
of its own run (not a snapshot of a longer one) and the learning rate is not retuned for
the larger batch. The models are trained into the study's model cache through the study's
own code: a study with those settings reuses them (budget 1 is the preset itself).
Training minutes are read from each run's metrics (its steps' wall time), so a cached
model reports the minutes of the run that made it; with --jobs 2 they are minutes of
one-thread jobs running side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

import torch

from sparsecircuits.benchmarking import save_results
from sparsecircuits.config import parse_value
from sparsecircuits.io import read_jsonl
from sparsecircuits.study import model_specs, study_config
from sparsecircuits.study.config import ModelSpec, StudyConfig, model_configs, model_dir
from sparsecircuits.study.measures import reaches
from sparsecircuits.study.run import full_model_rows, model_row, train_model
from sparsecircuits.tasks import TASKS
from sparsecircuits.threads import in_processes

# what each eligibility row keeps in the results file: the rule's inputs, raw and calibrated
ROW_KEYS = (
    "task",
    "loss_calibrated",
    "accuracy_calibrated",
    "loss",
    "accuracy",
    "empty_train_loss_calibrated",
)


def at_budget(study: StudyConfig, budget: float) -> StudyConfig:
    """The study with every model's batch (so its tokens) scaled by `budget`."""
    batch = model_configs(study, model_specs(study)[0])[1].batch_size
    over = dict(study.train_overrides, batch_size=round(batch * budget))
    return dataclasses.replace(study, train_overrides=over)


def measure(study: StudyConfig, spec: ModelSpec) -> dict:
    """Train one model (unless cached) and apply the study's eligibility rule to every
    task of `study`: {"model", "seed", "minutes", "heldout_loss", "heldout_loss_se", "rows"}."""
    cpu = torch.device("cpu")
    mdir = model_dir(study, spec)
    if not (mdir / "done.json").exists():
        train_model(study, spec, cpu)
    m, t = model_configs(study, spec)
    per_step = t.batch_size * m.n_ctx
    seconds = sum(per_step / r["tokens_per_s"] for r in read_jsonl(mdir / "metrics.jsonl"))
    row = model_row(spec, mdir, cpu)
    return {
        "model": spec.label.rsplit(", seed", 1)[0],
        "seed": spec.seed,
        "batch": t.batch_size,
        "tokens": t.steps * per_step,
        "minutes": seconds / 60,
        "heldout_loss": row.heldout_loss,
        "heldout_loss_se": row.heldout_loss_se,
        "rows": [{k: getattr(r, k) for k in ROW_KEYS} for r in full_model_rows(study, spec, cpu)],
    }


def reached(result: dict, target: float, min_accuracy: float) -> tuple[list[str], list[str]]:
    """(tasks that need a circuit and are reached, tasks reached by the empty circuit too)."""
    hits = [r for r in result["rows"] if reaches(r, target, min_accuracy)]
    trivial = [r["task"] for r in hits if r["empty_train_loss_calibrated"] <= target]
    return [r["task"] for r in hits if r["task"] not in trivial], trivial


def _tasks_text(real: list[str], trivial: list[str]) -> str:
    extra = f"; needing no node: {', '.join(trivial)}" if trivial else ""
    return f"{len(real)} ({', '.join(real) or 'none'}{extra})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="standard", help="study preset whose shapes are used")
    ap.add_argument(
        "--budgets", default="1,2,4", help="token budgets, as multiples of the preset's"
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--targets", default="0.8,0.5")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument(
        "--sparsest",
        type=float,
        help="density of the sparse model (default: the preset's lowest; the standard "
        "preset's was 1/16 until it stopped at 1/8)",
    )
    args = ap.parse_args()
    sets = dict(kv.split("=", 1) for kv in args.set)
    targets = [float(x) for x in args.targets.split(",")]
    budgets = [float(x) for x in args.budgets.split(",")]
    base = study_config(args.preset, seeds=args.seeds)
    over = dict(base.train_overrides, **{k: parse_value(v) for k, v in sets.items()})
    base = dataclasses.replace(base, tasks=list(TASKS), train_overrides=over)
    if args.sparsest:
        base = dataclasses.replace(base, densities=[args.sparsest])
    specs = [s for s in model_specs(base) if s.d_model == base.base_width]
    picks = [s for s in specs if s.kind == "dense" or s.density == min(base.densities)]
    work = [(b, at_budget(base, b), s) for b in sorted(budgets, reverse=True) for s in picks]
    lines, results = [], {}

    def emit(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    def run_line(r: dict) -> str:
        hits = "; ".join(
            f"target {t}: {_tasks_text(*reached(r, t, base.min_accuracy))}" for t in targets
        )
        return (
            f"  {r['model']}, seed {r['seed']}: {r['minutes']:.1f} min, held-out "
            f"{r['heldout_loss']:.3f} (s.e. {r['heldout_loss_se']:.3f}); {hits}"
        )

    print(f"{len(work)} runs, {args.jobs} at a time", flush=True)
    for i, r in in_processes(args.jobs, measure, [(study, s) for _, study, s in work]):
        results[i] = r | {"budget": work[i][0]}
        print(f"budget {work[i][0]:g}x:" + run_line(r), flush=True)

    emit(
        f"{len(TASKS)} built-in tasks; reached = test loss <= target and accuracy >= "
        f"{base.min_accuracy} (the study's rule), not counting tasks the empty circuit also "
        "reaches (listed apart as needing no node)"
    )
    if sets:
        emit(
            "every run with "
            + ", ".join(f"{k}={v}" for k, v in sets.items())
            + " (not the preset's)"
        )
    ordered = sorted(results.values(), key=lambda r: (r["budget"], r["model"], r["seed"]))
    minutes = {}
    for b in sorted(budgets):
        runs = [r for r in ordered if r["budget"] == b]
        emit(
            f"budget {b:g}x ({runs[0]['tokens'] / 1e6:.1f}M tokens per model, "
            f"batch {runs[0]['batch']}):"
        )
        for r in runs:
            emit(run_line(r))
            minutes.setdefault(r["model"], {}).setdefault(b, []).append(r["minutes"])
        for t in targets:
            every = set.intersection(*(set(reached(r, t, base.min_accuracy)[0]) for r in runs))
            emit(
                f"  reached by all {len(runs)} runs, target {t}: "
                f"{len(every)} ({', '.join(sorted(every)) or 'none'})"
            )
    lo = min(budgets)
    emit(f"training minutes (mean over seeds) relative to budget {lo:g}x:")
    for model, per in minutes.items():
        ref = statistics.mean(per[lo])
        rel = ", ".join(f"{b:g}x {statistics.mean(m) / ref:.2f}" for b, m in sorted(per.items()))
        emit(f"  {model}: {ref:.1f} min at {lo:g}x; {rel}")
    name = "_".join(["tasks_vs_training", *(f"{k}-{v}" for k, v in sets.items())])
    save_results(name, lines, {"args": vars(args), "runs": ordered})


if __name__ == "__main__":
    main()
