"""The documentation runs as written: every code block of the tutorial (docs/tutorial.md) is
executed on a smoke-sized model, and README.md's quickstart quotes only commands and code
the tutorial runs. The site itself is built by `make docs` (mkdocs build --strict)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from conftest import write_quote_task
from sparsecircuits import cli
from study_fixture import tiny_study_config

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "tutorial.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)

# What makes the tutorial smoke-sized: each (text in the tutorial -> text the test runs)
# must occur in it, so an edit that drops one fails here instead of running a real-sized
# model. The smoke model is at chance, so its circuit is searched at a target above chance.
SMOKE = "vocab_size=300 n_ctx=128 d_model=32 n_layer=1 steps=12 batch_size=4 eval_every=6 eval_batches=1 checkpoint_every=6"
PRUNE = "--target-loss 10 --allow-trivial --steps 5 --n-train 4 --n-test 4"
SHELL = [
    ("--preset quick --out runs/first", f"--preset smoke --set {SMOKE} DATA --out runs/first"),
    ("--target-loss 0.8", PRUNE),
    ("--jobs 2", "--jobs 1"),  # one process: the study's config below is patched in this one
]
PYTHON = [
    ('sc.resolve("quick")', f'sc.resolve("smoke", None, [*"{SMOKE}".split(), DATA])'),
    (
        "PruneConfig(target_loss=0.8)",
        "PruneConfig(target_loss=10, refuse_trivial=False, steps=5, n_train=4, n_test=4)",
    ),
]


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def commands(code: str) -> list[list[str]]:
    """The command lines of a bash block, comments dropped."""
    return [shlex.split(ln, comments=True) for ln in code.splitlines() if ln.split("#")[0].strip()]


def smoke(code: str, swaps: list[tuple[str, str]], data: str) -> str:
    for old, new in swaps:
        code = code.replace(old, new.replace("DATA", data))
    return code


def test_the_tutorial_runs_as_written(tmp_path, monkeypatch, corpus_dir, capsys):
    text = TUTORIAL.read_text()
    blocks = code_blocks(text)
    langs = [lang for lang, _ in blocks]
    assert set(langs) == {"bash", "python"}, f"every block is bash or python: {langs}"
    for old, _ in SHELL + PYTHON:
        assert old in text, f"the test's smoke swap {old!r} no longer matches docs/tutorial.md"

    monkeypatch.chdir(tmp_path)
    task = write_quote_task(tmp_path / "quotes.jsonl")
    # The study: the tutorial's command line, with a family of smoke-sized models.
    import sparsecircuits.study as study

    asked = []

    def tiny(preset, *args, **kwargs):
        asked.append(preset)
        return tiny_study_config(corpus_dir, task, steps=4, every=2)

    monkeypatch.setattr(study, "study_config", tiny)
    served = []
    monkeypatch.setattr(cli, "serve", lambda d, port=None, open_browser=False: served.append(d))

    ran = []
    for lang, code in blocks:
        if lang == "bash":
            for argv in commands(smoke(code, SHELL, f"'data=[\"{corpus_dir}\"]'")):
                assert argv[0] == "sparsecircuits", f"not a sparsecircuits command: {argv}"
                assert cli.main(argv[1:]) == 0, f"failed: {shlex.join(argv)}"
                ran.append(argv[1])
        else:
            source = smoke(code, PYTHON, f"'data=[\"{corpus_dir}\"]'")
            exec(compile(source, str(TUTORIAL), "exec"), {"__name__": "tutorial"})
            ran.append("python")
    assert ran == ["train", "prune", "explain", "study", "view", "python"]
    assert asked == ["quick"] and served == ["runs/demo"]
    assert (tmp_path / "runs/first/circuits/quote/circuit.json").exists()
    assert (tmp_path / "runs/demo/report.html").exists()
    assert (tmp_path / "runs/first-py/circuits/quote/circuit.json").exists()


def test_the_readme_quickstart_is_the_tutorial():
    """README's quickstart is runnable because the tutorial test runs the same lines."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Quickstart")
    section = readme[start : readme.index("\n## ", start + 1)]
    blocks = code_blocks(section)
    assert {lang for lang, _ in blocks} == {"bash", "python"}
    tutorial = TUTORIAL.read_text()
    ran = {" ".join(a) for lang, c in code_blocks(tutorial) if lang == "bash" for a in commands(c)}
    tutorial_code = "\n".join(c for lang, c in code_blocks(tutorial) if lang == "python")
    for lang, code in blocks:
        if lang == "bash":
            for argv in commands(code):
                assert " ".join(argv) in ran, f"README runs what the tutorial does not: {argv}"
        else:
            for line in code.splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    assert line.split("  #")[0].rstrip() in tutorial_code, line


