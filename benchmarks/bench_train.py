"""Training speed on a shared CPU: today's step (the code as it was before the speed work,
which the library keeps as the baseline behind `fused.reference()`) vs the fast paths, each
as a fraction of the machine's matmul rate at the model's shapes; the wall time of one
circuit search, as the quick study runs it and as `prune` runs by default on the quick
preset's model; quiet vs one competing busy process for training and a circuit search; two
sparsecircuits jobs side by side vs one after the other; held-out loss after a fixed number
of tokens, old step vs new, paired over seeds; last, a verdict per target of issue 11 from
those numbers. Every timing runs in a child process of its own, started as the CLI starts
(the OpenMP wait policy is fixed when torch loads), and the variants alternate round by
round, so the ratios hold on a noisy machine; absolute numbers are for orientation only.

    python benchmarks/bench_train.py [--presets quick,small] [--rounds 5] [--skip-load]
        [--loss-steps 300] [--loss-seeds 3] [--prune-model runs/quick] [--search-rounds 3]
        [--skip-speed]

(or `python -m benchmarks.bench_train ...` from the repository's root).

`--skip-speed --skip-load` runs the held-out check alone (more seeds, under its own --name).

The circuit searches with today's step run today's pruning code around it (the mask
training and evaluation passes as they are now), so they understate what a search cost
before; only the model's step differs between the two (under `fused.reference()` its task
passes run every position, the padding after each batch's longest prompt included, as the
baseline always did).

"today" is what a user got before this benchmark existed: the plain code paths in fp32,
OpenMP's spinning wait policy and a fixed 2 threads. "new" is the default now: the preset's
precision (bf16 on the quick and small presets where the CPU has it), the fast paths, waits
that spin briefly and then sleep, threads adapted to the cores left free.
"""

from __future__ import annotations

# isort: off
import sparsecircuits  # noqa: F401  first, as in the CLI: it sets the wait policy torch reads

# isort: on
import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from sparsecircuits import fused, threads
from sparsecircuits.benchmarking import StepRunner, cpu_name, matmul_seconds, save_results
from sparsecircuits.config import resolve
from sparsecircuits.prune_methods import PruneConfig
from sparsecircuits.stats import t_interval
from sparsecircuits.train import native_bf16

NATIVE_BF16 = native_bf16(torch.device("cpu"))


def step_context(variant: str) -> contextlib.AbstractContextManager:
    """The baseline "today" runs under `fused.reference()` (explicit attention, full logits
    tensor, scatter/gather AbsTopK, top-k index weight projection, unfused AdamW; task
    passes through every position); "new" the default code."""
    return fused.reference() if variant == "today" else contextlib.nullcontext()


# Each variant's steps are timed in a process of its own: a second model in the same
# process slowed the first by ~15-20% (small preset, fp32), which would bias whichever
# variant shares.
VARIANTS = {
    "today": dict(reference=True),
    "new": {},
    "new fp32": dict(precision="fp32"),
    "new dense": dict(density=1.0),
}


def throughput_worker(preset: str, variant: str, steps: int, reps: int, matmuls: bool) -> dict:
    """Median seconds per step of one variant (see VARIANTS); with `matmuls` also the
    matmuls at the model's shapes."""
    r = StepRunner(preset, **VARIANTS[variant])
    r.time_steps(2)  # warm-up
    out = {variant: statistics.median(r.time_steps(steps) for _ in range(reps))}
    out["tokens_per_step"] = r.tokens_per_step
    if variant == "new":
        out["precision"] = r.tcfg.precision
    if matmuls:
        out["matmul_fp32"] = matmul_seconds(r)
        if r.tcfg.precision == "bf16":
            out["matmul_bf16"] = matmul_seconds(r, torch.bfloat16)
    return out


