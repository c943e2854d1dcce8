"""Compound tasks, weight masks, the Lepori tests end to end, and the FER measures on ground
truth (the planted model vs its rotated twin)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from conftest import tiny_configs
from sparsecircuits.cli import main
from sparsecircuits.config import ModelConfig, TrainConfig, model_name
from sparsecircuits.errors import UserError
from sparsecircuits.fer import (
    perturbation_sensitivity,
    rotate_hidden,
    validate_on_planted,
    weight_sweep,
)
from sparsecircuits.model import SparseGPT
from sparsecircuits.modularity import (
    ModularityConfig,
    ModularityResults,
    interval,
    run_modularity,
    study_models,
)
from sparsecircuits.modularity.structures import shuffled_labels
from sparsecircuits.planted import SOFT, planted_batch, planted_model
from sparsecircuits.tasks.compound import (
    COMPOUND_TASKS,
    get_compound_task,
    load_compound_task,
)
from sparsecircuits.train import train
from sparsecircuits.weightmask import (
    Ablation,
    MaskConfig,
    continuous_sparsification,
    kept_weights,
    masked_accuracy,
    masked_layers,
    weight_masks,
)
from study_fixture import write_fake_study


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest
    yield
    torch.set_num_threads(n)


# ---------- compound tasks ----------


@pytest.mark.parametrize("name", list(COMPOUND_TASKS))
def test_subroutine_datasets_vary_only_their_factor(name):
    task = get_compound_task(name, 20, 10)
    answer_factors = {e.answer: (e.a, e.b) for e in task.train + task.test}
    assert len(answer_factors) == 4  # every answer is one combination
    for i, factor in enumerate("ab"):
        for pair in task.sub[factor].train + task.sub[factor].test:
            fa, fb = answer_factors[pair.answer_a], answer_factors[pair.answer_b]
            assert fa[i] != fb[i] and fa[1 - i] == fb[1 - i]
            # the two prompts differ in one place only (the factor's opener): all else shared
            a, b = pair.prompt_a, pair.prompt_b
            pre = next(
                i for i, (x, y) in enumerate(zip(a + "\0", b + "\1", strict=False)) if x != y
            )
            post = next(
                i
                for i, (x, y) in enumerate(zip(a[::-1] + "\0", b[::-1] + "\1", strict=False))
                if x != y
            )
            assert (
                max(len(a), len(b)) - pre - post <= 24
                and pre + post >= len(min(a, b, key=len)) // 2
            )
    test_prompts = {e.prompt for e in task.test}
    assert not test_prompts & {e.prompt for e in task.train}


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _user_files(tmp_path, b_rows=None):
    compound = [
        {"prompt": f"f({q}x{n}", "answer": q + ")", "a": q, "b": "("}
        for q in "'\""
        for n in range(3)
    ] + [
        {"prompt": f"[{q}x{n}", "answer": q + "]", "a": q, "b": "["}
        for q in "'\""
        for n in range(3)
    ]
    a_rows = [
        {"prompt": f"f('y{n}", "prompt_alt": f'f("y{n}', "correct": "')", "incorrect": '")'}
        for n in range(4)
    ]
    b_rows = b_rows or [
        {"prompt": f"f('z{n}", "prompt_alt": f"['z{n}", "correct": "')", "incorrect": "']"}
        for n in range(4)
    ]
    return (
        _write_jsonl(tmp_path / "c.jsonl", compound),
        _write_jsonl(tmp_path / "a.jsonl", a_rows),
        _write_jsonl(tmp_path / "b.jsonl", b_rows),
    )


def test_user_compound_task_loads(tmp_path):
    task = load_compound_task(*_user_files(tmp_path))
    assert task.answers == sorted(["')", '")', "']", '"]'])
    assert len(task.sub["a"].train + task.sub["a"].test) == 4


def test_subroutine_file_that_varies_the_wrong_factor_is_refused(tmp_path):
    # The "B" file's second pair changes the quote (A) instead of the bracket.
    bad_b = [
        {"prompt": "f('z0", "prompt_alt": "['z0", "correct": "')", "incorrect": "']"},
        {"prompt": "f('z1", "prompt_alt": 'f("z1', "correct": "')", "incorrect": '")'},
    ]
    with pytest.raises(UserError, match=r"b\.jsonl:2: .*same b .*claims to vary only the b"):
        load_compound_task(*_user_files(tmp_path, bad_b))


def test_subroutine_answer_outside_the_compound_task_is_refused(tmp_path):
    bad_b = [{"prompt": "f('z0", "prompt_alt": "{'z0", "correct": "')", "incorrect": "'}"}]
    with pytest.raises(UserError, match=r"b\.jsonl:1: answer \"'}\" is not an answer"):
        load_compound_task(*_user_files(tmp_path, bad_b))


def test_compound_file_with_a_bad_row(tmp_path):
    c, a, b = _user_files(tmp_path)
    c.write_text(c.read_text() + '{"prompt": "x", "answer": "y"}\n')
    with pytest.raises(UserError, match=r"c\.jsonl:13: expected an object with exactly"):
        load_compound_task(c, a, b)


# ---------- weight masks ----------


def test_weight_masks_zero_and_mean_modes():
    model = planted_model(SOFT).requires_grad_(False)
    tokens = planted_batch(8, 0).tokens
    names = masked_layers(model, ["blocks.*.mlp.*"])
    assert names == ["blocks.0.mlp.fc_in", "blocks.0.mlp.fc_out"]
    ones = {n: torch.ones_like(dict(model.named_modules())[n].weight) for n in names}
    ref = model(tokens)
    with weight_masks(model, ones):
        assert torch.allclose(model(tokens), ref, atol=1e-6)
    # Mean mode with everything removed: the layer's output no longer depends on its input.
    zeros = {n: torch.zeros_like(m) for n, m in ones.items()}
    means = {n: torch.randn(dict(model.named_modules())[n].in_features) for n in names}
    seen = []
    with weight_masks(model, zeros, "mean", means):
        # registered after the mask's hook, so it sees the masked output
        handle = model.blocks[0].mlp.fc_out.register_forward_hook(lambda m, i, o: seen.append(o))
        model(tokens)
    handle.remove()
    out = seen[-1].reshape(-1, seen[-1].shape[-1])
    expected = model.blocks[0].mlp.fc_out.weight @ means["blocks.0.mlp.fc_out"]
    assert torch.allclose(out, expected.expand_as(out), atol=1e-5)
    with pytest.raises(UserError, match="input means"), weight_masks(model, zeros, Ablation.MEAN):
        pass
    bad_mode = r"one of \['zero', 'mean'\], not 'max'"
    with pytest.raises(UserError, match=bad_mode), weight_masks(model, zeros, "max"):
        pass


def test_continuous_sparsification_finds_the_planted_weights():
    """Ground truth: the planted head's four weights carry the task; the MLP and the
    distractor head's q/k do not."""
    model = planted_model(SOFT).requires_grad_(False)
    names = masked_layers(model, ["blocks.*"])
    mask = continuous_sparsification(model, names, planted_batch(64, 1), MaskConfig(steps=200), 0)
    kept = {
        (n, tuple(i)) for n, v in kept_weights(model, mask).items() for i in v.nonzero().tolist()
    }
    planted = {
        ("blocks.0.attn.q_proj", (0, 3)),
        ("blocks.0.attn.k_proj", (0, 2)),
        ("blocks.0.attn.v_proj", (0, 1)),
        ("blocks.0.attn.o_proj", (4, 0)),
    }
    assert planted <= kept
    assert not {
        k
        for k in kept
        if "mlp" in k[0]
        or k in {("blocks.0.attn.q_proj", (2, 0)), ("blocks.0.attn.k_proj", (2, 0))}
    }
    test = planted_batch(64, 2)
    assert masked_accuracy(model, mask, test) == 1.0
    removed = {n: 1 - m for n, m in mask.items()}
    assert masked_accuracy(model, removed, test) <= 0.6  # the task needs the subnetwork


