"""The benchmarks use the package as a user would (issue 34): no script edits `sys.path`,
imports from `tests/` or from a sibling script, or patches the package; each runs as
`python -m benchmarks.NAME` and as `python benchmarks/NAME.py`; results files keep their
header; and the baseline bench_train.py times against, `fused.reference()`, gives the
default path's numbers through other code."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparsecircuits import fused
from sparsecircuits.benchmarking import StepRunner, results_folder, save_results
from sparsecircuits.config import ModelConfig, TrainConfig
from sparsecircuits.model import SparseGPT, abs_topk
from sparsecircuits.nodes import node_sites
from sparsecircuits.prune_methods.base import Problem
from sparsecircuits.sparsity import topk_mask
from sparsecircuits.tasks import TaskBatch
from sparsecircuits.train import make_optimizer

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "__init__")
# what a script could import only through a sys.path edit (`benchmarks.X` only from the
# repository's root), or from the test suite
LOCAL = {p.stem for p in BENCH.iterdir()} | {p.stem for p in (ROOT / "tests").iterdir()}
LOCAL |= {"tests", "benchmarks"}


def _called(node: ast.AST) -> str | None:
    """The name a call calls (`f` of `f(...)` and of `m.f(...)`), None for anything else."""
    if not isinstance(node, ast.Call):
        return None
    return getattr(node.func, "id", None) or getattr(node.func, "attr", None)


def reaching_inside(text: str) -> list[str]:
    """What in a script's source edits sys.path, imports a local script or a test module
    (or any module by name), or sets an attribute of something imported from
    sparsecircuits (a patch)."""
    out = ["edits sys.path"] if "sys.path" in text else []
    package_names: set[str] = set()  # names bound to sparsecircuits modules or objects
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                out += [f"imports {a.name}"] if top in LOCAL else []
                if top == "sparsecircuits":
                    package_names.add(a.asname or top)
        elif isinstance(node, ast.ImportFrom):
            top = (node.module or "").split(".")[0]
            if node.level or top in LOCAL:
                out.append(f"imports from {'.' * node.level}{node.module or ''}")
            if top == "sparsecircuits":
                package_names |= {a.asname or a.name for a in node.names}
        elif _called(node) in ("import_module", "__import__"):
            out.append("imports a module by name")  # a way around the checks here
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Call) and _called(node) in ("setattr", "delattr"):
            targets = [ast.Attribute(value=node.args[0], attr="?")] if node.args else []
        flat = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
        for t in flat:
            root = t
            while isinstance(root, ast.Attribute):
                root = root.value
            if t is not root and isinstance(root, ast.Name) and root.id in package_names:
                out.append(f"patches {ast.unparse(t)}")
    return out


@pytest.mark.parametrize(
    "source",
    [
        "import sys\nsys.path.insert(0, 'benchmarks')",
        "from results import save_results",
        "from benchmarks.bench_train import Runner",
        "from bench_train import Runner",
        "from tests.test_explain import KNOWN",
        "from test_explain import KNOWN",
        "from conftest import write_quote_task",
        "import importlib\nm = importlib.import_module('sparsecircuits.train')",
        "import sparsecircuits.model as model_module\nmodel_module.abs_topk = print",
        "from sparsecircuits.prune_methods import Problem\nProblem.logits = print",
        "from sparsecircuits import fused\nfused.ENABLED = False",
        "from sparsecircuits import fused\nsetattr(fused, 'ENABLED', False)",
        "import sparsecircuits.sparsity as s, sparsecircuits.train as t\n"
        "s.topk_mask, t.make_optimizer = print, print",
    ],
)
def test_the_check_finds_each_way_of_reaching_inside(source):
    assert reaching_inside(source)


@pytest.mark.parametrize("name", SCRIPTS)
def test_no_benchmark_edits_sys_path_imports_tests_or_patches_the_package(name):
    assert reaching_inside((BENCH / f"{name}.py").read_text()) == [], name


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_every_benchmark_runs_as_a_module_of_the_benchmarks_package():
    """Each script's `--help` through runpy as `python -m benchmarks.NAME` runs it (one
    process for all of them: each pays torch's import once)."""
    code = (
        "import runpy, sys\n"
        f"for name in {SCRIPTS!r}:\n"
        "    sys.argv = [name, '--help']\n"
        "    try:\n"
        "        runpy.run_module('benchmarks.' + name, run_name='__main__', alter_sys=True)\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), (name, e.code)\n"
        "    else:\n"
        "        raise AssertionError(name + ': --help did not exit')\n"
        "    print('ran', name)\n"
    )
    p = _run([sys.executable, "-c", code], ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert [line for line in p.stdout.splitlines() if line.startswith("ran ")] == [
        f"ran {name}" for name in SCRIPTS
    ]


@pytest.mark.parametrize("form", ["module", "script"])
def test_a_benchmark_starts_both_ways(form, tmp_path):
    """bench_wide.py borrowed from bench_train.py through sys.path: both command forms work
    without it (the script form from another folder)."""
    if form == "module":
        p = _run([sys.executable, "-m", "benchmarks.bench_wide", "--help"], ROOT)
    else:
        p = _run([sys.executable, str(BENCH / "bench_wide.py"), "--help"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "--widths" in p.stdout


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
    # lines with a fence of their own would break the block they are put in
    with pytest.raises(ValueError, match="no ``` fences"):
        save_results("y", ["```", "table", "```"], {}, folder=tmp_path)
    assert not (tmp_path / "y.md").exists()


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


def test_reference_task_passes_run_the_padding_too():
    """A circuit search's task pass hands the model the tokens up to the batch's longest
    prompt; the baseline ran the padding after it too, and gives the same logits."""
    torch.manual_seed(0)
    model = SparseGPT(ModelConfig(vocab_size=40, n_ctx=12, d_model=32, n_layer=2)).eval()
    sites = node_sites(model.cfg)
    means = {s.hook: torch.randn(s.width) for s in sites}
    batch = TaskBatch(  # right-padded to 12, the longest prompt ends at position 6
        torch.randint(0, 40, (4, 12)),
        torch.tensor([6, 3, 5, 2]),
        torch.randint(0, 40, (4,)),
        torch.randint(0, 40, (4,)),
    )
    problem = Problem(model, sites, means, batch)
    masks = problem.full_masks(1.0)
    lengths: list[int] = []
    model.blocks[0].attn.hook_q.add_hook(lambda act, hook: lengths.append(act.shape[1]))
    with torch.no_grad():
        fast = problem.logits(masks)
        with fused.reference():
            slow = problem.logits(masks)
    assert lengths == [7, 12]
    assert torch.allclose(fast, slow, atol=1e-5)
