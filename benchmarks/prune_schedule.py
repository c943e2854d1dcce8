"""Would a shorter mask-training schedule find the same circuits? Issue 11 asks for one
circuit search on a quick model in <= 15 s; the mask training is most of `prune`'s default
search on the quick preset's model (a step's cost grows with the pairs of prompts in it),
so on a CPU slower than the one the target was set on a shorter schedule is what would
bring that search under it. This measures what such schedules change, before anyone
changes a default:

    python benchmarks/prune_schedule.py [--seeds 3] [--prune-model runs/quick]

Cases: `prune`'s defaults on the quick preset's model (target 0.8, single_double_quote),
and the quick study's search (its settings and k_coef grid) on two of its models, each on
two tasks. Schedules: as set; half the pairs per mask step; two thirds of the steps. Each
(case, schedule) runs with pruning seeds 0..N-1 (the seed draws the mask noise and the
pairs of each step), so a schedule's change can be read against the seed-to-seed spread.
"""

from __future__ import annotations

# isort: off
import sparsecircuits  # noqa: F401  first, as in the CLI: it sets the wait policy torch reads

# isort: on
import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch

from sparsecircuits.benchmarking import save_results
from sparsecircuits.checkpoint import load
from sparsecircuits.nodes import cached_node_means
from sparsecircuits.prune import TargetUnreachable, prune
from sparsecircuits.prune_methods import PruneConfig
from sparsecircuits.stats import t_interval
from sparsecircuits.study.config import model_dir, model_specs, study_config
from sparsecircuits.study.run import prune_config, train_model

STUDY_MODELS = ("w64_d0.125_s0", "w64_dense_s0")
STUDY_TASKS = ("var_if", "while_return_true")


def cases(prune_model: Path) -> list[dict]:
    out = []
    if (prune_model / "model.safetensors").exists():
        out.append(
            dict(name=f"prune defaults, {prune_model}, single_double_quote", model=prune_model,
                 task="single_double_quote", cfg=PruneConfig(target_loss=0.8), k_coefs=None)
        )  # fmt: skip
    cfg = study_config("quick")
    specs = {s.id: s for s in model_specs(cfg)}
    for mid in STUDY_MODELS:
        mdir = model_dir(cfg, specs[mid])
        if not (mdir / "done.json").exists():
            train_model(cfg, specs[mid], torch.device("cpu"))
        for task in STUDY_TASKS:
            out.append(
                dict(name=f"quick study, {mid}, {task}", model=mdir, task=task,
                     cfg=prune_config(cfg, task), k_coefs=cfg.k_coefs)
            )  # fmt: skip
    return out


def schedules(cfg: PruneConfig) -> dict[str, PruneConfig]:
    return {
        "as set": cfg,
        "half the pairs": dataclasses.replace(cfg, batch_pairs=cfg.batch_pairs // 2),
        "2/3 of the steps": dataclasses.replace(cfg, steps=round(cfg.steps * 2 / 3)),
    }


def one(case: dict, cfg: PruneConfig) -> dict:
    t = time.perf_counter()
    try:
        c = prune(case["model"], case["task"], cfg, progress=False, k_coefs=case["k_coefs"])
    except TargetUnreachable as e:
        return {"status": "unreachable", "message": str(e), "seconds": time.perf_counter() - t}
    v = c.metrics.validation
    return {
        "status": v.status,
        "n_nodes": c.n_nodes,
        "n_edges": c.n_edges,
        "test_loss_calibrated": v.test_loss_calibrated,
        "seconds": time.perf_counter() - t,
    }


def _spread(d: list[float], unit: str = "") -> str:
    """Range, mean and 95% t-interval of paired differences."""
    line = f"{min(d):+.0f}..{max(d):+.0f}{unit}, mean {statistics.fmean(d):+.1f}{unit}"
    if len(d) > 1:
        _, low, high = t_interval(d)
        line += f" [95% t-interval {low:+.1f}, {high:+.1f}]"
    return line


def compare_schedules(rows: list[dict]) -> list[str]:
    """Per shorter schedule: how many of its searches validated, its time over the full
    schedule's (median over cases of the per-case median ratio), and, over the (case, seed)
    pairs where both schedules found a circuit, its node count minus the full schedule's
    and its edge count relative to the full schedule's (edge counts differ several-fold
    between cases), each with a 95% t-interval that treats the pairs as independent."""
    out = []
    labels = [label for label in rows[0]["schedules"] if label != "as set"] if rows else []
    for label in labels:
        runs = [(r["schedules"]["as set"], r["schedules"][label]) for r in rows]
        pairs = [(a, b) for full, short in runs for a, b in zip(full, short, strict=True)]
        ok = sum(b["status"] == "ok" for _, b in pairs)
        both = [(a, b) for a, b in pairs if "n_nodes" in a and "n_nodes" in b]
        times = statistics.median(
            statistics.median(b["seconds"] for b in short)
            / statistics.median(a["seconds"] for a in full)
            for full, short in runs
        )
        out.append(f"{label:<17} validated {ok} of {len(pairs)}; time {times:.2f}x")
        if not both:
            out.append(f"{'':<17} no pair with two circuits")
            continue
        d = [b["n_nodes"] - a["n_nodes"] for a, b in both]
        rel = [100 * (b["n_edges"] / a["n_edges"] - 1) for a, b in both if a["n_edges"]]
        out.append(
            f"{'':<17} nodes {_spread(d)} over {len(d)} pairs: larger in "
            f"{sum(x > 0 for x in d)}, smaller in {sum(x < 0 for x in d)}, equal in "
            f"{sum(x == 0 for x in d)}"
        )
        if rel:
            out.append(f"{'':<17} edges {_spread(rel, '%')} relative to the schedule as set")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--prune-model", default="runs/quick")
    args = ap.parse_args()
    lines: list[str] = []

    def emit(line: str = "") -> None:
        print(line, flush=True)
        lines.extend(line.split("\n"))

    results = {"args": vars(args), "cases": []}
    emit(
        f"circuit size by mask-training schedule, pruning seeds 0-{args.seeds - 1} "
        "(nodes / edges per seed; ok = validated)"
    )
    for case in cases(Path(args.prune_model)):
        cached_node_means(case["model"], *load(case["model"]), progress=False)  # not timed
        emit(f"\n{case['name']} (steps {case['cfg'].steps}, pairs/step {case['cfg'].batch_pairs})")
        row = {"case": case["name"], "schedules": {}}
        for label, cfg in schedules(case["cfg"]).items():
            runs = [one(case, dataclasses.replace(cfg, seed=s)) for s in range(args.seeds)]
            row["schedules"][label] = runs
            sizes = ", ".join(
                f"{r['n_nodes']}/{r['n_edges']} {r['status']}" if "n_nodes" in r else r["status"]
                for r in runs
            )
            secs = statistics.median(r["seconds"] for r in runs)
            emit(f"  {label:<17} {sizes}  (median {secs:.1f} s)")
        results["cases"].append(row)
    emit("\nagainst the schedule as set, seed by seed (same case, same pruning seed):")
    for line in compare_schedules(results["cases"]):
        emit("  " + line)
    save_results("prune_schedule", lines, results)


if __name__ == "__main__":
    main()
