import json
import math
import shutil

import pytest
import torch

from conftest import tiny_configs, write_corpus
from sparsecircuits import train
from sparsecircuits.activations import (
    CONDITIONS,
    bootstrap_ci,
    code_prose,
    combine_seeds,
    condition_windows,
    effective_rank,
    effects,
    frac_above,
    frac_zero,
    hoyer,
    per_input,
    rename_identifiers,
    shuffle_lines,
    sparsity_metrics,
    topk_energy,
    verdict,
)
from sparsecircuits.activations.analysis import input_loss
from sparsecircuits.activations.conditions import Inputs
from sparsecircuits.activations.intervals import (
    bootstrap_diff,
    holm_verdicts,
    length_controlled_diff,
)
from sparsecircuits.cli import main
from sparsecircuits.corpus import prepare
from sparsecircuits.stats import holm, t_interval, t_pvalue
from sparsecircuits.tasks.difficulty import AXES
from study_fixture import model_row

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
    assert all(v.tokens.shape == (4, 16) and v.last_pos.shape == (4,) for v in w.values())
    assert sorted(w["shuffled_tokens"].tokens[0].tolist()) == sorted(
        w["heldout"].tokens[0].tolist()
    )
    # a retokenised window ends at its own last token: what follows is padding, not a repeat
    for name in ("renamed_identifiers", "shuffled_lines"):
        inputs = w[name]
        for row, last in zip(inputs.tokens.tolist(), inputs.last_pos.tolist(), strict=True):
            text = data.tokenizer.decode(row[: last + 1])
            assert data.tokenizer.encode(text).ids[: last + 1] == row[: last + 1]


def test_code_prose_keeps_only_docstrings_and_comments():

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

    g = torch.Generator().manual_seed(0)
    small = bootstrap_ci(torch.randn(20, generator=g))
    large = bootstrap_ci(torch.randn(2000, generator=g))
    assert small[1] <= small[0] <= small[2] and large[1] <= large[0] <= large[2]
    assert large[2] - large[1] < small[2] - small[1]


def test_prose_condition_from_heldout_docstrings(tmp_path):

    root = write_corpus(tmp_path / "c")
    for f in root.rglob("*.py"):
        f.write_text(PROSE + f.read_text())
    data = prepare([str(root)], 300, 0.1)
    w = condition_windows(data, 4, 16)
    assert list(w)[4] == "non_code_text" and w["non_code_text"].tokens.shape == (4, 16)
    text = data.tokenizer.decode(w["non_code_text"].tokens[0].tolist())
    assert "def " not in text and " = " not in text


def test_difficulty_axes_grow_harder_and_keep_answers():

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

    g = torch.Generator().manual_seed(0)
    dense = torch.randn(200, 64, generator=g)

    class Fake:  # a "model" whose only hook holds the given vectors at one position
        def __init__(self, x):
            self.x = x

        def parameters(self):  # the device the "model" lives on
            return iter([self.x])

        def run_with_cache(self, tokens, names_filter):
            return torch.zeros(len(tokens), 1, 1), {"h": self.x[:, None, :]}

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
    assert c["p"] == pytest.approx(0.0742, abs=1e-3)  # t = 3.46 on 2 df
    # fewer than 3 seeds: no between-seed interval; one seed's, said so, and every mean kept
    two = combine_seeds([(0.5, 0.4, 0.6, 0.01), (-0.5, -0.6, -0.4, 0.01)])
    assert (two["low"], two["high"], two["p"]) == (0.4, 0.6, 0.01)
    assert two["interval"].startswith("one seed") and two["seed_means"] == [0.5, -0.5]


def test_holm_and_resolvability():

    # Holm: sorted p times (m - rank), running max, capped at 1, input order kept
    assert holm([0.01, 0.04, 0.03, math.nan])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])
    rows = holm_verdicts(
        "top10_energy",
        [
            {"diff": 0.01, "low": 0.008, "high": 0.012, "p": 0.001},  # survives: 3 x 0.001
            {"diff": 0.004, "low": 0.0001, "high": 0.008, "p": 0.04},  # nominal only: 2 x 0.04
            {"diff": 0.0, "low": -0.001, "high": 0.001, "p": 0.9},  # narrow null
        ],
    )
    assert [r["verdict"] for r in rows] == [
        "found: sparser",
        "not resolvable at this n (half-width 0.0040 > 0.002)",
        "not found (interval rules out +-0.002)",
    ]
    assert rows[1]["p_holm"] == pytest.approx(0.08)
    # no expected size for other metrics: a null is just not found
    assert holm_verdicts("hoyer", [{"diff": 0.1, "low": -1, "high": 1, "p": 0.5}])[0][
        "verdict"
    ] == ("not found")


def test_length_controlled_difference_removes_a_length_effect():
    """Values that depend on length only: the raw difference is large, the controlled one
    ~0; a real set effect on top survives the control."""

    g = torch.Generator().manual_seed(0)
    la = torch.randint(5, 15, (200,), generator=g)
    lb = torch.randint(10, 20, (200,), generator=g)
    noise = 0.01 * torch.randn(400, generator=g, dtype=torch.double)
    a, b = 0.01 * la + noise[:200], 0.01 * lb + noise[200:]
    assert bootstrap_diff(b, a)[1] > 0.03  # confounded by length
    d, lo, hi, _ = length_controlled_diff(b, a, lb, la)
    assert lo < 0 < hi and abs(d) < 0.003
    d, lo, hi, p = length_controlled_diff(b + 0.02, a, lb, la)
    assert lo > 0 and d == pytest.approx(0.02, abs=0.003) and p < 0.01
    # disjoint length ranges: the control would extrapolate, so it is not made
    assert math.isnan(length_controlled_diff(b, a, la + 100, la)[0])


