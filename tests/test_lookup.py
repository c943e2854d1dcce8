"""Lookup memory vs circuits (study/lookup.py): the family with and without the bigram
table, and the per-seed paired comparison."""

from __future__ import annotations

import math

import pytest

from sparsecircuits.study import model_specs, study_config
from sparsecircuits.study.config import model_configs
from sparsecircuits.study.lookup import compare, lookup_family
from sparsecircuits.study_results import StudyResults
from study_fixture import circuit_row, eligibility_row, model_row


def test_the_family_is_two_models_per_seed_with_or_without_the_table():
    base = study_config("standard")
    for bigram in (True, False):
        cfg = lookup_family(base, bigram, 3)
        specs = model_specs(cfg)
        assert sorted((s.kind, s.d_model, s.seed) for s in specs) == sorted(
            (k, 64, s) for k in ("dense", "sparse") for s in range(3)
        )
        assert all(model_configs(cfg, s)[0].bigram_table is bigram for s in specs)
        assert not cfg.controls and cfg.protocol is None


def _results(loss_shift: float, edges: dict, trivial: set) -> StudyResults:
    models, circuits, elig = [], [], []
    for kind in ("dense", "sparse"):
        for seed in (0, 1, 2):
            mid = f"{kind}_s{seed}"
            loss = 3.4 + loss_shift + 0.01 * seed
            models.append(model_row(mid, kind, seed, total_params=100, heldout_loss=loss))
            for task in ("a", "b"):
                elig.append(eligibility_row(mid, task, trivial=task in trivial))
                e = edges[task] * (2 if kind == "sparse" else 1)
                circuits.append(circuit_row(mid, task, n_edges=e, n_nodes=e // 2))
    return StudyResults(models=models, circuits=circuits, frontier=[], answer={}, eligibility=elig)


def test_the_comparison_is_paired_by_seed():
    with_table = _results(0.0, {"a": 100, "b": 100}, trivial={"b"})
    without = _results(0.05, {"a": 200, "b": 100}, trivial=set())
    cmp = compare(with_table, without)
    for kind in ("dense", "sparse"):
        c = cmp[kind]
        assert c["seeds"] == [0, 1, 2] and c["heldout_loss"]["df"] == 2
        assert c["heldout_loss"]["value"] == pytest.approx(0.05)
        # b needs a node once the table is gone: one more task reached, one fewer trivial
        assert c["tasks_reached"]["value"] == 1 and c["tasks_trivial"]["value"] == -1
        assert c["with"]["trivial_tasks"] == ["b"] and c["without"]["trivial_tasks"] == []
        # edges double on a, stay on b: the geometric mean over tasks is sqrt(2)
        assert c["edges_ratio"]["value"] == pytest.approx(math.sqrt(2))
