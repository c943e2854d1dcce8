"""What the benchmarks share, from the package (issue 34): results files keep their header,
and the baseline bench_train.py times against, `fused.reference()`, gives the default
path's numbers through other code."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from sparsecircuits import fused
from sparsecircuits.benchmarking import StepRunner, results_folder, save_results
from sparsecircuits.config import ModelConfig, TrainConfig
from sparsecircuits.model import SparseGPT, abs_topk
from sparsecircuits.sparsity import topk_mask
from sparsecircuits.train import make_optimizer

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def test_results_files_keep_their_header_and_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(BENCH / "bench_wide.py"), "--widths", "64"])
    assert results_folder() == BENCH / "results"
    save_results("x", ["line 1", "line 2"], {"a": 1}, folder=tmp_path)
    md = (tmp_path / "x.md").read_text()
    header = re.compile(
        r"Measured by `python benchmarks/\S+\.py[^`]*` on \d{4}-\d\d-\d\d \(\d+ CPUs, .+\):"
    )
    # the header of a results file written before the helpers moved into the package
    assert header.fullmatch((BENCH / "results" / "bench_train.md").read_text().splitlines()[0])
    first, *rest = md.splitlines()
    assert header.fullmatch(first) and "`python benchmarks/bench_wide.py --widths 64`" in first
    assert rest == ["", "```", "line 1", "line 2", "```"]
    assert (tmp_path / "x.json").read_text() == '{\n "a": 1\n}'


# ---- fused.reference(): the baseline ----------------------------------------------------


def test_reference_runs_the_reference_code():
    """Ties at the k-th largest magnitude tell the two apart: the thresholds keep every tied
    entry, top-k indices exactly k."""
    x = torch.tensor([[3.0, -3.0, 3.0, 1.0]])  # k = 2 of 4, three tied at |3|
    w = torch.tensor([[2.0, 2.0], [2.0, 1.0]])  # k = 2 of 4 at density 0.5
    model = SparseGPT(ModelConfig(vocab_size=61, n_ctx=12, d_model=32, n_layer=2))
    cfg = TrainConfig()
    tokens = torch.randint(0, 61, (3, 12), generator=torch.Generator().manual_seed(0))
    where = torch.tensor([11, 4, 7])
    seen: list[tuple[int, ...]] = []

    def shape(act, hook):
        seen.append(tuple(act.shape))

    def last_block_query():
        seen.clear()
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_q", shape)], positions=where)
        return seen[0][1]

    assert int((abs_topk(x, 0.5) != 0).sum()) == 3
    assert int(topk_mask(w, 0.5).sum()) == 3
    assert make_optimizer(model, cfg).defaults["fused"] is True
    assert last_block_query() == 1  # only the positions read
    with fused.reference():
        assert fused.REFERENCE and not fused.ENABLED  # plain() too
        assert int((abs_topk(x, 0.5) != 0).sum()) == 2
        assert int(topk_mask(w, 0.5).sum()) == 2
        assert not make_optimizer(model, cfg).defaults["fused"]
        assert last_block_query() == 12  # every position
    assert fused.ENABLED and not fused.REFERENCE


def test_reference_step_gives_the_default_steps_numbers():
    """Three training steps (AbsTopK, the weight projection, AdamW, the loss) and a task
    pass at positions, both ways, from one init and batch: the same losses and weights."""
    sizes = dict(vocab_size=300, n_ctx=16, d_model=32, n_layer=2, batch_size=4)
    sizes |= dict(lr_final_frac=0.5)  # a learning rate above 0 at the step the runner takes
    # AdamW's first steps move each weight by ~lr * g / (|g| + eps): at eps 1e-8 a gradient
    # near 0, rounded differently by the two paths, flips between +lr and -lr
    sizes |= dict(eps=1e-3)
    init = StepRunner("smoke", **sizes).model.state_dict()
    runs = {ref: StepRunner("smoke", reference=ref, **sizes) for ref in (False, True)}
    losses = {ref: [float(r.take_step()) for _ in range(3)] for ref, r in runs.items()}
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)
    default, reference = (runs[ref].model.state_dict() for ref in (False, True))
    moved = max(float((default[n] - init[n]).abs().max()) for n in init)
    assert moved > 1e-3  # the steps changed the weights: the comparison below means something
    for name in default:
        assert torch.allclose(default[name], reference[name], atol=1e-5), name
    tokens, where = runs[False].batch[:, :16], torch.tensor([15, 3, 9, 0])
    model = runs[False].model
    fast = model(tokens, positions=where)
    with fused.reference():
        slow = model(tokens, positions=where)
    assert fast.shape == slow.shape == (4, 300)
    assert torch.allclose(fast, slow, atol=1e-5)
