"""circuit.json keeps its bytes: a file written before the metrics became typed records
(tests/data/circuit_v1.json, made by `planted_search` below from the code of a0c1015) loads,
saves back byte for byte, and a search today writes the same keys in the same order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsecircuits.circuit import Circuit
from sparsecircuits.circuit_metrics import CircuitMetrics, EvalMetrics, RawMetrics
from sparsecircuits.nodes import compute_node_means, node_sites
from sparsecircuits.planted import SOFT, planted_batch, planted_model
from sparsecircuits.prune import find_circuit
from sparsecircuits.prune_methods import PruneConfig

FIXTURE = Path(__file__).parent / "data" / "circuit_v1.json"

pytestmark = pytest.mark.usefixtures("one_thread")


def planted_search() -> Circuit:
    """A small search on the planted model that fills every field circuit.json has: a grid
    of two settings, selection pairs, a forbidden node, random circuits, examples."""
    model = planted_model(SOFT).requires_grad_(False)
    windows = [planted_batch(64, 100 + i).tokens for i in range(2)]
    means = compute_node_means(model, windows, node_sites(model.cfg), progress=False)
    cfg = PruneConfig(
        method="masks",
        target_loss=0.15,
        steps=100,
        random_draws=2,
        effect_nodes=3,
        example_pairs=1,
    )
    return find_circuit(
        model,
        planted_batch(32, 1),
        planted_batch(16, 2),
        means,
        cfg,
        False,
        "planted",
        token_text=lambda i: f"<{i}>",
        k_coefs=[1e-3, 1e-2],
        select_b=planted_batch(16, 3),
        forbidden={"blocks.0.attn.hook_v[3]"},
    )


def shape(obj):
    """Keys in order and the JSON type of every value, values left out."""
    if isinstance(obj, dict):
        return [(k, shape(v)) for k, v in obj.items()]
    if isinstance(obj, list):
        return [shape(v) for v in obj[:1]]
    return type(obj).__name__


def test_a_circuit_json_from_before_loads_and_saves_back_byte_for_byte(tmp_path):
    Circuit.load(FIXTURE).save(tmp_path / "circuit.json")
    assert (tmp_path / "circuit.json").read_bytes() == FIXTURE.read_bytes()


def test_a_search_writes_the_keys_it_wrote_before_in_the_same_order(tmp_path):
    c = planted_search()
    c.save(tmp_path / "circuit.json")
    now, before = (json.loads(p.read_text()) for p in (tmp_path / "circuit.json", FIXTURE))
    assert shape(now) == shape(before)
    assert [n["name"] for n in now["nodes"]] == [n["name"] for n in before["nodes"]]


def test_the_metrics_load_as_typed_records():
    m = Circuit.load(FIXTURE).metrics
    assert isinstance(m, CircuitMetrics) and isinstance(m.circuit, EvalMetrics)
    assert type(m.ablated) is RawMetrics  # measured uncalibrated: no calibrated keys
    assert m.validation.status == "ok" and m.validation.split == "select"
    assert [g.k_coef for g in m.grid] == [1e-3, 1e-2] and m.forbidden == ["blocks.0.attn.hook_v[3]"]
    assert m.empty.train_loss_calibrated > m.full_train_loss_calibrated


def test_nulls_and_absent_keys_survive_a_round_trip():
    """A single test pair (no standard error), no random draws, nothing forbidden: null
    values stay null and the forbidden key stays absent."""
    d = json.loads(FIXTURE.read_text())["metrics"]
    del d["forbidden"]
    d["circuit"]["loss_se"] = None
    d["random"] = {k: 0 if k == "draws" else None for k in d["random"]}
    assert CircuitMetrics.from_json(d).to_json() == d
    assert json.dumps(CircuitMetrics.from_json(d).to_json()) == json.dumps(d)  # key order


def test_a_circuit_json_of_an_older_shape_loads_and_saves_back_as_written(tmp_path):
    """Metrics as an early version wrote them (no validation, grid or standard errors; NaN
    where one random draw has no spread): kept as JSON, untyped, not refused."""
    old = json.loads(FIXTURE.read_text())
    old["metrics"] = {
        "full": {"loss": 0.1, "accuracy": 1.0, "loss_calibrated": 0.09},
        "ablated": {"loss": 2.5, "accuracy": 0.4},
        "random": {"draws": 1, "loss_mean": 1.9, "loss_std": float("nan")},
    }
    (tmp_path / "old.json").write_text(json.dumps(old, indent=2) + "\n")
    c = Circuit.load(tmp_path / "old.json")
    assert c.metrics["random"]["draws"] == 1 and [n.name for n in c.nodes]
    c.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "old.json").read_bytes()


def test_a_circuit_built_by_hand_keeps_its_empty_metrics(tmp_path):
    c = Circuit("t", "masks", 0.1, [], [], 10, {}, {})
    assert json.loads(c.save(tmp_path / "c.json").read_text())["metrics"] == {}
    assert Circuit.load(tmp_path / "c.json").metrics == {}


if __name__ == "__main__":  # how the fixture was made
    c = planted_search()
    c.seconds = 0.0  # the one field that differs from run to run
    c.save(FIXTURE)
