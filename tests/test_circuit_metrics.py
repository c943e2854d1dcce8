"""circuit.json keeps its bytes: a file written before the metrics became typed records
(tests/data/circuit_v1.json, made by `planted_search` below from the code of a0c1015) loads,
saves back byte for byte, and a search today writes the same keys in the same order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsecircuits.circuit import Circuit
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


if __name__ == "__main__":  # how the fixture was made
    c = planted_search()
    c.seconds = 0.0  # the one field that differs from run to run
    c.save(FIXTURE)
