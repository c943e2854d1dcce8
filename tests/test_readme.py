"""README numbers come from results files a command regenerates (benchmarks/results.py)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _benchmark(name: str):
    """A script of benchmarks/ loaded as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _updater():
    return _benchmark("update_readme")


def test_blocks_are_replaced_from_their_results_file(tmp_path):
    (tmp_path / "speed.md").write_text("new numbers\n")
    readme = "intro\n<!-- begin: speed -->\nold typed numbers\n<!-- end: speed -->\nrest\n"
    out = _updater().regenerate(readme, tmp_path)
    assert out == "intro\n<!-- begin: speed -->\nnew numbers\n<!-- end: speed -->\nrest\n"
    with pytest.raises(SystemExit, match="missing"):
        _updater().regenerate(readme.replace("speed", "missing"), tmp_path)


def test_readme_matches_the_results_files():
    readme = (ROOT / "README.md").read_text()
    regenerated = _updater().regenerate(readme, ROOT / "benchmarks" / "results")
    assert regenerated == readme, "run: python benchmarks/update_readme.py"


def test_prune_schedule_pairs_sizes_by_case_and_seed_with_an_interval():
    def run(nodes, edges, seconds=10.0):
        return {"status": "ok", "n_nodes": nodes, "n_edges": edges, "seconds": seconds}

    unreachable = {"status": "unreachable", "seconds": 10.0}
    rows = [
        {
            "case": "a",
            "schedules": {
                "as set": [run(40, 100), run(42, 100), run(44, 100), run(50, 120)],
                "half": [run(41, 110, 5), run(42, 90, 5), run(43, 100, 5), unreachable],
            },
        }
    ]
    lines = _benchmark("prune_schedule").compare_schedules(rows)
    # nodes +1, 0, -1 (sd 1, t 4.303 over 3 pairs); edges +10%, -10%, 0% (sd 10)
    assert " ".join(lines[0].split()) == "half validated 3 of 4; time 0.50x"
    assert "mean +0.0 [95% t-interval -2.5, +2.5] over 3 pairs" in lines[1]
    assert "larger in 1, smaller in 1, equal in 1" in lines[1]
    assert "mean +0.0% [95% t-interval -24.8, +24.8]" in lines[2]
