import json

import pytest

from conftest import write_quote_task
from sparsecircuits import study as study_mod
from sparsecircuits.cli import main
from sparsecircuits.errors import UserError
from sparsecircuits.study import StudyConfig, model_specs, run_study, study_config


@pytest.fixture()
def tiny_study(tmp_path, corpus_dir):
    task = write_quote_task(tmp_path / "quotes.jsonl")
    return StudyConfig(
        preset="test",
        base_preset="smoke",
        train_overrides=dict(
            data=[str(corpus_dir)],
            vocab_size=300,
            n_ctx=16,
            n_layer=1,
            steps=8,
            batch_size=4,
            eval_every=4,
            eval_batches=1,
            checkpoint_every=4,
        ),
        base_width=32,
        densities=[0.5, 0.25],
        fixed_l0_density=0.25,
        wide_widths=[64],
        dense_widths=[32],
        tasks=[str(task)],
        seeds=1,
        target_loss="auto",
        auto_cap=10.0,
        prune=dict(steps=5, n_train=4, n_test=4, random_draws=2, effect_pairs=2, example_pairs=1),
    )


def test_family_shapes():
    cfg = study_config("quick")
    specs = model_specs(cfg)
    assert len(specs) >= 4 and len(cfg.tasks) >= 3
    sparse_base = {s.density for s in specs if s.kind == "sparse" and s.d_model == cfg.base_width}
    assert len(sparse_base) >= 3
    assert any(s.kind == "dense" for s in specs)
    # the fixed-L0 axis: equal nonzeros per square matrix at two widths
    wide = [s for s in specs if s.d_model in cfg.wide_widths]
    assert wide and all(
        abs(s.density * s.d_model**2 - cfg.fixed_l0_density * cfg.base_width**2) < 1e-6
        for s in wide
    )
    small = study_config("small")
    assert len(model_specs(small)) >= 6 and len(small.tasks) >= 6 and small.seeds >= 2


def test_unknown_preset_and_task():
    with pytest.raises(UserError, match="unknown study preset"):
        study_config("huge")
    with pytest.raises(UserError, match="unknown task 'nope'"):
        study_config("quick", ["nope"])


@pytest.mark.slow
def test_study_end_to_end_resume_and_refusal(tmp_path, tiny_study, monkeypatch):
    out = tmp_path / "study"
    res = run_study(tiny_study, out, progress=False)
    assert (out / "results.json").exists() and (out / "frontier.png").stat().st_size > 1000
    saved = json.loads((out / "results.json").read_text())
    assert saved["schema_version"] == 1 and len(saved["models"]) == 4
    assert {m["kind"] for m in saved["models"]} == {"dense", "sparse"}
    assert all(
        m["heldout_loss"] > 0 and m["nonzero_params"] <= m["total_params"] for m in saved["models"]
    )
    assert len(saved["circuits"]) == 4
    ok = [c for c in saved["circuits"] if c["status"] == "ok"]
    for c in ok:
        assert (out / c["path"]).exists() and c["n_edges"] >= 0
    assert len(saved["frontier"]) == 4
    assert "sentence" in res["answer"] and res["answer"]["density_trend"]

    # a second run reuses every model and circuit
    def boom(*a, **k):
        raise AssertionError("should have been cached")

    monkeypatch.setattr(study_mod, "train", boom)
    monkeypatch.setattr(study_mod, "find_circuit", boom)
    again = run_study(tiny_study, out, resume=True, progress=False)
    assert again["circuits"] == res["circuits"]

    # a different study in the same folder is refused, unless --force
    other = StudyConfig(**{**tiny_study.__dict__, "seeds": 2})
    with pytest.raises(UserError, match="holds a different study"):
        run_study(other, out, resume=True, progress=False)


def test_a_killed_prune_leaves_nothing_half_reused(tmp_path, tiny_study, monkeypatch):
    out = tmp_path / "s"
    real = study_mod.find_circuit
    calls = {"n": 0}

    def dies_second_time(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(study_mod, "find_circuit", dies_second_time)
    with pytest.raises(KeyboardInterrupt):
        run_study(tiny_study, out, progress=False)
    keys = list((out / "circuits").rglob("key.json"))
    assert len(keys) == 1  # only the finished circuit is marked done
    monkeypatch.setattr(study_mod, "find_circuit", real)
    res = run_study(tiny_study, out, resume=True, progress=False)
    assert len(res["circuits"]) == 4


def test_cli_refuses_foreign_out(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    assert main(["study", "--preset", "quick", "--out", str(tmp_path / "x")]) == 2
    assert "not a study folder" in capsys.readouterr().err
    assert (tmp_path / "x" / "notes.txt").read_text() == "mine"


def test_analysis_states_the_answer_from_numbers():
    from sparsecircuits.study import analyse

    cfg = StudyConfig(
        base_width=64,
        densities=[0.5, 0.25],
        fixed_l0_density=0.25,
        wide_widths=[128],
        dense_widths=[64],
        tasks=["t1", "t2"],
    )
    rows = [  # id, kind, width, density, loss, edges per task
        ("dense", "dense", 64, 1.0, 3.70, [800, 800]),
        ("s50", "sparse", 64, 0.5, 3.72, [200, 200]),
        ("s25", "sparse", 64, 0.25, 3.80, [50, 50]),
        ("wide", "sparse", 128, 0.0625, 3.802, [20, 20]),
    ]
    models = [
        dict(id=i, label=i, kind=k, d_model=w, density=d, seed=0, heldout_loss=loss)
        for i, k, w, d, loss, _ in rows
    ]
    circuits = [
        dict(model=i, task=t, status="ok", n_edges=e[j])
        for i, *_, e in rows
        for j, t in enumerate(cfg.tasks)
    ]
    a = analyse(cfg, models, circuits, {"t1": 0.5, "t2": 0.5})["answer"]
    # the sparse curve at loss 3.70 extrapolates to 200 * (200/50)^(0.02/0.08) = 283 edges
    assert a["ratio"]["median"] == pytest.approx(800 / (200 * 4**0.25), rel=1e-6)
    assert a["ratio"]["n"] == 2 and "2 extrapolated" in a["sentence"]
    assert "(rises)" in a["density_trend"] and "(shrink)" in a["density_trend"]
    assert "moves the frontier out" in a["width_effect"]  # +0.002 nats is within tolerance
