import math

import pytest
import torch

from sparsecircuits.activations import (
    effective_rank,
    frac_above,
    frac_zero,
    hoyer,
    sparsity_metrics,
    topk_energy,
)

ONE_HOT = torch.tensor([0.0] * 19 + [3.0])
FLAT = torch.full((20,), -2.0)


def test_extremes():
    assert topk_energy(ONE_HOT, 0.05) == 1.0
    assert topk_energy(FLAT, 0.10) == pytest.approx(0.10)  # 2 of 20 equal entries
    assert effective_rank(ONE_HOT) == pytest.approx(1 / 20)
    assert effective_rank(FLAT) == pytest.approx(1.0)
    assert hoyer(ONE_HOT) == pytest.approx(1.0) and hoyer(FLAT) == pytest.approx(0.0, abs=1e-12)
    assert frac_zero(ONE_HOT) == pytest.approx(19 / 20) and frac_zero(FLAT) == 0
    assert frac_above(ONE_HOT) == pytest.approx(1 / 20) and frac_above(FLAT) == 0


def test_hand_computed_vector():
    h = torch.tensor([3.0, -1.0, 1.0, 1.0])  # energies 9, 1, 1, 1
    assert topk_energy(h, 0.25) == pytest.approx(9 / 12)
    p = torch.tensor([9, 1, 1, 1]) / 12
    assert effective_rank(h) == pytest.approx(math.exp(float(-(p * p.log()).sum())) / 4)
    assert hoyer(h) == pytest.approx((2 - 6 / math.sqrt(12)) / (2 - 1))


def test_zero_vector_is_nan_and_shapes_broadcast():
    z = torch.zeros(2, 3, 8)
    m = sparsity_metrics(z)
    assert all(v.shape == (2, 3) for v in m.values())
    assert torch.isnan(m["top10_energy"]).all() and torch.isnan(m["hoyer"]).all()
    assert (m["frac_zero"] == 1).all()


def test_sparser_vectors_score_sparser():
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(100, 64, generator=g)
    sparse = dense * (torch.rand(100, 64, generator=g) < 0.1)
    d, s = sparsity_metrics(dense), sparsity_metrics(sparse)
    assert s["top10_energy"].nanmean() > d["top10_energy"].mean()
    assert s["effective_rank"].nanmean() < d["effective_rank"].mean()
    assert s["hoyer"].nanmean() > d["hoyer"].mean()


def test_conditions_and_text_edits(corpus_dir):
    from sparsecircuits.activations import condition_windows, rename_identifiers, shuffle_lines
    from sparsecircuits.corpus import prepare

    src = "def total(items):\n    return len(items) + count\n"
    renamed = rename_identifiers(src)
    assert "def " in renamed and "return len(" in renamed  # keywords and builtins stay
    assert "total" not in renamed and renamed.count(renamed.split("(")[1].split(")")[0]) == 2
    assert sorted(shuffle_lines(src, 1).split("\n")) == sorted(src.split("\n"))
    data = prepare([str(corpus_dir)], 300, 0.1)
    w = condition_windows(data, 4, 16)
    assert set(w) == {
        "train",
        "heldout",
        "renamed_identifiers",
        "shuffled_lines",
        "shuffled_tokens",
        "random_tokens",
    }
    assert all(v.shape == (4, 16) for v in w.values())
    assert sorted(w["shuffled_tokens"][0].tolist()) == sorted(w["heldout"][0].tolist())


def test_bootstrap_interval_contains_the_mean_and_narrows():
    from sparsecircuits.activations import bootstrap_ci

    g = torch.Generator().manual_seed(0)
    small = bootstrap_ci(torch.randn(20, generator=g))
    large = bootstrap_ci(torch.randn(2000, generator=g))
    assert small[1] <= small[0] <= small[2] and large[1] <= large[0] <= large[2]
    assert large[2] - large[1] < small[2] - small[1]


def test_cli_activations_writes_json_and_plot(tmp_path, corpus_dir):
    import json

    from conftest import tiny_configs
    from sparsecircuits import train
    from sparsecircuits.cli import main

    m, t = tiny_configs(corpus_dir, steps=4)
    run = train(m, t, tmp_path / "m", progress=False)
    assert main(["activations", str(run), "--out", str(tmp_path / "a"), "-n", "4"]) == 0
    res = json.loads((tmp_path / "a" / "activations.json").read_text())
    layers = res["models"][0]["conditions"]["heldout"]
    assert list(layers) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert (tmp_path / "a" / "activations.png").stat().st_size > 1000