def throughput(presets: list[str], steps: int, rounds: int) -> list[dict]:
    rows = []
    for preset in presets:
        got: dict[str, list[float]] = {}
        extra: dict = {}
        for i in range(rounds):
            for variant in VARIANTS:
                cmd = [sys.executable, __file__, "--worker", "throughput", "--variant", variant]
                cmd += ["--preset", preset, "--steps", str(steps)]
                cmd += ["--matmuls"] if i == 0 and variant == "new" else []
                env = _worker_env("today" if variant == "today" else "new")
                res = _worker_result(
                    subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
                )
                got.setdefault(variant, []).append(res.pop(variant))
                for k, v in res.items():
                    extra.setdefault(k, v)
        med = {k: statistics.median(v) for k, v in got.items()}
        n = extra["tokens_per_step"]
        fp32_s, fp32_flops = extra["matmul_fp32"]
        mm_new = extra.get("matmul_bf16", extra["matmul_fp32"])
        rows.append(
            dict(
                preset=preset,
                precision=extra["precision"],
                seconds_per_step=med,
                tokens_per_s={k: n / v for k, v in med.items()},
                speedup=med["today"] / med["new"],
                speedup_fp32=med["today"] / med["new fp32"],
                matmul_gflops=fp32_flops / fp32_s / 1e9,
                matmul_gflops_new=mm_new[1] / mm_new[0] / 1e9,
                matmul_fraction={
                    "today": fp32_s / med["today"],
                    "new fp32": fp32_s / med["new fp32"],
                    "new": mm_new[0] / med["new"],
                },
                sparsity_tax=med["new"] / med["new dense"],
            )
        )
    return rows


# ---- quiet vs loaded, in child processes (the wait policy is fixed when torch starts) --------


def _worker_env(variant: str) -> dict:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        env.pop(key, None)
    if variant == "today":
        env.update(OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="2")
    return env


def _spawn_worker(kind: str, variant: str, args) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--worker", kind, "--variant", variant]
    cmd += ["--work-seconds", str(args.work_seconds), "--prune-model", args.prune_model]
    return subprocess.Popen(cmd, env=_worker_env(variant), stdout=subprocess.PIPE, text=True)


def _worker_result(p: subprocess.Popen) -> dict:
    out, _ = p.communicate()
    if p.returncode:
        raise SystemExit(f"worker failed ({p.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def run_worker(kind: str, variant: str, args) -> dict:
    """Warm up long enough for the thread count to settle, then measure for a fixed time."""
    if kind == "train":
        r = StepRunner("quick", reference=variant == "today")
        r.time_steps(1)
        deadline = time.perf_counter() + threads.PERIOD * 2
        while time.perf_counter() < deadline:
            r.time_steps(1)
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < args.work_seconds:
            r.time_steps(1)
            n += 1
        return {"rate": n * r.tokens_per_step / (time.perf_counter() - t0), "unit": "tokens/s"}
    with step_context(variant):
        seconds = search_seconds(kind, args)
    return {"rate": 1 / seconds, "seconds": seconds, "unit": "searches/s"}


# ---- circuit search wall time -------------------------------------------------------------

STUDY_TASK = "while_return_true"  # one the quick study's models all reach


def study_search() -> tuple[Path, PruneConfig, list[float]]:
    """A circuit search as the quick study runs one: its base model (d_model 64, density
    1/8, seed 0; trained into the study's model cache when not there, ~1-2 min), its prune
    settings and target for the task, over its k_coef grid -> (model dir, config, k_coefs)."""
    from sparsecircuits.study.config import model_dir, model_specs, study_config
    from sparsecircuits.study.run import prune_config, train_model

    cfg = study_config("quick")
    base = f"w{cfg.base_width}_d{cfg.fixed_l0_density:.4g}_s0"
    spec = next(s for s in model_specs(cfg) if s.id == base)
    mdir = model_dir(cfg, spec)
    if not (mdir / "done.json").exists():
        train_model(cfg, spec, torch.device("cpu"))
    return mdir, prune_config(cfg, STUDY_TASK), cfg.k_coefs


def search_seconds(kind: str, args) -> float:
    """Wall time of one circuit search: "study" as above; "cli" what
    `sparsecircuits prune MODEL --task single_double_quote --target-loss 0.8` runs on the
    model at --prune-model (the quick preset's: d_model 128, AbsTopK on): the default
    settings, one k_coef."""
    from sparsecircuits.prune import prune

    if kind == "study":
        model, cfg, k_coefs = study_search()
        task = STUDY_TASK
    else:
        model, cfg, k_coefs = Path(args.prune_model), PruneConfig(target_loss=0.8), None
        task = "single_double_quote"
    t = time.perf_counter()
    prune(model, task, cfg, progress=False, k_coefs=k_coefs)
    return time.perf_counter() - t


def search_times(kinds: list[str], rounds: int, args) -> dict:
    """Median wall time of each search, today's step vs the new one, each search in a
    fresh child process (as a user's command runs), variants alternated round by round."""
    times: dict = {kind: {"today": [], "new": []} for kind in kinds}
    for _ in range(rounds):
        for kind in kinds:
            for variant in ("today", "new"):
                res = _worker_result(_spawn_worker(kind, variant, args))
                times[kind][variant].append(res["seconds"])
    return {
        kind: {v: {"median_s": statistics.median(t), "all_s": t} for v, t in by.items()}
        for kind, by in times.items()
    }


@contextlib.contextmanager
def competing_process():
    """One single-thread busy process, like a browser tab or an indexer."""
    p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        p.kill()
        p.wait()


def under_load(kinds: list[str], args) -> list[dict]:
    rows = []
    for kind in kinds:
        for variant in ("today", "new"):
            quiet = _worker_result(_spawn_worker(kind, variant, args))
            with competing_process():
                loaded = _worker_result(_spawn_worker(kind, variant, args))
            rows.append(
                dict(kind=kind, variant=variant, quiet=quiet, loaded=loaded,
                     retained=loaded["rate"] / quiet["rate"])
            )  # fmt: skip
    return rows


def side_by_side(args) -> dict:
    """Two training jobs of the same length: together vs one after the other (new policy)."""
    steps = 30
    cmd = [sys.executable, __file__, "--worker", "steps", "--steps", str(steps)]
    env = _worker_env("new")
    t = time.perf_counter()
    for _ in range(2):
        subprocess.run(cmd, env=env, check=True, capture_output=True)
    sequential = time.perf_counter() - t
    t = time.perf_counter()
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL) for _ in range(2)]
    for p in procs:
        p.wait()
    together = time.perf_counter() - t
    return {"sequential_s": sequential, "together_s": together}


