import math

import pytest
import torch

from sparsecircuits.activations import (
    effective_rank,
    frac_above,
    frac_zero,
    hoyer,
    sparsity_metrics,
    topk_energy,
)

ONE_HOT = torch.tensor([0.0] * 19 + [3.0])
FLAT = torch.full((20,), -2.0)


def test_extremes():
    assert topk_energy(ONE_HOT, 0.05) == 1.0
    assert topk_energy(FLAT, 0.10) == pytest.approx(0.10)  # 2 of 20 equal entries
    assert effective_rank(ONE_HOT) == pytest.approx(1 / 20)
    assert effective_rank(FLAT) == pytest.approx(1.0)
    assert hoyer(ONE_HOT) == pytest.approx(1.0) and hoyer(FLAT) == pytest.approx(0.0, abs=1e-12)
    assert frac_zero(ONE_HOT) == pytest.approx(19 / 20) and frac_zero(FLAT) == 0
    assert frac_above(ONE_HOT) == pytest.approx(1 / 20) and frac_above(FLAT) == 0


def test_hand_computed_vector():
    h = torch.tensor([3.0, -1.0, 1.0, 1.0])  # energies 9, 1, 1, 1
    assert topk_energy(h, 0.25) == pytest.approx(9 / 12)
    p = torch.tensor([9, 1, 1, 1]) / 12
    assert effective_rank(h) == pytest.approx(math.exp(float(-(p * p.log()).sum())) / 4)
    assert hoyer(h) == pytest.approx((2 - 6 / math.sqrt(12)) / (2 - 1))


def test_zero_vector_is_nan_and_shapes_broadcast():
    z = torch.zeros(2, 3, 8)
    m = sparsity_metrics(z)
    assert all(v.shape == (2, 3) for v in m.values())
    assert torch.isnan(m["top10_energy"]).all() and torch.isnan(m["hoyer"]).all()
    assert (m["frac_zero"] == 1).all()


def test_sparser_vectors_score_sparser():
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(100, 64, generator=g)
    sparse = dense * (torch.rand(100, 64, generator=g) < 0.1)
    d, s = sparsity_metrics(dense), sparsity_metrics(sparse)
    assert s["top10_energy"].nanmean() > d["top10_energy"].mean()
    assert s["effective_rank"].nanmean() < d["effective_rank"].mean()
    assert s["hoyer"].nanmean() > d["hoyer"].mean()


def test_conditions_and_text_edits(corpus_dir):
    from sparsecircuits.activations import condition_windows, rename_identifiers, shuffle_lines
    from sparsecircuits.corpus import prepare

    src = "def total(items):\n    return len(items) + count\n"
    renamed = rename_identifiers(src)
    assert "def " in renamed and "return len(" in renamed  # keywords and builtins stay
    assert "total" not in renamed and renamed.count(renamed.split("(")[1].split(")")[0]) == 2
    assert sorted(shuffle_lines(src, 1).split("\n")) == sorted(src.split("\n"))
    data = prepare([str(corpus_dir)], 300, 0.1)
    w = condition_windows(data, 4, 16)
    # the fixture corpus has no docstrings or comments, so no non-code condition
    assert set(w) == {
        "train",
        "heldout",
        "renamed_identifiers",
        "shuffled_lines",
        "shuffled_tokens",
        "random_tokens",
    }
    assert all(v.shape == (4, 16) for v in w.values())
    assert sorted(w["shuffled_tokens"][0].tolist()) == sorted(w["heldout"][0].tolist())


def test_code_prose_keeps_only_docstrings_and_comments():
    from sparsecircuits.activations import code_prose

    src = (
        '"""Module text."""\n'
        "import os  # why os\n"
        "class A:\n"
        '    """Class text."""\n'
        "    def f(self):\n"
        '        """Function text."""\n'
        "        return os.sep  # the separator\n"
    )
    prose = code_prose(src)
    assert set(prose.split("\n")) == {
        "Module text.",
        "Class text.",
        "Function text.",
        "why os",
        "the separator",
    }
    assert "return" not in prose and "import" not in prose
    assert code_prose("def broken(:\n    # still a comment\n") == "still a comment"


def test_bootstrap_interval_contains_the_mean_and_narrows():
    from sparsecircuits.activations import bootstrap_ci

    g = torch.Generator().manual_seed(0)
    small = bootstrap_ci(torch.randn(20, generator=g))
    large = bootstrap_ci(torch.randn(2000, generator=g))
    assert small[1] <= small[0] <= small[2] and large[1] <= large[0] <= large[2]
    assert large[2] - large[1] < small[2] - small[1]


