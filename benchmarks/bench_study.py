"""Wall time and peak memory of `sparsecircuits study --preset quick` on this machine,
split into training and pruning, against the targets (<= 15 minutes, <= 4 GB).

    python benchmarks/bench_study.py [--preset quick] [--jobs N] [--keep-cache]

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

sys.path.insert(0, str(Path(__file__).parent))
from results import save_results  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--keep-cache", action="store_true")
    ap.add_argument("--jobs", type=int, default=1, help="passed to the study (make demo: 2)")
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
                "--jobs",
                str(args.jobs),
            ],
            env=env,
            check=True,
        )
        wall = time.perf_counter() - t
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
        timing = json.loads((out / "results.json").read_text())["timing"]
    lines = [
        f"study --preset {args.preset} --jobs {args.jobs}: {wall / 60:.1f} min wall (target <= 15), "
        f"peak {peak_gb:.2f} GB (target <= 4)",
        f"  training {timing['train_seconds'] / 60:.1f} min, pruning + analysis "
        f"{timing['prune_seconds'] / 60:.1f} min, legibility and report the rest",
        f"  wall / target: {wall / 900:.2f}, memory / target: {peak_gb / 4:.2f}",
    ]
    print("\n".join(lines))
    data = {"args": vars(args), "wall_seconds": wall, "peak_gb": peak_gb, "timing": timing}
    save_results(f"bench_study_{args.preset}", lines, data)


if __name__ == "__main__":
    main()
