"""A study grows in its folder: a later run that only adds models (a ladder's next rung,
another density, more seeds) or tasks trains and searches only what is new."""

import dataclasses
import json

import pytest

from conftest import write_quote_task
from sparsecircuits.cli import main
from sparsecircuits.errors import UserError
from sparsecircuits.study import run as study_run
from sparsecircuits.study.config import growth, study_config
from study_fixture import tiny_study_config


def test_growth_is_only_adding_models_or_tasks():
    cfg = study_config("scale")
    saved = dataclasses.asdict(cfg)
    wider = dataclasses.replace(cfg, dense_widths=[*cfg.dense_widths, 1024])
    assert growth(saved, wider) == "dense_widths + 1024"
    more = dataclasses.replace(cfg, seeds=5, tasks=[*cfg.tasks, "if_equals"])
    assert growth(saved, more) == "tasks + if_equals; seeds 3 -> 5"
    assert growth(saved, cfg) is None  # the same study: resumed, not grown
    for changed in (
        dataclasses.replace(cfg, dense_widths=cfg.dense_widths[1:]),  # a rung dropped
        dataclasses.replace(cfg, seeds=2),
        dataclasses.replace(cfg, dense_widths=[*cfg.dense_widths, 1024], target_loss=0.4),
        dataclasses.replace(cfg, k_coefs=[*cfg.k_coefs, 0.1]),  # the search, not the family
    ):
        assert growth(saved, changed) is None


def test_set_overrides_a_study_setting_by_name_and_kind():
    cfg = study_config("scale", overrides=["dense_widths=[64,128]", "target_loss=0.4"])
    assert cfg.dense_widths == [64, 128] and cfg.target_loss == 0.4
    with pytest.raises(UserError, match="--set dense_width: not a study setting"):
        study_config("scale", overrides=["dense_width=[64]"])
    with pytest.raises(UserError, match="--set dense_widths=64: expected a list"):
        study_config("scale", overrides=["dense_widths=64"])
    with pytest.raises(UserError, match="expected key=value"):
        study_config("scale", overrides=["dense_widths"])


@pytest.mark.slow
def test_a_grown_study_trains_and_searches_only_what_is_new(tmp_path, corpus_dir, monkeypatch):
    cfg = tiny_study_config(corpus_dir, write_quote_task(tmp_path / "quotes.jsonl"))
    out = tmp_path / "study"
    first = study_run.run_study(cfg, out, progress=False)
    kept = {p: p.stat().st_mtime_ns for p in (out / "circuits").rglob("row.json")}
    assert len(kept) == len(first.circuits) == 4

    trained, searched = [], []
    train, find = study_run.train, study_run.find_circuit
    monkeypatch.setattr(
        study_run, "train", lambda m, t, d, **k: trained.append(m.d_model) or train(m, t, d, **k)
    )
    monkeypatch.setattr(
        study_run, "find_circuit", lambda *a, **k: searched.append(1) or find(*a, **k)
    )
    grown = dataclasses.replace(cfg, dense_widths=[32, 64])
    with pytest.raises(UserError, match="holds a different study"):  # growing needs --resume
        study_run.run_study(grown, out, progress=False)
    res = study_run.run_study(grown, out, resume=True, progress=False)
    assert trained == [64]  # the new rung alone
    assert json.loads((out / "study.json").read_text())["dense_widths"] == [32, 64]
    assert {m.id for m in res.models} == {m.id for m in first.models} | {"w64_dense_s0"}
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # every old circuit kept
    assert len(res.circuits) == 5 and len(searched) > 0  # the new model's circuit searched
    # dropping a rung is not growth: refused, and the folder keeps the grown study
    with pytest.raises(UserError, match="holds a different study"):
        study_run.run_study(cfg, out, resume=True, progress=False)
    assert json.loads((out / "study.json").read_text())["dense_widths"] == [32, 64]


def test_study_cli_takes_set(tmp_path, capsys):
    assert main(["study", "--preset", "quick", "--set", "nope=1", "--out", str(tmp_path)]) == 2
    assert "--set nope: not a study setting" in capsys.readouterr().err
