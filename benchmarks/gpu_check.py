"""The GPU path in one prepared run: every command that takes `--device`, run on it end to
end at toy sizes, then the `paper` and `quick` presets' training steps at their own batch
(tokens/s and peak memory, bf16 and fp32) and a short training of each through the CLI
(data, evals, a checkpoint at the preset's shape) read back by `eval`. Device time is lent
in short leases, so this is the whole check in one command, two minutes on an H200:

    PYTHONPATH=src python3 benchmarks/gpu_check.py --device cuda
    (then copy benchmarks/results/gpu_check.md/.json back from the machine)

On the CPU the same script is a dry run (`--device cpu --presets smoke --no-save`; a test
runs it), so it still works when a GPU turns up. The toy runs use a few packages of this
Python's standard library as their corpus and a private cache, never the user's.
"""

from __future__ import annotations

# isort: off
import sparsecircuits  # noqa: F401  first, as in the CLI: it sets the wait policy torch reads

# isort: on
import argparse
import os
import statistics
import sysconfig
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from sparsecircuits.benchmarking import save_results
from sparsecircuits.checkpoint import load
from sparsecircuits.cli import main as cli
from sparsecircuits.config import resolve
from sparsecircuits.device import pick_device
from sparsecircuits.model import SparseGPT
from sparsecircuits.sparsity import WeightSparsifier
from sparsecircuits.study import StudyConfig, add_legibility, run_study
from sparsecircuits.train import make_optimizer, native_bf16, train_step

GB = 1024**3
PRECISIONS = ("bf16", "fp32")
# Small packages of the standard library: real Python code that tokenizes in seconds.
PACKAGES = ("json", "email", "http")
TOY = dict(vocab_size=2048, n_ctx=64, d_model=64, n_layer=2, batch_size=16)


def write_corpus(root: Path) -> list[str]:
    """The packages' .py files copied into `root` (their folders also hold bytecode)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for package in PACKAGES:
        for f in (stdlib / package).rglob("*.py"):
            dest = root / package / f.relative_to(stdlib / package)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(f.read_bytes())
    return [str(root)]


def environment(device: torch.device) -> list[str]:
    lines = [f"torch {torch.__version__}, device {device}"]
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        lines.append(
            f"  {p.name}, {p.total_memory / GB:.0f} GB, compute capability {p.major}.{p.minor}"
        )
    lines.append(f"  native bf16: {native_bf16(device)}")
    return lines


def stages(work: Path, corpus: list[str], device: str, steps: int) -> list[tuple[str, Callable]]:
    """(name, run) of the smoke stages, in order (each later one reads what the earlier ones
    wrote); run() returns an exit status, as the CLI does."""
    sets = [f"{k}={v}" for k, v in TOY.items()] + [f"steps={steps}", "eval_every=10"]
    sets += ["checkpoint_every=10", "density=0.25"]
    train = ["train", "--preset", "smoke", "--data", *corpus, "--quiet", "--device", device]
    m32, m16 = str(work / "fp32"), str(work / "bf16")
    commands = [
        ("train fp32", [*train, "--out", m32, "--set", *sets, "precision=fp32"]),
        ("train bf16", [*train, "--out", m16, "--set", *sets, "precision=bf16"]),
        ("train --resume", [*train, "--out", m32, "--resume", "--set", *sets, "precision=fp32"]),
        ("eval", ["eval", m16, "--device", device]),
        ("sample", ["sample", m16, "--max-new-tokens", "20", "--device", device]),
        (
            "prune",
            # a toy model is at chance: a target above chance lets every stage run
            ["prune", m32, "--task", "single_double_quote", "--target-loss", "5", "--steps"]
            + [str(steps), "--allow-trivial", "--out", str(work / "circuit"), "--quiet"]
            + ["--device", device],
        ),
        (
            "activations",
            ["activations", m32, m16, "--out", str(work / "act"), "-n", "8", "--pairs", "8"]
            + ["--device", device],
        ),
        (
            "modularity",
            ["modularity", m32, "--out", str(work / "mod"), "--tasks", "quote_bracket"]
            + ["--regimes", "pretrained,random", "--base-seeds", "1", "--finetune-seeds", "1"]
            + ["--mask-seeds", "1", "--finetune-steps", str(steps), "--mask-steps", str(steps)]
            + ["--quiet", "--device", device],
        ),
    ]
    again = work / "bf16_again"
    retrain = [*train, "--out", str(again), "--set", *sets, "precision=bf16"]
    return [(name, partial(cli, argv)) for name, argv in commands] + [
        ("same seed", partial(same_seed, retrain, Path(m16), again)),
        ("study", partial(toy_study, work, corpus, device, steps)),
        ("fused kernel", partial(fused_kernel, torch.device(device))),
    ]


def same_seed(argv: list[str], first: Path, again: Path) -> int:
    """The bf16 toy trained again with the same seed must give bit-identical weights (train()
    asks for deterministic kernels: on CUDA strictly, with cuBLAS's deterministic workspace;
    every later stage runs in that mode too); 0 as the CLI's exit status, or raises naming
    how far apart they are."""
    if cli(argv) != 0:
        return 1
    a, b = load(first)[0].state_dict(), load(again)[0].state_dict()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    if differ:
        worst = max(float((a[k] - b[k]).abs().max()) for k in differ)
        raise AssertionError(f"{len(differ)} of {len(a)} tensors differ (max |diff| {worst:.3g})")
    return 0


def toy_study(work: Path, corpus: list[str], device: str, steps: int) -> int:
    """A study of two toy models (dense and sparse, one task), then its legibility pass (on
    the CPU, as the CLI runs it); 0 as the CLI's exit status (errors raise)."""
    cfg = StudyConfig(
        preset="gpu_check",
        base_preset="smoke",
        train_overrides=dict(TOY, data=corpus, steps=steps, eval_every=10, checkpoint_every=10),
        base_width=64,
        densities=[0.25],
        fixed_l0_density=0.25,
        l0_widths=[64],
        dense_widths=[64],
        tasks=["single_double_quote"],
        seeds=1,
        target_loss=5.0,
        min_accuracy=0.0,
        k_coefs=[1e-3],
        prune=dict(steps=steps, n_train=32, n_test=32, refuse_trivial=False),
    )
    run_study(cfg, work / "study", progress=False, device=device)
    add_legibility(work / "study", progress=False)
    return 0


