"""Training speed of wide models (issue 31): tokens/s of the training step at d_model 64,
128, 256, 512 and 1024 (the quick preset's shape otherwise: 2 layers, context 128, batch
32), each as a fraction of this machine's own matmul rate at that model's shapes, in fp32
and, where the CPU has native bf16, in bf16. The step measured is the default one (what
`train` runs today): the baseline a faster wide-model step is measured against, in the
same run. Each width runs in a process of its own (a second model in one process slowed
the first by 15-20%, bench_train.py); absolute numbers are for orientation only.

    python benchmarks/bench_wide.py [--widths 64,128,256,512,1024] [--steps 6] [--reps 3]
        [--name bench_wide]

Writes benchmarks/results/NAME.md/.json.
"""

from __future__ import annotations

# isort: off
import sparsecircuits  # noqa: F401  first, as in the CLI: it sets the wait policy torch reads

# isort: on
import argparse
import json
import statistics
import subprocess
import sys

import torch

from sparsecircuits.benchmarking import StepRunner, cpu_name, matmul_seconds, save_results
from sparsecircuits.train import native_bf16


def worker(width: int, precision: str, steps: int, reps: int) -> dict:
    """One width at one precision: median seconds per step, tokens per step, and the
    seconds the step's matmuls take at this machine's rate in that precision."""
    r = StepRunner("quick", d_model=width, precision=precision)
    r.time_steps(2)  # warm-up
    step = statistics.median(r.time_steps(steps) for _ in range(reps))
    dtype = torch.bfloat16 if r.tcfg.precision == "bf16" else torch.float32
    mm_s, mm_flops = matmul_seconds(r, dtype)
    return {
        "width": width,
        "precision": r.tcfg.precision,
        "step_s": step,
        "tokens_per_s": r.tokens_per_step / step,
        "matmul_s": mm_s,
        "matmul_gflops": mm_flops / mm_s / 1e9,
        # the share of the step's time its matmuls would take at the machine's own rate
        "fraction_of_rate": mm_s / step,
    }


def run_worker(width: int, precision: str, steps: int, reps: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(width), precision, str(steps), str(reps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def lines_of(rows: list[dict]) -> list[str]:
    out = [
        f"Training step of the quick preset's shape at each d_model, on {cpu_name()}:",
        "",
        f"{'d_model':>7} {'precision':>9} {'tokens/s':>10} {'matmul rate':>14} "
        f"{'fraction of rate':>17}",
    ]
    for r in rows:
        out.append(
            f"{r['width']:>7} {r['precision']:>9} {r['tokens_per_s']:>10,.0f} "
            f"{r['matmul_gflops']:>8,.0f} GFLOP/s {r['fraction_of_rate']:>17.2f}"
        )
    # save_results puts these lines in a code block: plain text, no fences of their own
    out += [
        "",
        "fraction of rate: the seconds the step's matmuls take at this machine's measured",
        "rate at the model's shapes, over the step's seconds (1.0: a step that is all matmul",
        "at full rate). Issue 31's targets: >= 0.5 of the bf16 rate at d_model 256-1024",
        "where the CPU has native bf16, >= 0.6 of the fp32 rate where it has not.",
    ]
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        width, precision, steps, reps = sys.argv[2:6]
        print(json.dumps(worker(int(width), precision, int(steps), int(reps))))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", default="64,128,256,512,1024")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--name", default="bench_wide")
    ap.add_argument("--no-save", action="store_true", help="print only (a smoke run)")
    args = ap.parse_args()
    precisions = ["fp32"] + (["bf16"] if native_bf16(torch.device("cpu")) else [])
    rows = [
        run_worker(int(w), p, args.steps, args.reps)
        for w in args.widths.split(",")
        for p in precisions
    ]
    lines = lines_of(rows)
    print("\n".join(lines))
    if not args.no_save:
        save_results(args.name, lines, {"rows": rows})


if __name__ == "__main__":
    main()
