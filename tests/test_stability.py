"""Circuit stability (sparsecircuits.stability) on ground truth: the planted model, whose
one minimal circuit is known (tests/test_planted.py), and a planted model with a backup
path (a second head doing the same thing through its own channels)."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch

from sparsecircuits.errors import UserError
from sparsecircuits.nodes import compute_node_means, node_sites
from sparsecircuits.planted import (
    D_MODEL,
    KEY_SCORE,
    QUERIES,
    SOFT,
    A,
    B,
    X,
    Y,
    planted_batch,
    planted_model,
)
from sparsecircuits.prune import TargetUnreachable, find_circuit
from sparsecircuits.prune_methods import Problem, PruneConfig
from sparsecircuits.stability import Setup, StabilityConfig, analyse, sets
from study_fixture import circuit_row, model_row
from test_planted import PLANTED, TARGET, planted

COPY_A = PLANTED
# The backup copy: head 1 reads its own key sign (5), key marker (6) and query marker (8)
# channels and writes its own answer channel (9), which the unembedding reads as X - Y.
COPY_B = {
    "blocks.0.ln1.hook_normalized[5]",
    "blocks.0.ln1.hook_normalized[6]",
    "blocks.0.ln1.hook_normalized[8]",
    "blocks.0.attn.hook_q[2]",
    "blocks.0.attn.hook_k[2]",
    "blocks.0.attn.hook_v[2]",
    "blocks.0.hook_attn_out[9]",
}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def backup_model():
    """The planted model with its distractors removed and a second copy of the mechanism:
    either copy alone does the task (as the planted head alone does), so there are two
    minimal circuits, disjoint, and no node every working circuit needs."""
    m = planted_model(SOFT)
    with torch.no_grad():
        emb = m.embed.weight
        emb[:, 5] = 0.0  # no filler feature: channel 5 is the copy's key sign
        emb[A, 5], emb[B, 5] = 1.0, -1.0
        emb[[A, B], 6] = 1.0
        emb[list(QUERIES), 8] = 1.0
        emb[:, 0] = 0.0
        emb[:, 0] = (D_MODEL - emb.pow(2).sum(1)).sqrt()  # every embedding norm sqrt(d)
        attn = m.blocks[0].attn
        for w in (attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight):
            w[2:].zero_()
        attn.o_proj.weight[:, 2:].zero_()
        gain = math.sqrt(KEY_SCORE * math.sqrt(m.cfg.d_head))
        attn.q_proj.weight[2, 8] = gain
        attn.k_proj.weight[2, 6] = gain
        attn.v_proj.weight[2, 5] = 1.0
        attn.o_proj.weight[9, 2] = 1.0
        attn.sink_logit.copy_(torch.tensor([SOFT, SOFT]))
        m.blocks[0].mlp.fc_in.weight.zero_()
        m.blocks[0].mlp.fc_out.weight.zero_()
        W_U = m.unembed.weight
        W_U[:, [6, 8, 9]] = 0.0
        W_U[X, 9], W_U[Y, 9] = 6.0, -6.0
    return m.eval().requires_grad_(False)


@functools.cache
def backup_setup() -> Setup:
    m = backup_model()
    windows = [planted_batch(64, 100 + i).tokens for i in range(2)]
    means = compute_node_means(m, windows, node_sites(m.cfg), progress=False)
    return _setup(m, means)


def _cfg(**kw) -> PruneConfig:
    # 100 mask steps (test_planted trains 300): every planted search of these tests still
    # lands on its exact circuit, at a third of the time
    return PruneConfig(
        target_loss=TARGET, steps=100, random_draws=0, effect_nodes=0, example_pairs=0, **kw
    )


def _setup(model, means) -> Setup:
    return Setup(
        model,
        means,
        planted_batch(64, 1),
        planted_batch(64, 2),
        None,
        _cfg(),
        "planted",
        "planted",
        train_pairs=lambda seed: planted_batch(64, 1000 + seed),
    )


def test_set_measures():
    a, b, c = {"x", "y"}, {"x", "y", "z"}, {"x"}
    assert sets.jaccard(a, b) == pytest.approx(2 / 3)
    assert sets.jaccard(set(), set()) == 1.0
    pj = sets.pairwise_jaccard([a, b, c])
    assert (
        pj["pairs"] == 3 and pj["min"] == pytest.approx(1 / 3) and pj["max"] == pytest.approx(2 / 3)
    )
    assert pj["mean"] == pytest.approx((2 / 3 + 1 / 2 + 1 / 3) / 3)
    assert sets.core([a, b, c]) == {"x"} and sets.union([a, b, c]) == {"x", "y", "z"}
    assert sets.frequency([a, b, c]) == {"x": 1.0, "y": 2 / 3, "z": 1 / 3}
    assert list(sets.frequency([a, b, c])) == ["x", "y", "z"]  # most frequent first
    assert sets.most_kept([a, b, c]) == "x"
    assert sets.most_kept([a, b, c], exclude={"x"}) == "y"
    assert sets.most_kept([set()]) is None


def test_forbidden_nodes_stay_mean_ablated():
    p = planted(SOFT)
    q0 = "blocks.0.attn.hook_q[0]"
    allowed = {s.hook: torch.ones(s.width) for s in p.sites}
    allowed["blocks.0.attn.hook_q"][0] = 0.0
    free = Problem(p.model, p.sites, p.means, p.test)
    held = Problem(p.model, p.sites, p.means, p.test, allowed)
    ones = free.full_masks(1.0)
    without = {h: m.clone() for h, m in ones.items()}
    without["blocks.0.attn.hook_q"][0] = 0.0
    assert torch.allclose(held.logits(ones), free.logits(without))
    assert not torch.allclose(free.logits(ones), free.logits(without))
    assert held.n_allowed() == free.n_allowed() - 1
    # a planted node forbidden: the model without it cannot reach the target
    with pytest.raises(TargetUnreachable):
        find_circuit(p.model, p.train, p.test, p.means, _cfg(), progress=False, forbidden={q0})
    with pytest.raises(UserError, match="not a node of this model"):
        find_circuit(
            p.model, p.train, p.test, p.means, _cfg(), False, forbidden={"blocks.0.attn.hook_q[99]"}
        )


def test_planted_circuit_is_the_core_across_search_and_pair_seeds():
    p = planted(SOFT)
    setup = _setup(p.model, p.means)
    result = analyse(setup, StabilityConfig(runs=5, backup=False))
    for rs, varies in ((result.search, "search_seed"), (result.pairs, "pair_seed")):
        assert rs.varies == varies and rs.n_ok == 5
        assert rs.node_jaccard["mean"] == 1.0 and rs.node_jaccard["min"] == 1.0
        assert rs.edge_jaccard["min"] == 1.0
        assert set(rs.core) == PLANTED == set(rs.union)
        assert set(rs.frequency) == PLANTED and set(rs.frequency.values()) == {1.0}
        assert rs.core_metrics["loss_calibrated"] < TARGET and rs.core_metrics["within_target"]
        assert rs.union_metrics["loss_calibrated"] < TARGET
    # each set varies exactly one seed
    assert len({r.search_seed for r in result.search.runs}) == 5
    assert {r.pair_seed for r in result.search.runs} == {0}
    assert {r.search_seed for r in result.pairs.runs} == {0}
    assert len({r.pair_seed for r in result.pairs.runs}) == 5
    # the runs' circuits have the planted head's edges, the same in every run
    assert ["blocks.0.attn.hook_v[0]", "blocks.0.hook_attn_out[4]"] in result.search.runs[0].edges


def test_backup_search_finds_the_second_copy_and_no_core():
    setup = backup_setup()
    result = analyse(setup, StabilityConfig(runs=2, backup_runs=1, max_rounds=4))
    first = [set(r.nodes) for r in result.search.runs if r.ok]
    assert first and all(s >= COPY_A for s in first)  # the first copy, found every time
    b = result.backup
    assert b.rounds[0].forbidden_node in COPY_A
    found = [set(r.nodes) for r in b.rounds[0].runs.runs if r.ok]
    assert found == [COPY_B]  # with the first copy broken, the backup copy is the circuit
    assert b.rounds[1].forbidden_node in COPY_B and not b.rounds[1].reached
    assert b.stopped == "unreachable" and len(b.rounds) == 2
    assert b.forbidden == [b.rounds[0].forbidden_node, b.rounds[1].forbidden_node]
    assert b.core == []  # two disjoint circuits: no node every working circuit needs
    assert b.distinct >= 2


def test_records_round_trip(tmp_path):
    from sparsecircuits.stability import SearchRun, Stability, StabilityResults
    from sparsecircuits.stability.repeat import run_set

    setup = backup_setup()
    runs = [SearchRun(0, 0, "ok", sorted(COPY_A)), SearchRun(1, 0, "unreachable")]
    rs = run_set(setup, "search_seed", runs, measure_losses=False)
    st = Stability("m", None, "planted", TARGET, {}, 40, rs, None, None)
    res = StabilityResults(setup={}, entries=[st.to_json()], comparison={}, verdict="", seconds=0)
    res.save(tmp_path / "s.json")
    back = StabilityResults.load(tmp_path / "s.json").stabilities()[0]
    assert back.search.runs[1].status == "unreachable" and back.search.core == sorted(COPY_A)
    assert back == st


def _fake_study(root) -> str:
    """A study folder with two pretraining seeds of two dense and two sparse models, whose
    held-out losses overlap, and a validated frontier circuit of each on one task."""
    import json

    models, circuits = [], []
    losses = {"w32_dense": 3.0, "w64_dense": 2.6, "w64_d0.5": 2.95, "w64_d0.25": 2.65}
    for seed in (0, 1):
        for cfg_id, loss in losses.items():
            dense = "dense" in cfg_id
            mid = f"{cfg_id}_s{seed}"
            kind = "dense" if dense else "sparse"
            roles = ["dense"] if dense else ["density"]
            models.append(model_row(mid, kind, seed, heldout_loss=loss + 0.01 * seed, roles=roles))
            circuits.append(circuit_row(mid, "var_if", k_coef=0.01, mask_lr=0.05))
    circuits.append(circuit_row("w64_dense_s0", "for_while", "unreachable"))
    results = {
        "models": [m.to_json() for m in models],
        "circuits": [c.to_json() for c in circuits],
        "frontier": [],
        "answer": {},
        "study": {"preset": "quick", "config": {"seeds": 2}},
        "schema_version": 2,
    }
    (root / "results.json").write_text(json.dumps(results))
    return str(root)


def _fake_stability(model_dir, task, cfg, pcfg, model_id=None, device="cpu"):
    """What `one` returns, without searching: sparse circuits agree more across seeds."""
    from sparsecircuits.stability import RunSet, SearchRun, Stability

    model_id = model_id or Path(model_dir).name
    sparse = "_d0." in model_id
    shared = {f"n{i}" for i in range(6 if sparse else 2)}
    runs = [
        SearchRun(s, 0, "ok", sorted(shared | {f"x{s}_{i}" for i in range(2 + int(model_id[-1]))}))
        for s in range(cfg.runs)
    ]
    from sparsecircuits.stability.repeat import run_set

    setup = backup_setup()
    rs: RunSet = run_set(setup, "search_seed", runs, measure_losses=False)
    return Stability(str(model_dir), model_id, task, pcfg.target_loss, {}, 100, rs, None, None)


def test_cli_stability_over_a_study_compares_dense_and_sparse(tmp_path, monkeypatch, capsys):
    import json

    import sparsecircuits.stability.run as run_mod
    from sparsecircuits.cli import main
    from sparsecircuits.stability import StabilityResults

    calls = []

    def fake(*a, **kw):
        calls.append(a[4] if len(a) > 4 else kw.get("model_id"))
        return _fake_stability(*a, **kw)

    monkeypatch.setattr(run_mod, "one", fake)
    study = _fake_study(tmp_path)
    assert main(["stability", "--study", study, "--runs", "3", "--quiet"]) == 0
    assert len(calls) == 8  # every validated frontier circuit, not the unreachable one
    res = StabilityResults.load(tmp_path / "stability" / "stability.json")
    points = res.comparison["measures"]["search_node_jaccard"]["matched"]["points"]
    assert points and all(p["estimate"]["n"] == 2 for p in points)
    assert all(p["estimate"]["low"] > 0 for p in points)  # sparse higher, in both seeds
    assert res.verdict.startswith("Sparse circuits are more stable than dense ones")
    section = json.loads((tmp_path / "stability" / "section.json").read_text())
    assert section["title"].startswith("Circuit stability") and res.verdict in section["paragraphs"]
    assert "more stable" in capsys.readouterr().out
    assert (tmp_path / "report.html").is_file()
    # a second call resumes: nothing is searched again
    assert main(["stability", "--study", study, "--runs", "3", "--quiet"]) == 0
    assert len(calls) == 8
    capsys.readouterr()
    assert main(["stability", "m", "--study", study]) == 2
    assert "not both" in capsys.readouterr().err
    # one model: its sets and backup, no comparison
    out = tmp_path / "one"
    argv = ["stability", str(tmp_path / "w64_d0.5_s1"), "--task", "var_if", "--out", str(out)]
    assert main(argv + ["--runs", "4", "--k-coef", "0.02"]) == 0
    one = StabilityResults.load(out / "stability.json")
    assert len(calls) == 9 and one.comparison == {} and one.verdict.startswith("one model")
    assert one.setup["config"]["runs"] == 4 and one.setup["config"]["prune"]["k_coef"] == 0.02
    assert "var_if, search_seed: node Jaccard" in capsys.readouterr().out
    assert (out / "section.json").is_file()


def test_viewer_sizes_nodes_by_repeat_run_frequency_and_rings_the_core(tmp_path):
    """The report's circuit viewer reads the stability section's node frequencies."""
    import json

    from sparsecircuits import report
    from sparsecircuits.stability import RunSet, SearchRun, Stability, StabilityResults
    from sparsecircuits.stability.section import write_report_section
    from study_fixture import SMALL, write_fake_study
    from test_report import CHROMIUM, circuit_row, page_data

    pw = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("no chromium")
    study = write_fake_study(tmp_path / "study")
    data = json.loads((study / "results.json").read_text())
    row = next(c for c in data["circuits"] if (c["model"], c["task"]) == SMALL)
    names = [n["name"] for n in json.loads((study / row["path"]).read_text())["nodes"]]
    core, rest = names[:3], names[3:]
    runs = [SearchRun(s, 0, "ok", core + rest[s::2]) for s in range(2)]
    rs = RunSet("search_seed", runs, 2, None, None, core, names, {}, [0, 0])
    rs.frequency = {n: 1.0 for n in core} | {n: 0.5 for n in rest}
    st = Stability("m", SMALL[0], SMALL[1], 0.3, {}, 100, rs, None, None)
    res = StabilityResults({"config": {"runs": 2}}, [st.to_json()], {}, "v", 1.0)
    (study / "stability").mkdir()
    write_report_section(res, study / "stability")
    page_html = report.build_report(study)
    i, _ = circuit_row(page_data(page_html.read_text()), SMALL)
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        page = b.new_page(viewport={"width": 1400, "height": 1000})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_html.as_uri())
        page.select_option("#circuit-select", str(i))
        assert page.locator("#stability-control").is_visible()
        assert page.locator("circle.node.core").count() == len(core)
        r_core = float(page.get_attribute(f'circle.node[data-node="{core[0]}"]', "r"))
        r_half = float(page.get_attribute(f'circle.node[data-node="{rest[0]}"]', "r"))
        assert r_half < r_core
        page.hover(f'circle.node[data-node="{core[0]}"]')
        assert "kept by 2 of 2 searches (other seeds): core" in page.text_content("#panel")
        page.uncheck("#by-stability")  # back to plain circles
        assert page.locator("circle.node.core").count() == 0
        b.close()
    assert not errors


@pytest.mark.parametrize("variant", ["renamed", "wrapped"])
def test_rephrasings_keep_every_built_in_task_rule(variant):
    """Each surface variant changes the prompts of every built-in task, keeps the pairs'
    answers apart, and can be undone: renaming is a bijection on names applied to prompts
    and answers alike; wrapping only puts one line of code before both prompts of a pair."""
    from sparsecircuits.stability.rephrase import _renamer, _renaming, rephrase
    from sparsecircuits.tasks import TASKS, get_task

    undo = _renamer(_renaming(-1))
    for name in TASKS:
        task = get_task(name, 16, 16, 0)
        r = rephrase(task, variant)
        assert r.name == f"{name} ({variant})"
        assert len(r.train) == len(task.train) and len(r.test) == len(task.test)
        changed = 0
        for p, q in zip(task.train + task.test, r.train + r.test, strict=True):
            assert q.answer_a != q.answer_b
            if variant == "renamed":
                back = [undo(x) for x in (q.prompt_a, q.prompt_b, q.answer_a, q.answer_b)]
                assert back == [p.prompt_a, p.prompt_b, p.answer_a, p.answer_b]
            else:
                head = q.prompt_a[: len(q.prompt_a) - len(p.prompt_a)]
                assert head and q.prompt_a == head + p.prompt_a and q.prompt_b == head + p.prompt_b
                assert (q.answer_a, q.answer_b) == (p.answer_a, p.answer_b)
            changed += q.prompt_a != p.prompt_a
        assert changed >= len(task.train + task.test) // 2, name
    with pytest.raises(UserError, match="unknown rephrasing"):
        rephrase(get_task("for_while", 2, 2, 0), "shouted")