def fused_kernel(device: torch.device) -> int:
    """The quick preset's forward and backward with SDPA held to the fused kernel the model
    is written for (CUDA: memory-efficient, the one that takes a mask; CPU: flash), in bf16
    where native and in fp32: SDPA raises instead of falling back to its math kernel, which
    materialises every score, if the padded head widths (model.SDPA_WIDTH_MULTIPLE) do not
    suit it. 0 as the CLI's exit status (errors raise)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = (
        SDPBackend.EFFICIENT_ATTENTION if device.type == "cuda" else SDPBackend.FLASH_ATTENTION
    )
    mcfg, _ = resolve("quick", None, {})
    torch.manual_seed(0)
    model = SparseGPT(mcfg).to(device)
    tokens = torch.randint(0, mcfg.vocab_size, (4, mcfg.n_ctx + 1), device=device)
    for bf16 in (True, False) if native_bf16(device) else (False,):
        with sdpa_kernel(backend), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            model(tokens, return_type="loss").backward()
            model(tokens[:, :-1], positions=torch.full((4,), 5, device=device))  # one query
    return 0


def _last_line() -> str:
    """The exception being handled, as its traceback's last line (type: message)."""
    return traceback.format_exc().strip().splitlines()[-1]


def run_stage(name: str, run: Callable[[], int]) -> dict:
    """One stage's outcome, {stage, ok, seconds[, error]}, printed as it ends; a broken stage
    is recorded and does not stop the ones after it."""
    t = time.perf_counter()
    try:
        rc = run()
        error = None if rc == 0 else f"exit status {rc} (its error line is above)"
    except Exception:  # the report says which stage broke and how, then goes on
        error = _last_line()
    row = {"stage": name, "ok": error is None, "seconds": time.perf_counter() - t}
    if error:
        row["error"] = error
    print(_stage_line(row), flush=True)
    return row


def preset_training(work: Path, corpus: list[str], device: str, preset: str, steps: int):
    """(name, run) of a short training of the preset through the CLI on the toy corpus (its
    data loading, evals and a checkpoint at the preset's own shape and batch), then the
    checkpoint read back and evaluated."""
    out = str(work / f"train_{preset}")
    sets = [f"steps={steps}", f"eval_every={steps}", f"checkpoint_every={steps}", "save_every=0"]
    train = ["train", "--preset", preset, "--data", *corpus, "--out", out, "--quiet"]
    return [
        (f"{preset} train", partial(cli, [*train, "--device", device, "--set", *sets])),
        (f"{preset} eval", partial(cli, ["eval", out, "--device", device])),
    ]


