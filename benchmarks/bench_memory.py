"""Does the `paper` preset fit one 80 GB GPU? Measured where there is no GPU: the peak
memory of training steps of the paper shape on the CPU at a few small batch sizes, each in
its own process, then a straight line through them (weights, gradients and AdamW moments are
the intercept; activations grow with the batch) read at the preset's batch size. On a GPU,
`--device cuda` measures torch.cuda.max_memory_allocated at the preset's own batch instead.

    python benchmarks/bench_memory.py [--preset paper] [--batches 1,2,4] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from sparsecircuits.benchmarking import save_results
from sparsecircuits.config import resolve
from sparsecircuits.device import pick_device
from sparsecircuits.model import SparseGPT
from sparsecircuits.sparsity import WeightSparsifier
from sparsecircuits.train import make_optimizer, train_step

GB = 1024**3


def one(preset: str, batch: int, device: str, steps: int = 2) -> dict:
    """Peak memory (GB) and seconds per step of `steps` training steps at this batch size."""
    dev = pick_device(device)
    mcfg, tcfg = resolve(preset, None, {"batch_size": batch})
    torch.manual_seed(0)
    model = SparseGPT(mcfg).to(dev)
    opt = make_optimizer(model, tcfg)
    sparsifier = WeightSparsifier(model, tcfg)
    tokens = torch.randint(0, mcfg.vocab_size, (batch, mcfg.n_ctx + 1), device=dev)
    t = time.perf_counter()
    for _ in range(steps):  # past the anneal: the projection at the target density
        train_step(model, opt, sparsifier, tokens, tcfg.steps - 1)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / GB
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB
    return {
        "batch": batch,
        "peak_gb": peak,
        "step_s": (time.perf_counter() - t) / steps,
        "params": model.num_params(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--batches", default="1,2,4", help="CPU: small batch sizes to fit a line")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.preset, args.one, args.device)))
        return
    _, tcfg = resolve(args.preset)
    lines = [f"preset {args.preset}, batch {tcfg.batch_size}, device {args.device}"]
    print(lines[0], flush=True)
    if args.device != "cpu":  # the real thing, at the preset's own batch
        rows = [one(args.preset, tcfg.batch_size, args.device)]
        est = rows[0]["peak_gb"]
        lines.append(
            f"  peak {est:.1f} GB at batch {tcfg.batch_size}, {rows[0]['step_s']:.2f} s/step"
        )
    else:
        rows = []
        for b in (int(x) for x in args.batches.split(",")):
            out = subprocess.run(
                [sys.executable, __file__, "--preset", args.preset, "--one", str(b)],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            lines.append(
                f"  batch {b}: peak {r['peak_gb']:.2f} GB (process), {r['step_s']:.1f} s/step"
            )
            print(lines[-1], flush=True)
        xs = torch.tensor([float(r["batch"]) for r in rows])
        ys = torch.tensor([r["peak_gb"] for r in rows])
        slope = float(((xs - xs.mean()) * (ys - ys.mean())).sum() / ((xs - xs.mean()) ** 2).sum())
        intercept = float(ys.mean() - slope * xs.mean())
        est = intercept + slope * tcfg.batch_size
        lines.append(
            f"  line: {intercept:.2f} GB + {slope:.3f} GB per sequence -> {est:.1f} GB at batch "
            f"{tcfg.batch_size} (an extrapolation from CPU process memory, not a GPU measurement)"
        )
    lines.append(f"  {rows[0]['params']:,} parameters; fits 80 GB: {'yes' if est < 80 else 'no'}")
    print("\n".join(lines[-2:]))
    save_results(
        f"bench_memory_{args.preset}_{args.device}", lines, {"rows": rows, "estimate_gb": est}
    )


if __name__ == "__main__":
    main()
