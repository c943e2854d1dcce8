"""README and documentation numbers come from results files a command regenerates
(sparsecircuits.benchmarking.save_results): every block between markers in README.md and docs/ equals its
results file (benchmarks/update_readme.py pastes them), and each lives on one page."""

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


def test_answer_excerpt_is_the_answer_and_its_trends(tmp_path):
    (tmp_path / "study.md").write_text(
        "### Study\n\n**Answer.** 1.2x (95% interval 0.9-1.5x).\n\n"
        "- at fixed held-out losses: 3.4: 1.1x\n"
        "- per halving of density, 0.5x\n- tasks: a, b\n- per doubling of width, 0.7x\n\n"
        "#### Models\n\n| a |\n"
    )
    page = "<!-- begin: study#answer -->\n<!-- end: study#answer -->\n"
    out = _updater().regenerate(page, tmp_path)
    assert out == (
        "<!-- begin: study#answer -->\n**Answer.** 1.2x (95% interval 0.9-1.5x).\n\n"
        "- at fixed held-out losses: 3.4: 1.1x\n"
        "- per halving of density, 0.5x\n- per doubling of width, 0.7x\n"
        "<!-- end: study#answer -->\n"
    )
    # an end marker must name the same excerpt
    mixed = "<!-- begin: study#answer -->\nold\n<!-- end: study -->\n"
    assert _updater().regenerate(mixed, tmp_path) == mixed
    (tmp_path / "plain.md").write_text("no answer here\n")
    with pytest.raises(SystemExit, match="no \\*\\*Answer"):
        _updater().regenerate(page.replace("study", "plain"), tmp_path)


def test_every_page_matches_the_results_files():
    updater = _updater()
    pages = updater.pages()
    assert ROOT / "README.md" in pages and ROOT / "docs" / "performance.md" in pages
    for path in pages:
        text = path.read_text()
        regenerated = updater.regenerate(text, ROOT / "benchmarks" / "results")
        assert regenerated == text, f"{path}: run python benchmarks/update_readme.py"


def test_every_block_lives_on_one_page_and_every_results_file_is_quoted():
    updater = _updater()
    seen: dict[str, str] = {}
    text = ""
    for path in updater.pages():
        page = path.read_text()
        text += page
        for name in updater.blocks(page):
            assert name not in seen, f"block {name} on {seen[name]} and {path.name}"
            seen[name] = path.name
    assert "study_standard#answer" in seen and seen["study_standard#answer"] == "README.md"
    for source in sorted((ROOT / "benchmarks" / "results").glob("*.md")):
        # a results file is pasted as a block, or an earlier run a page names by its path
        assert source.stem in seen or f"benchmarks/results/{source.name}" in text, source.name


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