def preset_step(device: torch.device, preset: str, precision: str, steps: int) -> dict:
    """Tokens/s (median of `steps` timed steps after two warm-up steps) and peak memory of
    the preset's training step at its own batch, past the anneal."""
    mcfg, tcfg = resolve(preset, None, {"precision": precision})
    torch.manual_seed(0)
    model = SparseGPT(mcfg).to(device)
    opt = make_optimizer(model, tcfg)
    sparsifier = WeightSparsifier(model, tcfg)
    tokens = torch.randint(0, mcfg.vocab_size, (tcfg.batch_size, mcfg.n_ctx + 1), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(2 + steps):
        t = time.perf_counter()
        train_step(model, opt, sparsifier, tokens, tcfg.steps - 1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated(device) / GB if device.type == "cuda" else None
    step_s = statistics.median(times)
    return {
        "preset": preset,
        "precision": precision,
        "batch": tcfg.batch_size,
        "params": model.num_params(),
        "step_s": step_s,
        "tokens_per_s": tcfg.batch_size * mcfg.n_ctx / step_s,
        "peak_gb": peak,
    }


def _timed_step(device: torch.device, preset: str, precision: str, steps: int) -> dict:
    try:
        return preset_step(device, preset, precision, steps)
    except Exception:  # out of memory, say: recorded, and the next one still runs
        return {"preset": preset, "precision": precision, "error": _last_line()}


def _step_line(s: dict, steps: int) -> str:
    if "error" in s:
        return f"  {s['precision']}: FAILED: {s['error']}"
    peak = "n/a (CPU)" if s["peak_gb"] is None else f"{s['peak_gb']:.1f} GB"
    return (
        f"  {s['precision']}: {s['tokens_per_s']:,.0f} tokens/s ({s['step_s']:.3f} s/step,"
        f" batch {s['batch']}, median of {steps}), peak memory {peak},"
        f" {s['params']:,} parameters"
    )


def _stage_line(r: dict) -> str:
    outcome = "ok" if r["ok"] else "FAILED: " + r["error"]
    return f"  {r['stage']:15s} {outcome}  ({r['seconds']:.1f} s)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--toy-steps", type=int, default=20, help="training and mask steps (toys)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per preset (0: none)")
    ap.add_argument("--presets", default="paper,quick", help="presets whose training step is timed")
    ap.add_argument(
        "--train-steps", type=int, default=20, help="steps of each preset's short CLI training"
    )
    ap.add_argument("--no-save", action="store_true", help="print only (the dry-run test)")
    args = ap.parse_args()
    device = pick_device(args.device)
    lines = environment(device)
    print("\n".join(lines), flush=True)
    lines.append("\n== every command on the device, toy sizes ==")
    print(lines[-1], flush=True)
    rows, steps = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["SPARSECIRCUITS_CACHE"] = str(work / "cache")  # the process is ours
        corpus = write_corpus(work / "corpus")
        rows += [run_stage(*stage) for stage in stages(work, corpus, str(device), args.toy_steps)]
        lines += [_stage_line(r) for r in rows]
        for preset in args.presets.split(",") if args.steps else []:
            lines.append(f"\n== {preset} preset, training step at its own batch ==")
            print(lines[-1], flush=True)
            for precision in PRECISIONS:
                steps.append(_timed_step(device, preset, precision, args.steps))
                lines.append(_step_line(steps[-1], args.steps))
                print(lines[-1], flush=True)
            for stage in preset_training(work, corpus, str(device), preset, args.train_steps):
                rows.append(run_stage(*stage))
                lines.append(_stage_line(rows[-1]))
    failed = [r["stage"] for r in rows if not r["ok"]]
    lines.append(f"\n{len(rows) - len(failed)} of {len(rows)} stages ran on {device}")
    failed += [f"{s['preset']} {s['precision']}" for s in steps if "error" in s]
    print(lines[-1])
    if not args.no_save:
        save_results("gpu_check", lines, {"device": str(device), "smoke": rows, "steps": steps})
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