def test_interval_says_not_found_when_it_includes_zero():
    assert interval([0.5, 0.6, 0.55])["found"] is True
    assert interval([-0.1, 0.2, 0.05])["found"] is False
    assert interval([0.3])["found"] is None
    assert interval([None, float("nan")]) is None


# ---------- FER: ground truth ----------


@pytest.mark.parametrize("seed", [0, 1])
def test_fer_measures_tell_planted_from_rotated(seed):
    v = validate_on_planted(seed)
    assert v["output_max_diff"] < 1e-4  # the same behaviour
    assert v["clean"]["circuit_nodes"] == 7 and v["rotated"]["circuit_nodes"] > 10
    assert v["rotated"]["perturbation_median"] > 3 * v["clean"]["perturbation_median"]
    assert v["rotated"]["sweep_roughness"] > 3 * v["clean"]["sweep_roughness"]
    assert v["separates"]["circuit_nodes"] and not v["separates"]["sweep_control"]


def test_rotation_refuses_a_model_it_would_change(tmp_path):

    model = SparseGPT(
        ModelConfig(
            vocab_size=16, n_ctx=8, d_model=8, n_layer=1, d_head=4, n_head=2, d_mlp=8, afrac=0.5
        )
    )
    with pytest.raises(UserError, match="AbsTopK"):
        rotate_hidden(model)


