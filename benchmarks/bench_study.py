"""Wall time and peak memory of `sparsecircuits study --preset quick` on this machine,
split into training and pruning, against the targets (<= 15 minutes, <= 4 GB).

    python benchmarks/bench_study.py [--preset quick] [--keep-cache]

Runs in a fresh token/model cache (so every model is really trained) unless --keep-cache.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--keep-cache", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        if not args.keep_cache:
            env["SPARSECIRCUITS_CACHE"] = str(Path(tmp) / "cache")
        out = Path(tmp) / "study"
        t = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "sparsecircuits",
                "study",
                "--preset",
                args.preset,
                "--out",
                str(out),
                "--quiet",
            ],
            env=env,
            check=True,
        )
        wall = time.perf_counter() - t
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
        timing = json.loads((out / "results.json").read_text())["timing"]
    print(
        f"study --preset {args.preset}: {wall / 60:.1f} min wall (target <= 15), peak {peak_gb:.2f} GB (target <= 4)"
    )
    print(
        f"  training {timing['train_seconds'] / 60:.1f} min, pruning + analysis {timing['prune_seconds'] / 60:.1f} min"
    )
    print(f"  wall / target: {wall / 900:.2f}, memory / target: {peak_gb / 4:.2f}")


if __name__ == "__main__":
    main()
