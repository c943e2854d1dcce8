import pytest
import torch

from sparsecircuits.config import ModelConfig, TrainConfig
from sparsecircuits.model import SparseGPT
from sparsecircuits.sparsity import (
    WeightSparsifier,
    density_report,
    param_kind,
    scheduled_density,
    topk_mask,
)


def test_topk_mask_keeps_exactly_the_largest():
    w = torch.randn(40, 30)
    keep = topk_mask(w, 0.1, min_per_neuron=0)
    k = round(0.1 * w.numel())
    assert int(keep.sum()) == k
    assert w[keep].abs().min() >= w[~keep].abs().max()


def test_topk_mask_reserves_min_per_neuron():
    w = torch.randn(64, 32)
    w[5] *= 1e-6  # a weak neuron that a global top-k would kill
    keep = topk_mask(w, 1 / 64, min_per_neuron=4)
    assert int(keep.sum()) == max(round(w.numel() / 64), 64 * 4)
    assert (keep.sum(dim=1) >= 4).all()
    keep = topk_mask(w, 0.5, min_per_neuron=4)
    assert int(keep.sum()) == round(0.5 * w.numel())
    assert (keep.sum(dim=1) >= 4).all()
    assert keep[5].sum() == 4


def _topk_by_indices(w, density, m):
    """The selection written the plain way (top-k indices), to compare the threshold with."""
    k = max(1, round(density * w.numel()))
    a = w.abs()
    keep = torch.zeros(w.shape, dtype=torch.bool)
    keep.scatter_(1, a.topk(m, dim=1).indices, True)
    a = a.masked_fill(keep, -1.0)
    if k > m * w.shape[0]:
        keep.view(-1)[a.view(-1).topk(k - m * w.shape[0]).indices] = True
    return keep


def test_topk_mask_projects_like_top_k_indices_even_with_exact_zeros():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 64, generator=g)
    w[w.abs() < 0.8] = 0.0  # a sparse matrix after projection, where most entries are 0
    w[7] = 0.0  # a dead row: it has nothing to reserve
    for density in (1 / 64, 1 / 8, 0.5):
        projected = w * topk_mask(w, density, min_per_neuron=4)
        assert torch.equal(projected, w * _topk_by_indices(w, density, 4)), density


def test_topk_mask_dense_is_noop():
    assert topk_mask(torch.randn(4, 4), 1.0) is None


def test_schedule_anneals_linearly_then_holds():
    assert scheduled_density(0.1, 0, 100, 0.5) == 1.0
    assert scheduled_density(0.1, 25, 100, 0.5) == pytest.approx(0.55)
    assert scheduled_density(0.1, 50, 100, 0.5) == 0.1
    assert scheduled_density(0.1, 99, 100, 0.5) == 0.1
    assert scheduled_density(0.1, 0, 100, 0.0) == 0.1


def test_param_kinds():
    model = SparseGPT(
        ModelConfig(vocab_size=50, d_model=32, n_layer=1, final_bias=True, pos_emb=True)
    )
    kinds = {n: param_kind(n) for n, _ in model.named_parameters()}
    assert kinds["bigram"] == "dense"
    assert kinds["blocks.0.attn.sink_logit"] == "dense"
    assert kinds["blocks.0.ln1.w"] == "dense"
    assert kinds["embed.weight"] == kinds["unembed.weight"] == kinds["pos_embed.weight"] == "embed"
    assert kinds["blocks.0.mlp.fc_in.bias"] == kinds["logit_bias"] == "bias"
    assert kinds["blocks.0.attn.q_proj.weight"] == "matrix"


def test_sparsifier_hits_target_per_matrix_and_leaves_dense_parts():
    model = SparseGPT(ModelConfig(vocab_size=64, d_model=64, n_layer=1))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    cfg = TrainConfig(steps=10, density=1 / 16, embed_density=0.5, bias_density=0.25)
    WeightSparsifier(model, cfg).apply(10)
    rows = {r["name"]: r for r in density_report(model)}
    q = rows["blocks.0.attn.q_proj.weight"]
    assert q["nonzero"] == max(round(q["numel"] / 16), 64 * 4)
    fc = rows["blocks.0.mlp.fc_in.weight"]  # 256 x 64: the global budget exceeds the reserve
    assert fc["nonzero"] == round(fc["numel"] / 16)
    assert rows["embed.weight"]["nonzero"] == round(rows["embed.weight"]["numel"] / 2)
    assert rows["blocks.0.mlp.fc_in.bias"]["nonzero"] == round(256 / 4)
    assert rows["bigram"]["density"] == 1.0
    assert rows["blocks.0.ln1.w"]["density"] == 1.0


def test_dense_config_sparsifies_nothing():
    model = SparseGPT(ModelConfig(vocab_size=64, d_model=32, n_layer=1))
    assert WeightSparsifier(model, TrainConfig(density=1.0)).params == []