# ---------- the experiment end to end ----------


@pytest.fixture(scope="module")
def compound_models(tmp_path_factory):
    """A dense and a weight-sparse model pretrained on code full of the compound tasks'
    patterns, so the tokenizer has the closers as single tokens."""
    root = tmp_path_factory.mktemp("compound_corpus")
    rng = random.Random(0)
    for f in range(8):
        lines = []
        for name in COMPOUND_TASKS:
            task = get_compound_task(name, 40, 1, seed=f)
            lines += [e.prompt + e.answer for e in task.train]
        rng.shuffle(lines)
        (root / f"m{f}.py").write_text("\n".join(lines) + "\n")
    dirs = []
    # two independent pretraining seeds of the dense config, one of the sparse
    for density, seed in ((1.0, 0), (0.25, 0), (1.0, 1)):
        m, t = tiny_configs(
            root, vocab_size=400, n_ctx=24, steps=40, lr=0.01, density=density, seed=seed
        )
        dirs.append(train(m, t, tmp_path_factory.mktemp("pre") / "run", progress=False))
    return dirs


TINY = dict(
    tasks=["quote_bracket"],
    base_seeds=2,
    finetune_seeds=1,
    mask_seeds=2,
    n_train=16,
    n_test=8,
    finetune_steps=40,
    node_steps=20,
    node_target=0.6,
)


