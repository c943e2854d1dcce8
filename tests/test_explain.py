"""Node explanations: the lexical features on known text, and ground truth on the planted
model (its nodes' known features) and its rotated twin (same outputs, mixed bases)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_configs, write_quote_task
from sparsecircuits.circuit import Circuit, Node
from sparsecircuits.cli import main
from sparsecircuits.explain import (
    CACHE_FILE,
    LEGIBLE_AUC,
    LEGIBLE_PR,
    Context,
    direct_tokens,
    explanation_table,
    feature_aucs,
    is_explained,
    legibility,
    make_context,
    node_activations,
)
from sparsecircuits.explain.planted_truth import KNOWN, NAMES, explain_planted
from sparsecircuits.fer import rotate_hidden
from sparsecircuits.nodes import node_sites
from sparsecircuits.planted import planted_batch, planted_model
from sparsecircuits.study_results import StudyResults


def test_planted_nodes_get_their_known_features():
    for node, e in explain_planted(planted_model()).items():
        assert e["feature"] in KNOWN[node] and e["auc"] >= 0.95, (node, e)
        assert e["precision"] == e["recall"] == 1.0


def test_rotated_twin_ground_truth_follows_what_the_rotation_mixes():
    """The ground truth on the rotated twin is what each rotation mixes into a node. The
    planted head's q, k and v have one live channel each (the head's second channel has
    zero weights), so each rotated node is the planted one times a constant: it must keep
    its known feature. The residual reads and the attention output mix all ten residual
    channels, most of them live: they must lose it (kept in 2 of 16 over four rotations; a
    node can still be explained by another feature, since every residual channel here is a
    function of 12 tokens, and one token often sits alone at its extreme)."""
    planted = planted_model()
    acts, _ = node_activations(
        planted,
        [make_context(r.tolist(), NAMES, True) for r in planted_batch(32, 5).tokens],
        ["blocks.0.attn.hook_q[1]", "blocks.0.attn.hook_k[1]", "blocks.0.attn.hook_v[1]"],
    )
    assert float(np.abs(acts).max()) == 0.0  # the partners q, k, v are mixed with: dead
    single = [n for n in KNOWN if ".attn.hook_" in n]
    mixed = [n for n in KNOWN if n not in single]
    kept = {True: 0, False: 0}
    for seed in range(4):
        e = explain_planted(rotate_hidden(planted, seed))
        for node in single:
            assert e[node]["feature"] in KNOWN[node] and is_explained(e[node]), (seed, node)
        for node in mixed:
            kept[e[node]["feature"] in KNOWN[node] and is_explained(e[node])] += 1
    assert kept[True] <= 4 and kept[False] >= 12, kept


def test_precision_and_recall_make_the_criterion_stricter_on_the_rotated_twin():
    # AUC alone still passes mixed residual channels of the rotated twin; the criterion
    # (AUC, precision and recall) explains every planted node and fewer rotated ones.
    assert all(is_explained(e) for e in explain_planted(planted_model()).values())
    rotated = explain_planted(rotate_hidden(planted_model(), 0)).values()
    assert sum(map(is_explained, rotated)) < sum(e["auc"] >= 0.9 for e in rotated)


def test_direct_paths_per_site():
    """Which sites read token embeddings through one weight and which write logits through
    one (v through o_proj, neurons through fc_out): the lists a node's explanation shows."""
    model = planted_model()
    token_text = [str(t) for t in range(model.cfg.vocab_size)]
    got = {
        s.kind: sorted(direct_tokens(model, s, 0, token_text, 2))
        for s in node_sites(model.cfg)
        if s.layer == 0
    }
    inputs, logits, both = ["top_inputs"], ["top_logits"], ["top_inputs", "top_logits"]
    assert got == {
        "attn_in": inputs,
        "attn_q": inputs,
        "attn_k": inputs,
        "attn_v": both,
        "attn_out": logits,
        "mlp_in": inputs,
        "mlp_neuron": both,
        "mlp_out": logits,
    }


def test_auc_with_ties():
    acts = np.array([0.0, 0.0, 1.0, 2.0])
    feats = np.array([[0, 1], [1, 1], [0, 0], [1, 0]], dtype=float)
    assert feature_aucs(acts, feats) == pytest.approx([0.625, 0.0])