def test_prose_condition_from_heldout_docstrings(tmp_path):
    from conftest import write_corpus
    from sparsecircuits.activations import condition_windows
    from sparsecircuits.corpus import prepare

    root = write_corpus(tmp_path / "c")
    for f in root.rglob("*.py"):
        f.write_text(PROSE + f.read_text())
    data = prepare([str(root)], 300, 0.1)
    w = condition_windows(data, 4, 16)
    assert list(w)[4] == "non_code_text" and w["non_code_text"].shape == (4, 16)
    text = data.tokenizer.decode(w["non_code_text"][0].tolist())
    assert "def " not in text and " = " not in text


def test_difficulty_axes_grow_harder_and_keep_answers():
    from sparsecircuits.tasks.difficulty import AXES

    for level in AXES["bracket_depth"].levels:
        for p in AXES["bracket_depth"].task(level, 6, 0).test:
            assert (p.answer_a, p.answer_b) == ("]", ")")
            line_a, line_b = p.prompt_a.split("\n")[-1], p.prompt_b.split("\n")[-1]
            assert " = [" in line_a and " = (" in line_b
            # level - 1 nested groups, every one closed again
            inner = line_a.split(" = [", 1)[1]
            assert inner.count("(") + inner.count("[") == level - 1
            assert inner.count(")") + inner.count("]") == level - 1
    for level in AXES["quote_distractors"].levels:
        for p in AXES["quote_distractors"].task(level, 6, 0).test:
            assert (p.answer_a, p.answer_b) == ("'", '"')
            line_a, line_b = p.prompt_a.split("\n")[-1], p.prompt_b.split("\n")[-1]
            assert line_a.count("'") == 1 and line_a.count('"') == 2 * level
            assert line_b.count('"') == 1 and line_b.count("'") == 2 * level
            assert p.prompt_a.split("\n")[:-1] == p.prompt_b.split("\n")[:-1]


def test_effects_and_verdicts():
    from sparsecircuits.activations import combine_seeds, effects, per_input, verdict

    g = torch.Generator().manual_seed(0)
    dense = torch.randn(200, 64, generator=g)

    class Fake:  # a "model" whose only hook holds the given vectors at one position
        def __init__(self, x):
            self.x = x

        def run_with_cache(self, tokens, names_filter):
            return None, {"h": self.x[:, None, :]}

    def vals(x):
        return per_input(Fake(x), torch.zeros(len(x), 1, dtype=torch.long), ["h"])[1]

    sparse = dense * (torch.rand(200, 64, generator=g) < 0.2)
    e = effects(vals(sparse), vals(dense))["h"]
    assert e["top10_energy"]["last"]["verdict"] == "found: sparser"
    assert e["effective_rank"]["all_positions"]["verdict"] == "found: sparser"
    assert e["top10_energy"]["last"]["low"] > 0
    # the same vectors, reordered and negated: equal metrics, so no effect can be found
    null = effects(vals(-dense.flip(0)), vals(dense))["h"]["top10_energy"]["last"]
    assert null["verdict"] == "not found" and null["low"] < 0 < null["high"]
    assert verdict("effective_rank", 0.1, 0.2) == "found: denser"
    assert verdict("frac_above_mean_1std", -0.2, -0.1) == "found: lower"
    # >= 3 seeds: a t interval across seeds (t 4.303 for 2 df)
    c = combine_seeds([(1.0, 0.9, 1.1), (2.0, 1.9, 2.1), (3.0, 2.9, 3.1)])
    assert c["mean"] == 2 and c["high"] == pytest.approx(2 + 4.303 / math.sqrt(3), rel=1e-5)
    assert c["n_seeds"] == 3 and "t interval" in c["interval"]
    # two seeds that disagree: the union of their input intervals holds 0
    two = combine_seeds([(0.5, 0.4, 0.6), (-0.5, -0.6, -0.4)])
    assert two["low"] == -0.6 and two["high"] == 0.6 and "inputs only" in two["interval"]