@pytest.mark.slow
def test_modularity_end_to_end(compound_models, tmp_path):
    cfg = ModularityConfig(**TINY, masks=MaskConfig(steps=40))
    out = tmp_path / "mod"
    res = run_modularity(compound_models, out, cfg, progress=False)
    # pretrained and shuffled: 3 checkpoints x 1 fine-tuning order; scratch and random:
    # 2 configs x 2 inits
    assert len(res.runs) == 2 * 3 + 2 * 2 * 2
    run = res.runs[0]
    assert {"subnetwork", "ablation_zero", "ablation_mean", "kept", "status"} <= set(
        run["weights"]["a"][0]
    )
    assert len(run["weights"]["a"]) == 2 and run["weights"]["a"][0]["kept"] > 0
    # the sparse model's fine-tuning kept its sparsity: masks only count existing weights
    sparse = next(
        r for r in res.runs if r["kind"].startswith("sparse") and r["regime"] == "pretrained"
    )
    dense = next(
        r for r in res.runs if r["kind"].startswith("dense") and r["regime"] == "pretrained"
    )
    assert sparse["weights_total"] < 0.5 * dense["weights_total"]
    # independent units: the dense config's two pretraining seeds give an interval, the
    # sparse config's one checkpoint does not, whatever its fine-tuning runs would say
    rows = {
        (r["kind"], r["regime"]): r
        for r in res.summary
        if (r["structure"], r["factor"]) == ("weights", "a")
    }
    assert rows[(dense["kind"], "pretrained")]["units"] == 2
    assert rows[(dense["kind"], "pretrained")]["unit"] == "pretraining seed"
    assert rows[(sparse["kind"], "pretrained")]["units"] == 1
    assert rows[(sparse["kind"], "pretrained")]["kept_frac"]["low"] is None
    assert rows[(dense["kind"], "scratch")]["units"] == 2  # init seeds, once per config
    assert {r["pretrain_seed"] for r in res.runs if r["kind"] == dense["kind"]} == {0, 1}
    assert dense["kind"] == "dense, d_model 32" and sparse["kind"] == "sparse 1/4, d_model 32"
    kinds = {(r["kind"], r["structure"]) for r in res.forced_vs_emergent}
    assert len(kinds) == 4
    assert (out / "ablation_matrix.png").stat().st_size > 1000
    section = json.loads((out / "section.json").read_text())
    assert section["title"] == "Forced vs emergent modularity" and len(section["tables"]) == 4
    assert len(res.findings) == 8  # task x structure x regime
    assert res.findings[0] in section["paragraphs"]
    assert res.fer_validation["separates"]["circuit_nodes"]
    lines = (out / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 14

    # Resume: a torn last line (an interrupted run) is redone, finished runs are reused.
    # Torn late, so only the last runs are redone (each redone run costs a second or more).
    (out / "runs.jsonl").write_text("\n".join(lines[:12]) + "\n" + lines[12][:40])
    again = run_modularity(compound_models, out, cfg, progress=False)
    assert again.runs[:12] == res.runs[:12]
    assert len(again.runs) == 14
    # A smaller job list in the same folder reuses its runs; other settings are refused.
    one = run_modularity(
        compound_models[:1],
        out,
        ModularityConfig(**TINY | {"base_seeds": 1}, masks=MaskConfig(steps=40)),
        progress=False,
    )
    assert one.runs == [  # as the resumed call left them (it redid runs 12 on)
        r for r in again.runs if r["model"] == res.runs[0]["model"] and r["base_seed"] == 0
    ]
    with pytest.raises(UserError, match="different modularity run: different config"):
        run_modularity(compound_models, out, ModularityConfig(**TINY), progress=False)


@pytest.mark.slow
def test_collapsed_masks_are_reported_not_averaged(compound_models, tmp_path):
    cfg = ModularityConfig(
        **TINY | {"regimes": ["pretrained"], "base_seeds": 1},
        masks=MaskConfig(steps=40, l1=10.0),  # a penalty no task loss can resist
    )
    res = run_modularity(compound_models[:1], tmp_path / "c", cfg, progress=False)
    rows = [r for r in res.summary if r["structure"] == "weights"]
    assert all(r["collapsed"] == 2 and r["usable"] == 0 for r in rows)
    assert all(r["subnetwork"] is None for r in rows)
    assert "collapsed" in " ".join(
        json.loads((tmp_path / "c" / "section.json").read_text())["paragraphs"]
    )


def test_cli_modularity_needs_models_or_a_study(tmp_path, capsys):
    assert main(["modularity", "--out", str(tmp_path)]) == 2
    assert "MODEL_DIR" in capsys.readouterr().err
    assert main(["modularity", "--study", str(tmp_path)]) == 2
    assert "no results.json" in capsys.readouterr().err
    assert main(["modularity", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a checkpoint" in capsys.readouterr().err


def test_study_models_are_the_dense_and_sparsest_at_base_width(tmp_path):

    study = write_fake_study(tmp_path / "study")
    assert study_models(study) == [
        str(study / "models/w64_dense_s0"),
        str(study / "models/w64_d0.25_s0"),
    ]
    # every pretraining seed of the two chosen configs, none of the other widths
    results = json.loads((study / "results.json").read_text())
    extra = [m | {"seed": 1, "dir": m["dir"].replace("_s0", "_s1")} for m in results["models"]]
    results["models"] += extra
    (study / "results.json").write_text(json.dumps(results))
    assert study_models(study) == [
        str(study / f"models/w64_{kind}_s{seed}") for kind in ("dense", "d0.25") for seed in (0, 1)
    ]


@pytest.mark.slow
def test_cli_with_a_user_compound_task(compound_models, tmp_path, capsys):
    """The built-in quote x bracket task written out as the three user files, run through
    the CLI: the user's task is analysed under its file's name."""
    task = get_compound_task("quote_bracket", 12, 6, seed=5)
    rows = [{"prompt": e.prompt, "answer": e.answer, "a": e.a, "b": e.b} for e in task.train]
    files = [_write_jsonl(tmp_path / "mine.jsonl", rows)]
    for f in "ab":
        pairs = task.sub[f].train + task.sub[f].test
        files.append(
            _write_jsonl(
                tmp_path / f"mine_{f}.jsonl",
                [
                    {
                        "prompt": p.prompt_a,
                        "prompt_alt": p.prompt_b,
                        "correct": p.answer_a,
                        "incorrect": p.answer_b,
                    }
                    for p in pairs
                ],
            )
        )
    out = tmp_path / "out"
    argv = ["modularity", str(compound_models[0]), "--compound-files", *map(str, files)]
    argv += ["--out", str(out), "--regimes", "pretrained", "--base-seeds", "1", "--mask-seeds", "1"]
    argv += ["--finetune-steps", "20", "--mask-steps", "20", "--node-target", "0.9", "--quiet"]
    assert main(argv) == 0
    res = ModularityResults.load(out / "modularity.json")
    assert {r["task"] for r in res.runs} == {"mine"}
    assert "mine, pretrained, weights" in capsys.readouterr().out


def test_fer_measures_leave_the_model_unchanged():

    model = planted_model(SOFT).requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = masked_layers(model, ["blocks.*"])
    batch = planted_batch(16, 3)
    perturbation_sensitivity(model, [batch], names, draws=4)
    sweep = weight_sweep(model, [batch], names, points=5)
    assert sweep["t"] == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("all_entries", [False, True])
def test_perturbation_hits_only_existing_weights_at_their_scale(all_entries):
    """frac=1: every candidate entry gets noise. Nonzero-only: the zeros stay zero and the
    noise has the std of the nonzero weights; all entries: zeros are revived and the noise
    std is the RMS over every entry (smaller in a sparse matrix)."""

    model = planted_model(SOFT).requires_grad_(False)
    layer = model.blocks[0].mlp.fc_in
    w0 = layer.weight.detach().clone()
    zero = w0 == 0
    rms_nonzero = float(w0[~zero].pow(2).mean().sqrt())
    rms_all = float(w0.pow(2).mean().sqrt())
    seen = []
    hook = layer.register_forward_pre_hook(lambda m, _: seen.append(m.weight.detach() - w0))
    try:
        perturbation_sensitivity(
            model,
            [planted_batch(8, 3)],
            ["blocks.0.mlp.fc_in"],
            draws=200,
            frac=1.0,
            all_entries=all_entries,
        )
    finally:
        hook.remove()
    noise = torch.stack(seen[1:])  # the first forward is the unperturbed baseline
    if all_entries:
        assert (noise[:, zero] != 0).all()
        assert float(noise.std()) == pytest.approx(rms_all, rel=0.1)
    else:
        assert (noise[:, zero] == 0).all()
        assert float(noise[:, ~zero].std()) == pytest.approx(rms_nonzero, rel=0.1)
    assert rms_nonzero > 2 * rms_all  # the two variants differ on this sparse layer


def test_results_record_round_trips_and_refuses_another_schema(tmp_path):
    record = ModularityResults(
        setup={"settings": {}},
        runs=[{"task": "t", "x": float("nan")}],
        summary=[],
        consistency=[],
        findings=["f"],
        forced_vs_emergent=[],
        fer_validation={},
        seconds=1.5,
    )
    record.save(tmp_path / "m.json")
    loaded = ModularityResults.load(tmp_path / "m.json")
    assert loaded.runs == [{"task": "t", "x": None}]  # NaN is written as null
    assert loaded.findings == ["f"] and loaded.seconds == 1.5
    old = json.loads((tmp_path / "m.json").read_text()) | {"schema_version": 1}
    with pytest.raises(UserError, match="schema_version 1"):
        ModularityResults.from_json(old)


def test_shuffled_labels_deal_both_subroutines_into_each_half():

    task = get_compound_task("quote_bracket", 24, 4, seed=0)
    dealt = shuffled_labels(task, seed=3)
    pool = task.sub["a"].train + task.sub["b"].train
    assert sorted(map(repr, dealt["a"].train + dealt["b"].train)) == sorted(map(repr, pool))
    assert abs(len(dealt["a"].train) - len(dealt["b"].train)) <= 1
    for f in "ab":  # each half holds pairs of both subroutines, not one relabelled
        own = {repr(p) for p in task.sub[f].train}
        assert 0 < sum(repr(p) in own for p in dealt[f].train) < len(dealt[f].train)
    assert shuffled_labels(task, seed=3)["a"].train == dealt["a"].train  # seeded
    assert shuffled_labels(task, seed=4)["a"].train != dealt["a"].train


def test_model_name_is_one_spelling_for_every_analysis():
    m = ModelConfig(vocab_size=16, n_ctx=8, d_model=64, n_layer=1, d_head=8, n_head=2, d_mlp=8)
    assert model_name(m, TrainConfig(density=1.0)) == "dense, d_model 64"
    assert model_name(m, TrainConfig(density=0.125)) == "sparse 1/8, d_model 64"
    assert model_name(m, TrainConfig(density=0.3)) == "sparse 0.3, d_model 64"
    assert model_name(m) == "d_model 64 (imported)"
