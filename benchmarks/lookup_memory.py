"""Lookup memory vs circuits (issue 30, item 10): the base-width dense model and one
sparse model of a study preset, trained with and without the bigram table from the same
pretraining seeds; held-out loss, tasks reached, trivial tasks and circuit sizes compared
per seed (study/lookup.py). A separate, separately timed run, not part of any preset's
budget.

    python benchmarks/lookup_memory.py [--preset standard] [--seeds 3] [--jobs 2] [--tasks a,b]
        [--out runs/lookup]

Writes benchmarks/results/lookup_memory_<preset>.md/.json; the two studies stay in
OUT/with and OUT/without (resumable: a killed run continues where it stopped).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sparsecircuits.benchmarking import cpu_name, save_results
from sparsecircuits.study import run_study, study_config
from sparsecircuits.study.answer import fmt_interval
from sparsecircuits.study.lookup import compare, lookup_family


def lines_of(cmp: dict, preset: str, seeds: int, minutes: float) -> list[str]:
    out = [
        f"Lookup memory vs circuits: preset `{preset}`'s base-width dense model and its sparse "
        f"model at the width axis's density, {seeds} pretraining seeds, with and without the "
        f"bigram table ({minutes:.1f} min wall on {cpu_name()}).",
        "",
        "| kind | table | parameters | held-out loss | tasks reached | trivial tasks |",
        "|---|---|---|---|---|---|",
    ]
    for kind, c in cmp.items():
        for side in ("with", "without"):
            lv = c[side]
            out.append(
                f"| {kind} | {side} | {c['params'].get(side)} | {lv['heldout_loss']:.3f} | "
                f"{lv['tasks_reached']:.2f} | {lv['tasks_trivial']:.2f} "
                f"({', '.join(lv['trivial_tasks']) or 'none'}) |"
            )
    out.append("")
    for kind, c in cmp.items():
        out.append(
            f"- {kind}, without - with the table (paired by seed): held-out loss "
            f"{fmt_interval(c['heldout_loss'], ' nats', 3)}; tasks reached "
            f"{fmt_interval(c['tasks_reached'], '', 2)}; trivial tasks "
            f"{fmt_interval(c['tasks_trivial'], '', 2)}; circuit edges without / with "
            f"{fmt_interval(c['edges_ratio'])}, nodes {fmt_interval(c['nodes_ratio'])}"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="standard", help="the study preset whose recipe trains")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/lookup"))
    ap.add_argument("--tasks", help="comma list of tasks (default: the preset's)")
    args = ap.parse_args()
    base = study_config(args.preset, args.tasks.split(",") if args.tasks else None)
    t0 = time.perf_counter()
    results = {
        side: run_study(
            lookup_family(base, side == "with", args.seeds),
            args.out / side,
            resume=True,
            jobs=args.jobs,
        )
        for side in ("with", "without")
    }
    minutes = (time.perf_counter() - t0) / 60
    cmp = compare(results["with"], results["without"])
    lines = lines_of(cmp, args.preset, args.seeds, minutes)
    print("\n".join(lines))
    save_results(
        f"lookup_memory_{args.preset}",
        lines,
        {"preset": args.preset, "seeds": args.seeds, "minutes": minutes, "compare": cmp},
    )


if __name__ == "__main__":
    main()