# ---- held-out loss after a fixed number of tokens ------------------------------------------


def heldout_after(steps: int, seeds: int, n_threads: int) -> dict:
    """Train the quick preset `steps` steps with today's step (fp32) and the new one (at the
    preset's precision; for seed 0 in fp32 too where that is bf16) from each of `seeds`
    seeds (a seed fixes the init and the batches, so the two steps pair by seed); held-out
    loss of each run, and the paired difference new - today with its 95% t-interval over
    seeds beside the seed-to-seed spread. The thread count is fixed: one that adapts
    mid-run changes the summation order, and with it the loss in the 3rd decimal (today's
    step gave 4.0464 and 4.0388 in two runs)."""
    import tempfile

    from sparsecircuits.train import train

    threads.set_threads(n_threads)
    runs = [
        (v, v, s, "fp32" if v == "today" else None) for s in range(seeds) for v in ("today", "new")
    ]
    if NATIVE_BF16 and resolve("quick", None, {})[1].precision != "fp32":
        runs.append(("new fp32", "new", 0, "fp32"))
    out: dict = {"runs": []}
    for label, variant, seed, precision in runs:
        overrides = dict(steps=steps, eval_every=steps, seed=seed)
        if precision:
            overrides["precision"] = precision
        mcfg, tcfg = resolve("quick", None, overrides)
        with tempfile.TemporaryDirectory() as d, step_context(variant):
            t = time.perf_counter()
            train(mcfg, tcfg, Path(d) / "run", progress=False)
            sec = time.perf_counter() - t
            lines = (Path(d) / "run" / "metrics.jsonl").read_text().splitlines()
            rows = [json.loads(line) for line in lines]
        loss = rows[-1]["heldout_loss"]
        out["runs"].append({"label": label, "seed": seed, "heldout_loss": loss, "seconds": sec})
    by = {(r["label"], r["seed"]): r["heldout_loss"] for r in out["runs"]}
    if seeds >= 2:
        diffs = [by["new", s] - by["today", s] for s in range(seeds)]
        mean, low, high = t_interval(diffs)
        spread = statistics.stdev(by["new", s] for s in range(seeds))
        out["paired"] = {"mean": mean, "low": low, "high": high, "seed_sd": spread}
    return out