def test_lexing_of_a_code_fragment():
    pieces = ["x", " =", " '", "ab", "'", "\n", "def", " f", "(", "a", ",", " [", "b", "]", "):"]
    pieces += ["\n", "    ", "return", " a", "  #", " hi", "\n", "y", " =", ' "', "q"]
    lex = Context(list(range(len(pieces))), pieces, 0).lex
    at = {p: i for i, p in reversed(list(enumerate(pieces)))}
    assert lex.quote[at["ab"]] == "'" and lex.opens[at[" '"]] and lex.closes[at["'"]]
    assert lex.quote[at["q"]] == '"'  # a string still open at the end counts
    assert lex.depth[at["b"]] == 2 and lex.inner[at["b"]] == "["
    assert lex.depth[at["]"]] == 1 and lex.depth[at["):"]] == 0
    assert lex.prev[at[" f"]] == "def" and lex.line_first[at[" a"]] == "return"
    assert lex.comment[at[" hi"]] and lex.seen[at[" a"]] and lex.indent[at["return"]] == 1
    assert lex.kind[at["def"]] == "keyword" and lex.kind[at[" f"]] == "identifier"


def test_legibility_counts_nodes_and_effect(tmp_path):
    nodes = [Node(f"h[{i}]", "attn_q", 0, i, 0.0, 1.0) for i in range(4)]
    c = Circuit("t", "masks", 0.1, nodes, [], 10, {}, {}, node_effects={"h[0]": 3.0, "h[1]": 1.0})
    good = {"auc": 0.95, "precision": 0.92, "recall": 0.97}
    c.explanations = {
        "h[0]": good,
        "h[1]": {"auc": 0.7, "precision": 1.0, "recall": 1.0},
        "h[2]": {"auc": 0.9, "precision": 0.9, "recall": 0.9},
        # a high AUC with a threshold that picks half false hits is not one concept
        "h[3]": {"auc": 0.99, "precision": 0.5, "recall": 1.0},
    }
    back = Circuit.load(c.save(tmp_path / "circuit.json"))
    assert back.explanations == c.explanations
    leg = legibility(back)
    assert leg["node_fraction"] == 0.5 and leg["effect_fraction"] == 0.75


def test_explanation_table_rows():
    e = {
        "feature": "in string '",
        "direction": -1,
        "auc": 0.97,
        "precision": 0.95,
        "recall": 0.91,
        "top_inputs": [["'", 2.0], ["x", 1.0]],
    }
    head, row, const = explanation_table({"a[0]": e, "b[1]": {"feature": None, "auc": None}})
    assert head.split()[:3] == ["node", "best", "feature"]
    assert "in string ' (low)" in row and "0.970" in row and " yes " in row and "'x'" in row
    assert "(constant: no feature)" in const and " no " in const


# ---------- the explain command ----------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, corpus_dir):
    from sparsecircuits import train

    m, t = tiny_configs(corpus_dir)
    return train(m, t, tmp_path_factory.mktemp("explain") / "run", progress=False)


