"""Data-parallel training under torchrun reproduces a single process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import tiny_configs
from sparsecircuits.checkpoint import load_tensors
from sparsecircuits.config import config_to_dict
from sparsecircuits.train import train


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path, corpus_dir):
    # Adam's eps as in every preset (0.1), not tiny: with eps 1e-8 an update is ~lr * sign(g),
    # so a float-rounding difference in a near-zero gradient (the two halves' average vs the
    # whole batch, summed in another order on another CPU) flips a whole step, and 8 steps
    # of that drifted apart by 0.02 nats on an AVX2 machine. With eps 0.1 rounding stays
    # rounding (~1e-9 here), while a wrong gradient still shows: twice the true gradient (a
    # sum instead of a mean) moved the unembedding by 0.025 over these 8 steps.
    m, t = tiny_configs(
        corpus_dir,
        steps=8,
        batch_size=8,
        checkpoint_every=4,
        density=0.25,
        anneal_frac=0.5,
        eps=0.1,
    )
    single = train(m, t, tmp_path / "single", progress=False)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(config_to_dict(m, t)))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "sparsecircuits",
        "train",
        "--config",
        str(cfg),
        "--out",
        str(tmp_path / "ddp"),
        "--device",
        "cpu",
        "--quiet",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_tensors(single / "model.safetensors")
    b = load_tensors(tmp_path / "ddp" / "model.safetensors")
    for k in a:
        same_support = (a[k] != 0) == (b[k] != 0)
        assert same_support.float().mean() > 0.99, k
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    rows_a = [json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows_a) == len(rows_b) == 8
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], abs=1e-4)