def verdicts(results: dict) -> list[str]:
    """One line per target of issue 11 measured in this run: the measured value and whether
    it meets the target, so README's account of them is regenerated, never typed."""

    def mark(ok: bool) -> str:
        return "met" if ok else "NOT met"

    out = []
    for row in results.get("throughput", []):
        out.append(
            f"throughput {row['preset']}: {row['speedup']:.2f}x today's step in "
            f"{row['precision']}, target >= 2: {mark(row['speedup'] >= 2)}"
            + (
                f" (in fp32 {row['speedup_fp32']:.2f}x: {mark(row['speedup_fp32'] >= 2)})"
                if row["precision"] != "fp32"
                else ""
            )
        )
    for kind, by in results.get("search", {}).items():
        s = by["new"]["median_s"]
        out.append(f"circuit search ({kind}): {s:.1f} s, target <= 15 s: {mark(s <= 15)}")
    for row in results.get("load", []):
        if row["variant"] == "new":
            r = row["retained"]
            out.append(
                f"retained under load ({row['kind']}): {r:.2f}, target >= 0.6: {mark(r >= 0.6)}"
            )
    if "side_by_side" in results:
        sbs = results["side_by_side"]
        ratio = sbs["together_s"] / sbs["sequential_s"]
        out.append(
            f"two jobs side by side / one after the other: {ratio:.2f}, target <= 1: {mark(ratio <= 1)}"
        )
    p = results.get("heldout", {}).get("paired")
    if p:
        if p["low"] > 0 or p["high"] < 0:
            verdict = "changed (the interval excludes 0)"
        elif max(-p["low"], p["high"]) <= p["seed_sd"]:
            verdict = "unchanged within noise (the interval lies within one seed-to-seed sd)"
        else:
            verdict = "no change resolved, but the interval is wider than the seed-to-seed sd"
        out.append(
            f"held-out loss, new - today: {p['mean']:+.4f} [{p['low']:+.4f}, {p['high']:+.4f}]: {verdict}"
        )
    return out