def test_cli_explains_model_nodes_and_caches_them(tiny_run, capsys):
    nodes = ["blocks.0.attn.hook_q[5]", "blocks.1.mlp.hook_post[0]"]
    assert main(["explain", str(tiny_run), "--node", *nodes]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("node") and [ln.split()[0] for ln in lines[1:]] == nodes
    cached = json.loads((tiny_run / CACHE_FILE).read_text())["nodes"]
    assert set(nodes) <= set(cached)
    auc = cached[nodes[0]]["auc"]
    assert f"{auc:.3f}" in lines[1]
    assert len(cached[nodes[0]]["examples"]) == 7 and cached[nodes[0]]["top_inputs"]


def test_cli_explains_a_circuit_into_its_file(tiny_run, tmp_path, capsys):
    task = write_quote_task(tmp_path / "quotes.jsonl")
    names = [
        "blocks.0.ln1.hook_normalized[3]",
        "blocks.0.attn.hook_v[1]",
        "blocks.1.hook_mlp_out[2]",
    ]
    nodes = [Node(n, "attn_q", 0, 0, 0.0, 1.0) for n in names]
    c = Circuit(task, "masks", 0.1, nodes, [], 100, {}, {}, model_dir=str(tiny_run))
    c.node_effects = {names[0]: 0.5}
    path = c.save(tmp_path / "c" / "circuit.json")
    assert main(["explain", str(path)]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in names) and "explained (AUC >= 0.9" in out
    back = Circuit.load(path)
    assert set(back.explanations) == set(names)
    assert sorted(p.name for p in path.parent.iterdir()) == ["circuit.json"]  # no temporaries
    # a circuit is explained on its task's prompts too: the node has more positions
    alone = main(["explain", str(tiny_run), "--node", names[0]])
    assert alone == 0
    cached = json.loads((tiny_run / CACHE_FILE).read_text())["nodes"][names[0]]
    assert back.explanations[names[0]]["positions"] > cached["positions"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--node", "q5"], "not a node name"),
        (["--node", "blocks.0.attn.hook_q[9999]"], "index out of range"),
        (["--node", "blocks.7.attn.hook_q[0]"], "not a node site of this model"),
        ([], "needs --node"),
    ],
)
def test_cli_bad_node_is_one_line(tiny_run, capsys, args, message):
    assert main(["explain", str(tiny_run), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert str(tiny_run) in err


def test_a_circuit_is_explained_on_the_test_pairs_it_was_searched_on(tiny_run, tmp_path):
    """A study draws its prompt pairs from its own pair seed, not its search seed: the
    explanations use that seed's test prompts, and are cached under them."""
    from sparsecircuits import load
    from sparsecircuits.explain import ExplainConfig, checkpoint_contexts, explain_checkpoint
    from sparsecircuits.tasks import get_task

    task = str(write_quote_task(tmp_path / "quotes.jsonl"))
    model, tok = load(tiny_run)
    settings = ExplainConfig(batches=1, batch_size=2)
    prune_cfg = {"seed": 0, "n_train": 8, "n_test": 8}

    want = get_task(task, 8, 8, 3).encode(tok, "test", model.cfg.n_ctx)

    def prompts(seed):
        contexts, _ = checkpoint_contexts(
            tiny_run, model, tok, task, settings, prune_cfg | {"seed": seed}
        )
        return [c.ids for c in contexts[-len(want) :]]

    assert prompts(3) == [
        want.tokens[r, : int(want.last_pos[r]) + 1].tolist() for r in range(len(want))
    ]
    assert prompts(3) != prompts(0)  # the seed draws other test pairs
    node = ["blocks.0.attn.hook_q[5]"]
    explain_checkpoint(tiny_run, node, task, prune_cfg, settings, pair_seed=3)
    key = json.loads((tiny_run / CACHE_FILE).read_text())["key"]
    assert key.endswith("#pairs3/8")
    explain_checkpoint(tiny_run, node, task, prune_cfg, settings)  # the search seed, 0
    assert json.loads((tiny_run / CACHE_FILE).read_text())["key"].endswith("#pairs0/8")


def test_study_legibility_explains_on_the_studys_pair_seed(tmp_path, monkeypatch):
    from sparsecircuits.study import legibility as study_legibility
    from study_fixture import write_fake_study

    study = write_fake_study(tmp_path / "study")
    results = json.loads((study / "results.json").read_text())
    results["study"]["config"] = {**results["study"].get("config", {}), "pair_seed": 3}
    (study / "results.json").write_text(json.dumps(results))
    seeds = []
    monkeypatch.setattr(
        study_legibility,
        "circuit_legibility",
        lambda path, pair_seed=None: seeds.append(pair_seed) or {"error": "not explained"},
    )
    monkeypatch.setattr(study_legibility, "legibility_measures", lambda results: None)
    study_legibility.add_legibility(study, progress=False)
    assert seeds and set(seeds) == {3}


def test_cli_bad_files_are_one_line(tmp_path, capsys):
    broken = tmp_path / "circuit.json"
    broken.write_text('{"nodes": [')
    empty = tmp_path / "empty"
    empty.mkdir()
    for target, extra, message in [
        (tmp_path / "nope.json", [], "no such file or folder"),
        (broken, [], str(broken)),
        (broken, ["--node", "a[0]"], "--node and --task go with a model folder"),
        (empty, ["--node", "blocks.0.attn.hook_q[0]"], "no model.safetensors"),
    ]:
        assert main(["explain", str(target), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err


# ---------- legibility in the study and the report ----------


def test_legibility_dense_vs_sparse_with_intervals():
    import statistics

    from sparsecircuits.study.measures import legibility as study_legibility
    from study_fixture import circuit_row, model_row

    seeds = (0, 1, 2)
    models = [model_row(f"{k}{s}", k, s) for k in ("dense", "sparse") for s in seeds]
    circuits = []
    for task in ("t1", "t2", "t3"):
        for m in models:
            frac = 0.2 if m.kind == "dense" else 0.6 + 0.1 * m.seed
            leg = {"node_fraction": frac, "effect_fraction": None, "criterion": "c"}
            circuits.append(circuit_row(m.id, task, legibility=leg))
    circuits.append(circuit_row("dense0", "t9", "unreachable"))
    circuits.append(circuit_row("dense1", "t1", legibility={"error": "gone"}))
    leg = study_legibility(models, circuits)
    nodes = leg["node_fraction"]
    assert leg["n_circuits"] == 18 and leg["criterion"] == "c"
    assert nodes["dense"]["value"] == pytest.approx(0.2)
    assert nodes["sparse"]["value"] == pytest.approx(0.7)
    # one difference per seed (0.4, 0.5, 0.6): a t-interval with df 2, not over the cells
    diff = nodes["sparse_minus_dense"]
    assert diff["value"] == pytest.approx(0.5) and diff["df"] == 2
    half = 4.303 * statistics.stdev([0.4, 0.5, 0.6]) / 3**0.5
    assert diff["low"] == pytest.approx(0.5 - half) and nodes["verdict"] == "found"
    assert nodes["dense"]["n_seeds"] == 3
    assert leg["effect_fraction"]["dense"] is None
    assert leg["effect_fraction"]["verdict"] == "not measured"


def test_study_legibility_reaches_results_summary_and_report(tmp_path):
    from sparsecircuits import report
    from sparsecircuits.study import add_legibility
    from sparsecircuits.study.summary import legibility_markdown
    from study_fixture import CORRUPT, write_fake_study

    study = write_fake_study(tmp_path / "study")
    add_legibility(study, progress=False)
    results = json.loads((study / "results.json").read_text())
    for row in results["circuits"]:
        if row["status"] != "ok":
            assert "legibility" not in row
        elif (row["model"], row["task"]) == CORRUPT:
            assert "not valid JSON" in row["legibility"]["error"]
        else:  # the stored explanations, counted with the criterion
            stored = json.loads((study / row["path"]).read_text())["explanations"]
            want = sum(map(is_explained, stored.values()))
            assert row["legibility"]["explained_nodes"] == want > 0
    leg = results["measures"]["legibility"]
    explained = [c for c in results["circuits"] if "nodes" in c.get("legibility", {})]
    assert leg["n_circuits"] == len(explained) == 7
    assert results["answer"]["legibility"].startswith("Legibility (AUC >= 0.9")
    rows = StudyResults.load(study / "results.json").circuits
    text = "\n".join(legibility_markdown(leg, rows))
    assert "| nodes |" in text and "not valid JSON" in text
    nothing = legibility_markdown(leg | {"n_circuits": 0, "criterion": None}, [])
    assert "No validated circuit" in "\n".join(nothing) and "None" not in "\n".join(nothing)
    data = report._page_data(study)
    assert data["legibility"] == leg and data["legible"]["auc"] == LEGIBLE_AUC
    view = next(c["view"] for c in data["circuits"] if c["view"])
    assert len(view["explanations"]) == len(view["nodes"]["name"])


def test_study_legibility_keeps_circuits_outside_the_frontier_apart(tmp_path):
    from sparsecircuits.study import add_legibility
    from sparsecircuits.study.summary import legibility_markdown
    from sparsecircuits.study_results import CircuitRow
    from study_fixture import TASKS, write_fake_study

    study = write_fake_study(tmp_path / "study")
    path = study / "results.json"
    results = json.loads(path.read_text())
    outside_task = TASKS[-1]
    for row in results["circuits"]:
        row["in_frontier"] = row["task"] != outside_task
    path.write_text(json.dumps(results))
    add_legibility(study, progress=False)
    results = json.loads(path.read_text())
    explained = [c for c in results["circuits"] if "nodes" in c.get("legibility", {})]
    outside = [c for c in explained if c["task"] == outside_task]
    assert 0 < len(outside) < len(explained)
    assert results["measures"]["legibility"]["n_circuits"] == len(explained) - len(outside)
    assert results["measures"]["legibility_outside"]["n_circuits"] == len(outside)
    assert results["answer"]["legibility_outside"].startswith("Outside the frontier")
    rows = [CircuitRow.from_json(c, "a circuit row") for c in outside]
    text = legibility_markdown(results["measures"]["legibility_outside"], rows, "Outside")
    assert text[0] == "## Outside" and sum(c["task"] in row for row in text for c in outside)


def test_report_and_explain_use_one_criterion():
    from sparsecircuits import report

    assert report.LEGIBLE == {"auc": LEGIBLE_AUC, "precision_recall": LEGIBLE_PR}


@pytest.mark.parametrize("skip", [False, True])
def test_study_command_adds_legibility_unless_told_not_to(tmp_path, monkeypatch, capsys, skip):
    from sparsecircuits import study
    from study_fixture import write_fake_study

    out = tmp_path / "study"
    summaries = []

    def fake_run(cfg, out_dir, **kw):  # the study itself is tested in test_study.py
        return StudyResults.load(write_fake_study(Path(out_dir)) / "results.json")

    monkeypatch.setattr(study, "run_study", fake_run)
    monkeypatch.setattr(study, "write_summary", summaries.append)
    assert main(["study", "--out", str(out), "--quiet", *(["--no-legibility"] * skip)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert ("legibility" in results.get("measures", {})) != skip
    assert ("Legibility (AUC" in capsys.readouterr().out) != skip
    assert summaries == ([] if skip else [out])
