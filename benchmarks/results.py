"""Benchmark results as files: each benchmark that README quotes writes
`benchmarks/results/NAME.json` (the numbers) and `NAME.md` (what it printed, with the
machine and date), and `update_readme.py` pastes each NAME.md between the README's
`<!-- begin: NAME -->` and `<!-- end: NAME -->` markers. So README numbers are regenerated
by running the benchmark, never typed."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def cpu_name() -> str:
    """The CPU's name and the vector units torch uses on it: two machines of this project
    both named "AMD EPYC" (one AVX2, one AVX-512 with native bf16) gave different speed-ups."""
    import torch

    from sparsecircuits.train import native_bf16

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    bf16 = native_bf16(torch.device("cpu"))
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}{', bf16' if bf16 else ''}"


def save_results(name: str, lines: list[str], data: dict) -> None:
    """Write NAME.json and NAME.md atomically (a killed benchmark leaves the old ones)."""
    RESULTS.mkdir(exist_ok=True)
    command = " ".join(["python", "benchmarks/" + Path(sys.argv[0]).name, *sys.argv[1:]])
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    md = (
        f"Measured by `{command}` on {stamp} ({os.cpu_count()} CPUs, {cpu_name()}):\n\n"
        "```\n" + "\n".join(lines).strip("\n") + "\n```\n"
    )
    for suffix, text in ((".md", md), (".json", json.dumps(data, indent=1, default=str))):
        tmp = RESULTS / f".{name}{suffix}.tmp"
        tmp.write_text(text)
        os.replace(tmp, RESULTS / f"{name}{suffix}")
    print(f"\nwrote {RESULTS / name}.md and .json (python benchmarks/update_readme.py pastes it)")
