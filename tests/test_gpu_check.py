"""The prepared GPU check (benchmarks/gpu_check.py) runs end to end as a dry run on the CPU,
so a session lent a GPU for a few minutes does not spend them on a broken script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_every_stage_on_the_cpu(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    argv = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu"]
    argv += ["--toy-steps", "6", "--steps", "1", "--presets", "smoke", "--no-save"]
    saved = ROOT / "benchmarks" / "results" / "gpu_check.json"
    before = saved.stat().st_mtime_ns if saved.exists() else None
    p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "13 of 13 stages ran on cpu" in p.stdout  # 11 toy stages, the preset's train, eval
    assert "tokens/s" in p.stdout  # the timed step ran too (here the smoke preset's)
    # a dry run leaves the GPU results file as it was
    assert (saved.stat().st_mtime_ns if saved.exists() else None) == before