PROSE = '"""Helpers for reading and writing the small test files.\n\nEach function returns\nwhat it read."""\n# keep the order stable across runs\n'


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three seeds of a tiny sparse model and one dense twin, snapshots every 2 steps."""
    from conftest import tiny_configs, write_corpus
    from sparsecircuits import train

    base = tmp_path_factory.mktemp("act")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARSECIRCUITS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        root = write_corpus(base / "corpus", n_files=40)
        for f in root.rglob("*.py"):
            f.write_text(PROSE + f.read_text())
        out = {}
        for name, sets in [(f"s{i}", dict(seed=i)) for i in range(3)] + [
            ("dense", dict(density=1.0))
        ]:
            m, t = tiny_configs(
                root, n_ctx=96, steps=4, save_every=2, checkpoint_every=2, heldout_frac=0.25, **sets
            )
            out[name] = train(m, t, base / name, progress=False)
    return out


def test_cli_activations_end_to_end(tmp_path, runs):
    import json

    from sparsecircuits.activations import CONDITIONS
    from sparsecircuits.cli import main

    dirs = [str(runs[k]) for k in ("s0", "s1", "s2", "dense")]
    args = ["activations", *dirs, "--out", str(tmp_path / "a"), "-n", "6", "--pairs", "4"]
    assert main([*args, "--hooks", "resid_post", "mlp.hook_post"]) == 0
    res = json.loads((tmp_path / "a" / "activations.json").read_text())
    m = res["models"][0]
    assert m["hooks"] == [
        "blocks.0.mlp.hook_post",
        "blocks.0.hook_resid_post",
        "blocks.1.mlp.hook_post",
        "blocks.1.hook_resid_post",
    ]
    assert list(m["conditions"]) == list(CONDITIONS)  # all seven, in order
    dense, sparse = res["groups"]  # dense first, seeds grouped
    assert dense["kind"] == "dense" and dense["seeds"] == [0]
    assert sparse["kind"] == "sparse" and sorted(sparse["seeds"]) == [0, 1, 2]
    e = sparse["effects"]["random_tokens"]["blocks.1.hook_resid_post"]["top10_energy"]["last"]
    assert e["interval"] == "t interval across 3 seeds" and e["low"] <= e["mean"] <= e["high"]
    assert e["verdict"] in ("not found", "found: sparser", "found: denser")
    assert sparse["training"]["steps"] == [0, 2, 4]
    assert set(sparse["training"]["emergence"]) == set(sparse["effects"])
    diff = m["difficulty"]
    assert set(diff) == {"bracket_depth", "quote_distractors", "context_length"}
    levels = diff["context_length"]["levels"]
    assert len(levels) == 4 and all(0 <= lv["accuracy"][0] <= 1 for lv in levels)
    assert "hardest_minus_easiest" in diff["context_length"]
    for name in ("activations.png", "activations_training.png", "activations_difficulty.png"):
        assert (tmp_path / "a" / name).stat().st_size > 1000
    section = json.loads((tmp_path / "a" / "section.json").read_text())
    rows = section["tables"][0]["rows"]  # one per group and unfamiliar condition
    assert len(rows) == 2 * 6
    assert {r[4] for r in rows} <= {"not found", "found: sparser", "found: denser"}


def test_cli_activations_bad_input_is_one_line(tmp_path, runs, capsys):
    import shutil

    from sparsecircuits.cli import main

    out = ["--out", str(tmp_path / "o"), "-n", "4", "--no-difficulty"]
    assert main(["activations", str(tmp_path), *out]) == 2
    assert "config.json is missing" in capsys.readouterr().err
    assert main(["activations", str(runs["s0"]), *out, "--hooks", "nosuchhook"]) == 2
    err = capsys.readouterr().err
    assert "nosuchhook" in err and str(runs["s0"]) in err and err.count("\n") == 1
    broken = tmp_path / "broken"
    shutil.copytree(runs["s0"], broken)
    snap = broken / "checkpoints" / "step_0000002" / "model.safetensors"
    snap.write_bytes(snap.read_bytes()[:100])
    assert main(["activations", str(broken), *out]) == 2
    err = capsys.readouterr().err
    assert str(snap) in err and err.count("\n") == 1


def test_study_option_adds_a_report_section(tmp_path, runs):
    import json

    from sparsecircuits.cli import main

    study = tmp_path / "study"
    study.mkdir()
    models = [
        {"id": k, "label": k, "kind": "dense" if k == "dense" else "sparse", "dir": str(runs[k])}
        for k in ("s0", "dense")
    ]
    (study / "results.json").write_text(
        json.dumps(
            {
                "schema_version": 2,
                "models": models,
                "circuits": [],
                "frontier": [],
                "answer": {"sentence": "-"},
            }
        )
    )
    args = ["activations", "--study", str(study), "-n", "4", "--no-difficulty"]
    assert main(args) == 0
    assert (study / "activations" / "activations.json").exists()
    page = (study / "report.html").read_text()
    assert "Activation sparsity" in page and "data:image/png;base64," in page