def test_input_loss_ignores_padding():

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    tokens = torch.tensor([[1, 2, 3, 4, 5], [1, 2, 3, 0, 0]])
    loss = input_loss(logits, Inputs(tokens, torch.tensor([4, 2])))
    nll = torch.nn.functional.cross_entropy(logits[1, :2], tokens[1, 1:3])
    assert float(loss[1]) == pytest.approx(float(nll), rel=1e-5)  # the pads are not scored
    padded = logits.clone()
    padded[1, 2:] = 100.0  # whatever the model says at or after the last real token
    assert float(input_loss(padded, Inputs(tokens, torch.tensor([4, 2])))[1]) == pytest.approx(
        float(nll), rel=1e-5
    )


PROSE = '"""Helpers for reading and writing the small test files.\n\nEach function returns\nwhat it read."""\n# keep the order stable across runs\n'


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three seeds of a tiny sparse model and one dense twin, snapshots every 2 steps."""

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
    hook, key = "blocks.1.hook_resid_post", ("top10_energy", "last")
    e = sparse["effects"]["random_tokens"][hook][key[0]][key[1]]
    per_seed = [
        x["effects"]["random_tokens"][hook][key[0]][key[1]]["diff"]
        for x in res["models"]
        if x["kind"] == "sparse"
    ]
    mean, low, high = t_interval(per_seed)  # the group interval is across seeds, not inputs
    assert e["interval"] == "t interval across 3 seeds"
    assert (e["mean"], e["low"], e["high"]) == pytest.approx((mean, low, high), rel=1e-4)
    assert e["p"] == pytest.approx(t_pvalue(per_seed), rel=1e-3)
    # the dense group has one seed: its interval is that seed's, and says so
    d = dense["effects"]["random_tokens"][hook][key[0]][key[1]]
    assert d["interval"].startswith("one seed")
    dense_model = next(x for x in res["models"] if x["kind"] == "dense")
    assert d["low"] == dense_model["effects"]["random_tokens"][hook][key[0]][key[1]]["low"]
    # headline verdicts: Holm over 6 conditions + 3 difficulty axes, adjusted p >= raw p
    for g in (dense, sparse):
        assert len(g["tests"]) == 9
        for t in g["tests"]:
            if t["p"] is not None:
                assert t["p_holm"] >= t["p"]
                assert t["verdict"].startswith("found") == (t["p_holm"] < 0.05)
    assert sparse["training"]["steps"] == [0, 2, 4]
    assert set(sparse["training"]["emergence"]) == set(sparse["effects"])
    diff = m["difficulty"]
    assert set(diff) == {"bracket_depth", "quote_distractors", "context_length"}
    # n_ctx 96 leaves room for few prefix tokens: fractions giving the same length are one
    # level, so no comparison is made between identical inputs
    levels = [lv["level"] for lv in diff["context_length"]["levels"]]
    assert len(levels) == len(set(levels)) >= 2 and levels == sorted(levels)
    assert "hardest_minus_easiest" in diff["context_length"]
    # harder distractor levels are longer prompts: the confound the control is there for
    tokens = [lv["tokens"][0] for lv in diff["quote_distractors"]["levels"]]
    assert tokens == sorted(tokens) and tokens[-1] > tokens[0]
    assert "length_controlled" in diff["quote_distractors"]
    # robustness: every unfamiliar condition per group; sparse - dense is the difference
    assert len(res["robustness"]) == 2 * 6
    row = next(r for r in res["robustness"] if r["group"] == sparse["label"])
    dense_deg = dense["loss"]["degradation"][row["condition"]]["mean"]
    assert row["minus_dense"]["mean"] == pytest.approx(
        row["loss_degradation"]["mean"] - dense_deg, abs=1e-5
    )
    for name in ("activations.png", "activations_training.png", "activations_difficulty.png"):
        assert (tmp_path / "a" / name).stat().st_size > 1000
    section = json.loads((tmp_path / "a" / "section.json").read_text())
    rows = section["tables"][0]["rows"]  # one per group and headline comparison
    assert [r[6] for r in rows] == [t["verdict"] for g in (dense, sparse) for t in g["tests"]]
    assert rows[0][1] == "one seed" and rows[-1][1] == "3 seeds"
    assert len(section["tables"][2]["rows"]) == 2 * 6


def test_cli_activations_bad_input_is_one_line(tmp_path, runs, capsys):

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

    study = tmp_path / "study"
    study.mkdir()
    models = [
        model_row(k, "dense" if k == "dense" else "sparse", dir=str(runs[k])).to_json()
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


def test_robustness_compares_each_sparse_group_with_the_dense_group_of_its_width():
    from sparsecircuits.activations.analysis import robustness

    def group(kind, width, degradation):
        iv = {"mean": degradation, "low": degradation - 0.1, "high": degradation + 0.1}
        return {
            "label": f"{kind} {width}",
            "kind": kind,
            "d_model": width,
            "headline": {"hook": "h", "metric": "m"},
            "loss": {"degradation": {"random_tokens": iv}},
            "effects": {"random_tokens": {"h": {"m": {"last": iv}}}},
        }

    # the wider dense group comes first, as the label sort puts "d_model 128" before "64"
    groups = [group("dense", 128, 5.0), group("dense", 64, 7.0)]
    groups += [group("sparse", 64, 6.0), group("sparse", 96, 6.0)]
    rows = {r["group"]: r for r in robustness(groups)}
    assert rows["sparse 64"]["minus_dense"]["mean"] == pytest.approx(-1.0)  # vs dense 64
    assert "minus_dense" not in rows["sparse 96"]  # no dense model of that width
    assert "minus_dense" not in rows["dense 64"]
