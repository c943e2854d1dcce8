"""The registered protocol (docs/protocol.md): the preset it pins, the deviations a run
reports, and the earlier designs' answers, quoted from their results files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sparsecircuits.study import analyse, study_config, summary_markdown
from sparsecircuits.study.config import model_specs
from sparsecircuits.study.protocol import (
    HISTORY,
    PROTOCOL_FILE,
    REGISTERED,
    deviations,
    registered_hash,
)

ROOT = Path(__file__).resolve().parents[1]


def test_a_registered_preset_cannot_change_without_a_new_version():
    for version, presets in REGISTERED.items():
        for preset, digest in presets.items():
            cfg = study_config(preset)
            assert cfg.protocol == version
            # Editing the preset after registration fails here: write a new version.
            assert registered_hash(cfg) == digest
    doc = (ROOT / PROTOCOL_FILE).read_text()
    latest = max(REGISTERED)
    assert f"**Version {latest}**" in doc
    assert all(f"{p}: {d}" in doc for p, d in REGISTERED[latest].items())


def test_the_registered_family_meets_the_issue_rules():
    cfg = study_config("standard")
    specs = model_specs(cfg)
    compared = [s for s in specs if {"dense", "density"} & set(s.roles)]
    assert {s.seed for s in compared} == set(range(5))  # >= 5 seeds of every compared model
    assert len(cfg.mask_lrs) >= 2 and cfg.prune["n_select"] > 0 and cfg.controls
    assert len(cfg.loss_quantiles) >= 2


def test_earlier_answers_are_quoted_from_their_results_files():
    for h in HISTORY:
        assert h.answer in (ROOT / h.source).read_text(), h.name


def test_deviations_and_earlier_answers_reach_the_summary():
    from test_study import FAMILY, _eligibility, _rows

    cfg = study_config("standard")
    assert deviations(cfg) == []
    run = dataclasses.replace(cfg, seeds=3, tasks=["t1", "t2"])
    assert deviations(run) == [
        "tasks: registered " + repr(cfg.tasks) + ", run ['t1', 't2']",
        "seeds: registered 5, run 3",
    ]
    models, circuits = _rows(FAMILY, ["t1", "t2"], seeds=(0, 1, 2))
    elig = _eligibility(models, ["t1", "t2"])  # typed rows: all a summary's tables read
    text = summary_markdown(analyse(run, models, circuits, elig))
    assert "Protocol: version 1 (docs/protocol.md)" in text
    assert "Deviations from it: tasks: registered" in text and "seeds: registered 5, run 3" in text
    assert all(h.answer in text for h in HISTORY)
    assert "## Verdicts (Holm over the study's family)" in text
    quick = summary_markdown(
        analyse(
            dataclasses.replace(study_config("quick"), tasks=["t1", "t2"]), models, circuits, elig
        )
    )
    assert "Protocol: none registered for this preset" in quick