def speed_sections(args, results: dict, emit, have_cli_model: bool) -> None:
    """The throughput and circuit-search sections: run, printed through `emit`, kept in
    `results`."""
    emit("\n== tokens/s, today's step vs the new one (median of alternated rounds) ==")
    results["throughput"] = throughput(args.presets.split(","), args.steps, args.rounds)
    for row in results["throughput"]:
        tps, frac = row["tokens_per_s"], row["matmul_fraction"]
        emit(
            f"  {row['preset']:<6} today {tps['today']:>8,.0f}  new {tps['new']:>8,.0f} tokens/s"
            f"  speed-up {row['speedup']:.2f}x  (target >= 2; new runs in {row['precision']})"
        )
        if row["precision"] != "fp32":
            emit(
                f"         new step in fp32: {tps['new fp32']:,.0f} tokens/s, speed-up "
                f"{row['speedup_fp32']:.2f}x"
            )
        emit(
            f"         step as a fraction of its matmuls at the measured rate "
            f"(fp32 {row['matmul_gflops']:.0f} GFLOP/s at these shapes"
            + (
                f", {row['precision']} {row['matmul_gflops_new']:.0f}"
                if row["precision"] != "fp32"
                else ""
            )
            + f"): today {frac['today']:.2f}, new in fp32 {frac['new fp32']:.2f}"
            + (f", new {frac['new']:.2f}" if row["precision"] != "fp32" else "")
        )
        emit(f"         new step, sparse / dense (same AbsTopK): {row['sparsity_tax']:.2f}")

    searches = ["study"] + (["cli"] if have_cli_model else [])
    for kind in searches:  # models trained and node means cached before anything is timed
        search_seconds(kind, args)
    n_study_k = len(study_search()[2])
    emit(f"\n== one circuit search, wall time (median of {args.search_rounds} rounds) ==")
    if not have_cli_model:
        emit(f"  (no checkpoint at {args.prune_model}: the quick preset's search not measured)")
    res = results["search"] = search_times(searches, args.search_rounds, args)
    described = {
        "study": f"quick study's search ({STUDY_TASK}, d_model 64, its settings, "
        f"{n_study_k} k_coefs)",
        "cli": "sparsecircuits prune on the quick preset's model (d_model 128, defaults)",
    }
    for kind, by in res.items():
        today, new = by["today"]["median_s"], by["new"]["median_s"]
        emit(
            f"  {described[kind]}:\n    today's step {today:.1f} s, new {new:.1f} s "
            f"({today / new:.2f}x; rounds {', '.join(f'{t:.1f}' for t in by['new']['all_s'])}"
            f" s; target <= 15 s)"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="quick,small")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip-load", action="store_true", help="skip the competing-process runs")
    ap.add_argument(
        "--skip-speed", action="store_true", help="skip the throughput and circuit-search runs"
    )
    ap.add_argument("--loss-steps", type=int, default=300, help="0 skips the loss check")
    ap.add_argument("--loss-seeds", type=int, default=3, help="seeds of the loss check")
    ap.add_argument("--prune-model", default="runs/quick")
    ap.add_argument("--work-seconds", type=float, default=12.0)
    ap.add_argument("--search-rounds", type=int, default=3)
    ap.add_argument(
        "--name",
        default="bench_train",
        help="results file name (keep another machine kind's run apart: bench_train_avx2)",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="new", help=argparse.SUPPRESS)
    ap.add_argument("--preset", default="quick", help=argparse.SUPPRESS)
    ap.add_argument("--matmuls", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "throughput":
        res = throughput_worker(args.preset, args.variant, args.steps, 3, args.matmuls)
        print(json.dumps(res))
        return
    if args.worker == "steps":
        StepRunner("quick").time_steps(args.steps)
        return
    if args.worker:
        print(json.dumps(run_worker(args.worker, args.variant, args)))
        return

    lines: list[str] = []
    results: dict = {"args": vars(args)}
    start_threads = torch.get_num_threads()  # before anything adapts it

    def emit(line: str = "") -> None:
        print(line, flush=True)
        lines.extend(line.split("\n"))

    emit(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {cpu_name()}"
    )
    have_cli_model = (Path(args.prune_model) / "model.safetensors").exists()
    if not args.skip_speed:
        speed_sections(args, results, emit, have_cli_model)

    if not args.skip_load:
        kinds = ["train"] + (["cli"] if have_cli_model else [])
        emit("\n== quiet vs one competing single-thread busy process ==")
        results["load"] = under_load(kinds, args)
        for row in results["load"]:
            q, lo = row["quiet"], row["loaded"]
            emit(
                f"  {row['kind']:<5} {row['variant']:<5} quiet {q['rate']:>9,.3f}  "
                f"loaded {lo['rate']:>9,.3f} {q['unit']:<10}  retained {row['retained']:.2f}"
                f"  (target >= 0.6)"
                + (f"  search {q['seconds']:.1f} s quiet" if "seconds" in q else "")
            )
        sbs = results["side_by_side"] = side_by_side(args)
        emit(
            f"  two training jobs: together {sbs['together_s']:.1f} s, one after the other "
            f"{sbs['sequential_s']:.1f} s (ratio {sbs['together_s'] / sbs['sequential_s']:.2f},"
            f" target <= 1)"
        )

    if args.loss_steps:
        emit(f"\n== held-out loss after {args.loss_steps} quick steps ==")
        res = results["heldout"] = heldout_after(args.loss_steps, args.loss_seeds, start_threads)
        for r in res["runs"]:
            emit(
                f"  {r['label']:<8} seed {r['seed']}  held-out loss {r['heldout_loss']:.4f}"
                f"  ({r['seconds']:.0f} s)"
            )
        if "paired" in res:
            p = res["paired"]
            emit(
                f"  new - today, paired by seed: {p['mean']:+.4f} [95% t-interval "
                f"{p['low']:+.4f}, {p['high']:+.4f}] over {args.loss_seeds} seeds; "
                f"seed-to-seed sd of the new step {p['seed_sd']:.4f}"
            )

    emit("\n== against issue 11's targets (from the lines above) ==")
    for line in verdicts(results):
        emit("  " + line)

    save_results(args.name, lines, results)


if __name__ == "__main__":
    main()