def test_readme_links_point_at_files():
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if "://" not in t]
    assert local, "README links into the docs"
    for t in local:
        assert (ROOT / t).exists(), f"README links to a missing file: {t}"


def test_every_public_name_is_in_the_api_reference():
    import sparsecircuits

    api = (ROOT / "docs" / "api.md").read_text()
    # `sparsecircuits.train` is also a module, so its function is named by its module path
    documented = set(re.findall(r"^::: sparsecircuits\.(?:\w+\.)?(\w+)$", api, re.M))
    assert documented == set(sparsecircuits.__all__)


def imports_between_modules(package: Path) -> dict[str, set[str]]:
    """Which top-level module (a subpackage counts as one) of the package imports which,
    from the source: relative and absolute imports, at the top or inside functions."""
    import ast

    def unit(parts: list[str]) -> str | None:
        if not parts:
            return None
        name = parts[0]
        found = (package / name).is_dir() or (package / f"{name}.py").is_file()
        return name if found else None

    edges: dict[str, set[str]] = {}
    for f in sorted(package.rglob("*.py")):
        parts = list(f.relative_to(package).with_suffix("").parts)
        me = parts[0]
        edges.setdefault(me, set())
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                inside = parts[:-1][: len(parts) - node.level]
                mod = inside + (node.module.split(".") if node.module else [])
            elif (node.module or "").split(".")[0] == package.name:
                mod = node.module.split(".")[1:]
            else:
                continue
            names = [mod] if mod else [[a.name] for a in node.names]
            for target in filter(None, (unit(n) for n in names)):
                if target != me:
                    edges[me].add(target)
    return edges


def test_the_layer_map_in_contributing_matches_the_imports():
    text = (ROOT / "CONTRIBUTING.md").read_text()
    block = text.split("<!-- layer map: checked by tests/test_docs.py -->", 1)[1]
    layers = {}
    for line in block.split("```")[1].strip().splitlines():
        head, _, names = line.partition(":")
        for name in names.split(","):
            layers[name.strip()] = int(head.split()[1])
    edges = imports_between_modules(ROOT / "src" / "sparsecircuits")
    assert set(layers) == set(edges), "CONTRIBUTING.md's layer map lists every module once"
    upward = [
        f"{a} (layer {layers[a]}) imports {b} (layer {layers[b]})"
        for a, targets in edges.items()
        for b in targets
        if layers[b] >= layers[a]
    ]
    assert not upward, "update CONTRIBUTING.md's layer map or the import: " + "; ".join(upward)


def test_the_frontier_picture_reads_the_standard_study_summary(tmp_path):
    """docs/images/frontier.png is drawn by benchmarks/readme_figures.py from the summary the
    docs quote: its tables must still parse into one point per model."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "readme_figures", ROOT / "benchmarks" / "readme_figures.py"
    )
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    summary = ROOT / "benchmarks" / "results" / "study_standard.md"
    rows = figures.frontier_from_summary(summary.read_text())
    assert rows and all(r["roles"] for r in rows)
    assert {"dense", "density", "l0"} <= {role for r in rows for role in r["roles"]}
    assert sum(r["geomean_edges"] is not None for r in rows) >= len(rows) // 2
    out = figures.draw_frontier(summary, tmp_path / "frontier.png")
    assert out.stat().st_size > 10_000 and (ROOT / "docs" / "images" / "frontier.png").exists()
