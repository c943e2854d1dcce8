"""README numbers come from results files a command regenerates (benchmarks/results.py)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _updater():
    spec = importlib.util.spec_from_file_location(
        "update_readme", ROOT / "benchmarks" / "update_readme.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
