import copy
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import write_quote_task
from sparsecircuits import stats
from sparsecircuits.checkpoint import load
from sparsecircuits.cli import main
from sparsecircuits.errors import UserError
from sparsecircuits.study import (
    STUDY_PRESETS,
    StudyConfig,
    add_legibility,
    analyse,
    answer,
    matched,
    measures,
    model_specs,
    nonsense_task,
    run_study,
    study_config,
    write_summary,
)
from sparsecircuits.study import run as study_run
from sparsecircuits.study_results import StudyResults
from sparsecircuits.tasks import get_task
from study_fixture import circuit_row, eligibility_row, model_row, tiny_study_config


@pytest.fixture()
def tiny_study(tmp_path, corpus_dir):
    return tiny_study_config(corpus_dir, write_quote_task(tmp_path / "quotes.jsonl"))


def test_family_shapes():
    for name in STUDY_PRESETS:
        cfg = study_config(name)
        specs = model_specs(cfg)
        assert len({s.id for s in specs}) == len(specs)  # each model once
        l0 = [s for s in specs if "l0" in s.roles and s.seed == 0]
        # the scaling axis: >= 3 widths with equal nonzeros per square matrix
        assert len({s.d_model for s in l0}) >= 3
        for s in l0:
            assert s.density * s.d_model**2 == pytest.approx(
                cfg.fixed_l0_density * cfg.base_width**2
            )
        dense = {s.d_model for s in specs if "dense" in s.roles}
        sparse = {s.density for s in specs if s.kind == "sparse"}
        if name == "scale":  # the ladder: >= 4 widths over >= 8x on each of its three axes
            for role in ("dense", "l0", "fixed_density"):
                widths = sorted({s.d_model for s in specs if role in s.roles})
                assert len(widths) >= 4 and widths[-1] >= 8 * widths[0] and widths[-1] >= 512
            assert cfg.seeds >= 3
            continue
        # quick has fewer densities; the full presets have the family the comparison needs
        # (issue 10: dense models at >= 3 widths, sparse ones at >= 4 densities)
        assert len(dense) >= 3
        assert len(sparse) >= (3 if name == "quick" else 4)
        assert len({s.density for s in specs if "density" in s.roles}) >= 3
        assert all(0 < cfg.target(t) < 2 * math.log(2) for t in cfg.tasks)
    assert study_config("paper").target("for_while") == 0.15
    assert study_config("small").seeds >= 2
    # the standard preset: >= 3 pretraining seeds and >= 4 tasks (issue 10, item 7)
    standard = study_config("standard")
    assert standard.seeds >= 3 and len(standard.tasks) >= 4
    # ... and the width axis on every seed, so its loss change has an interval
    assert {s.seed for s in model_specs(standard) if "l0" in s.roles} == {0, 1, 2}
    one = dataclasses.replace(standard, l0_seeds=1)  # a cheaper family on request
    assert {s.seed for s in model_specs(one) if "l0" in s.roles} == {0}


def test_unknown_preset_and_task():
    with pytest.raises(UserError, match="unknown study preset"):
        study_config("huge")
    with pytest.raises(UserError, match="unknown task 'nope'"):
        study_config("quick", ["nope"])


def test_results_record_round_trips_and_refuses_another_schema(tmp_path):
    cfg = StudyConfig(tasks=["t1"], seeds=1)
    models, circuits = _rows(FAMILY, ["t1", "t2"])
    res = analyse(cfg, models, circuits, _eligibility(models, ["t1"]))
    res.timing = {"train_seconds": 1.5, "prune_seconds": math.nan}
    res.save(tmp_path / "results.json")
    back = StudyResults.load(tmp_path / "results.json")
    assert back.to_json() == res.to_json() and back.timing["prune_seconds"] is None
    assert back.answer["sentence"] == res.answer["sentence"] and back.models == models
    old = json.loads((tmp_path / "results.json").read_text()) | {"schema_version": 1}
    with pytest.raises(UserError, match="schema_version 1, .* --resume"):
        StudyResults.from_json(old)
    with pytest.raises(UserError, match=r"missing circuits, frontier, answer\)"):
        StudyResults.from_json({"schema_version": StudyResults.SCHEMA_VERSION, "models": []})


# Rows as older versions wrote them (schema 2 throughout): a model row before the eval
# noise was taken over windows (9c3b518) and one without roles or noise (as test fixtures
# write); an eligibility row before the empty circuit was measured (7e1b743); a circuit
# row before circuits outside the frontier were searched (6a3ec6d: no in_frontier) and
# before the mask_lr grid; a frontier row before nodes were measured (d6da827).
OLD_ROWS = {
    "models": [
        {"id": "w64_dense_s0", "label": "dense, d_model 64, seed 0", "kind": "dense"}
        | {"d_model": 64, "density": 1.0, "seed": 0, "roles": ["dense"], "n_layer": 2}
        | {"dir": "/cache/models/ab12", "total_params": 9, "nonzero_params": 9}
        | {"matrix_nonzero": 4, "heldout_loss": 3.5, "heldout_loss_batches": 8}
        | {"heldout_loss_std": 0.02, "heldout_loss_se": 0.007},
        {"id": "w64_d0.25_s0", "label": "sparse", "kind": "sparse", "d_model": 64}
        | {"n_layer": 2, "density": 0.25, "seed": 0, "dir": "models/x", "total_params": 9}
        | {"nonzero_params": 3, "matrix_nonzero": 1, "heldout_loss": None},
    ],
    "eligibility": [
        {"model": "w64_dense_s0", "task": "t1", "target_loss": 0.3, "loss": 0.2}
        | {"accuracy": 0.9, "loss_calibrated": 0.1, "accuracy_calibrated": 0.95}
        | {"loss_se": 0.01, "train_loss_calibrated": 0.1, "reaches": True},
    ],
    "circuits": [
        {"model": "w64_dense_s0", "task": "t1", "status": "ok", "message": None}
        | {"n_nodes": 3, "n_edges": 5, "metrics": {"circuit": {"loss": 0.2}}}
        | {"path": "circuits/w64_dense_s0/t1/circuit.json", "target_loss": 0.3}
        | {"k_coef": 0.01, "controls": None},
    ],
    "frontier": [
        {"id": "w64_dense_s0", "label": "dense", "kind": "dense", "d_model": 64}
        | {"density": 1.0, "seed": 0, "heldout_loss": 3.5, "model": "w64_dense_s0"}
        | {"roles": ["dense"], "geomean_edges": 5.0, "n_tasks": 1},
    ],
}


def test_rows_older_versions_wrote_load_and_are_written_back_as_they_were():
    old = {"schema_version": 2, "answer": {}} | copy.deepcopy(OLD_ROWS)
    res = StudyResults.from_json(old)
    dense, sparse = res.models
    (elig,), (circ,), (front,) = res.eligibility, res.circuits, res.frontier
    # what they lack takes what it meant then
    assert sparse.roles == [] and sparse.heldout_loss_se is None and dense.roles == ["dense"]
    assert dense.heldout_loss_windows is None and dense.extra == {"heldout_loss_batches": 8}
    assert not elig.trivial and elig.empty_loss_calibrated is None
    assert circ.in_frontier and circ.mask_lr is None and circ.legibility is None
    assert front.geomean_nodes is None and front.size("edges") == 5.0
    # written back key for key, in the file's order: an older study re-analysed or
    # explained keeps its rows as they were
    back = res.to_json()
    for name, rows in OLD_ROWS.items():
        assert [list(r.items()) for r in back[name]] == [list(r.items()) for r in rows]
    # a field set since (the legibility step) is added at the end, as the dict rows were
    circ.legibility = {"node_fraction": 0.5}
    assert list(circ.to_json())[-1] == "legibility"
    # a row missing what every version wrote is refused in one line naming it
    broken = copy.deepcopy(old)
    del broken["circuits"][0]["status"]
    with pytest.raises(UserError, match=r"circuits\[0\]: not a complete row \(missing status\)"):
        StudyResults.from_json(broken, "r.json")


def test_rows_this_version_makes_write_the_keys_they_always_had():
    """A circuit row that was not searched has no mask_lr key (the search sets it) and no
    legibility key (the legibility step adds it); no key is ever written as a null it
    never was."""
    row = circuit_row("m", "t", "not_eligible", message="why")
    keys = ["model", "task", "in_frontier", "status", "message", "n_nodes", "n_edges"]
    keys += ["metrics", "path", "target_loss", "k_coef", "controls"]
    assert list(row.to_json()) == keys
    searched = dataclasses.replace(row, status="ok", k_coef=0.01, mask_lr=0.05)
    assert list(searched.to_json()) == keys + ["mask_lr"]
    model = model_row("m", roles=["dense"])
    assert list(model.to_json()) == [
        *("id", "label", "kind", "d_model", "density", "seed", "roles", "n_layer", "dir"),
        *("total_params", "nonzero_params", "matrix_nonzero", "heldout_loss"),
        *("heldout_loss_windows", "heldout_loss_std", "heldout_loss_se"),
    ]
    elig = list(eligibility_row("m", "t").to_json())
    assert elig[:3] == ["model", "task", "target_loss"] and elig[-1] == "trivial"


def test_model_folders_are_found_where_the_cache_moved_them(tmp_path, monkeypatch):
    # bench_study times a study in a temporary cache, then merges its models into the
    # user's: results.json still names the temporary folder, gone by then.
    monkeypatch.setenv("SPARSECIRCUITS_CACHE", str(tmp_path / "cache"))
    moved = tmp_path / "cache" / "models" / "0123abcd"
    moved.mkdir(parents=True)
    gone = tmp_path / "tmp-run" / "cache" / "models" / "0123abcd"
    assert StudyResults.model_path(tmp_path / "study", model_row("m", dir=str(gone))) == moved
    here = tmp_path / "study" / "models" / "mine"  # a folder that is there wins
    here.mkdir(parents=True)
    assert StudyResults.model_path(tmp_path / "study", model_row("m", dir="models/mine")) == here
    missing = tmp_path / "elsewhere" / "models" / "other"  # not anywhere: left for the error
    assert StudyResults.model_path(tmp_path, model_row("m", dir=str(missing))) == missing


# --- measures on synthetic rows ---------------------------------------------------------


def test_interpolation_uses_the_bracketing_segment():
    # The case: sparse points at 3.70, 3.72, 3.90 and a dense model at 3.73. The
    # bracketing segment is [3.72, 3.90]; the segment with the nearest midpoint, [3.70,
    # 3.72], would extrapolate off it and give log edges 2 + 1 * 0.01 / 0.02 = 2.5.
    pts = [(3.70, 1.0), (3.72, 2.0), (3.90, 4.0)]
    value, extra = matched.interp(pts, 3.73)
    assert not extra
    assert value == pytest.approx(2.0 + 2.0 * 0.01 / 0.18)
    assert matched.interp(pts, 3.95) == (pytest.approx(4.0 + 2.0 * 0.05 / 0.18), True)
    assert matched.interp(pts, 3.60)[1] is True
    assert matched.interp(pts, 3.72) == (pytest.approx(2.0), False)


def _rows(spec, tasks, seeds=(0,), scale=None):
    """models and circuits from (id, roles, width, density, loss, edges per task) rows;
    every circuit has a quarter as many nodes as edges; `scale(seed)` multiplies a seed's
    sparse circuits (seed-to-seed spread)."""
    models, circuits = [], []
    for seed in seeds:
        for mid, roles, w, d, loss, edges in spec:
            models.append(
                model_row(
                    f"{mid}_s{seed}",
                    "dense" if d == 1 else "sparse",
                    seed,
                    label=mid,
                    d_model=w,
                    density=d,
                    roles=roles,
                    heldout_loss=loss,
                    heldout_loss_se=0.001,
                )
            )
            for t, e in zip(tasks, edges, strict=True):
                e = round(e * (scale(seed) if scale and d < 1 else 1))
                circuits.append(circuit_row(f"{mid}_s{seed}", t, n_edges=e, n_nodes=e // 4))
    return models, circuits


FAMILY = [  # id, roles, width, density, held-out loss, edges on t1, t2
    ("d32", ["dense"], 32, 1.0, 3.90, [400, 800]),
    ("d64", ["dense"], 64, 1.0, 3.71, [1600, 3200]),
    ("s50", ["density"], 64, 0.5, 3.70, [200, 400]),
    ("s25", ["density"], 64, 0.25, 3.80, [100, 200]),
    ("s12", ["density", "l0"], 64, 0.125, 3.92, [50, 100]),
]


def test_dense_sparse_ratio_interpolates_and_keeps_extrapolations_apart():
    models, circuits = _rows(FAMILY, ["t1", "t2"], seeds=(0, 1, 2))
    r = measures.dense_sparse(models, circuits, ["t1", "t2"])
    by = {(x["model"], x["task"]): x for x in r["readings"]}
    # d64 (3.71) lies on the sparse segment [3.70, 3.80]: log edges 10% of the way 200 -> 100
    want = 1600 / math.exp(math.log(200) + 0.1 * math.log(0.5))
    assert by[("d64_s0", "t1")]["ratio"] == pytest.approx(want)
    assert not by[("d64_s0", "t1")]["extrapolated"]
    # s12 (3.92) is beyond the dense curve (3.71-3.90): extrapolated, not in the headline
    assert by[("s12_s0", "t1")]["extrapolated"]
    interpolated = [x["ratio"] for x in r["readings"] if x["seed"] == 0 and not x["extrapolated"]]
    # per task: d32, d64 and s25 interpolated; s50 (3.70, below the dense curve) and s12
    # extrapolated. One value per seed: the geomean of its six interpolated readings.
    assert len(interpolated) == 6 and r["n_interpolated"] == 18 and r["n_extrapolated"] == 12
    assert (
        r["ratio"]["n"] == 3 and r["ratio"]["df"] == 2 and r["ratio"]["method"] == "t across seeds"
    )
    assert r["ratio"]["value"] == pytest.approx(measures.geomean(interpolated))
    # every seed gives the same ratio: the interval is that point, and excludes 1
    assert r["ratio"]["low"] == pytest.approx(r["ratio"]["value"]) and r["verdict"] == "found"
    # nodes are read the same way (a quarter of the edges: the same ratios)
    nodes = measures.dense_sparse(models, circuits, ["t1", "t2"], "nodes")
    assert nodes["ratio"]["value"] == pytest.approx(r["ratio"]["value"], rel=0.01)


def test_the_interval_is_across_seeds_not_cells():
    # three seeds whose sparse circuits differ by 2x: six (task, seed) cells, but the
    # interval has 3 values and df 2, and the t quantile of df 2 (4.303) sets its width
    models, circuits = _rows(FAMILY, ["t1", "t2"], seeds=(0, 1, 2), scale=lambda s: 2.0**s)
    r = measures.dense_sparse(models, circuits, ["t1", "t2"])["ratio"]
    logs = [math.log(v) for v in r["per_seed"].values()]
    assert len(logs) == 3 and r["df"] == 2
    mean = sum(logs) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / 2)
    assert math.log(r["high"]) - mean == pytest.approx(4.303 * sd / math.sqrt(3))
    assert r["sd"] == pytest.approx(sd)
    # what this spread could detect at 3 seeds, and the seeds needed for 1.5x and 2x
    pw = measures.dense_sparse(models, circuits, ["t1", "t2"])["power"]
    assert pw["detectable"] == pytest.approx(math.exp((4.303 + 1.061) * sd / math.sqrt(3)))
    assert pw["seeds_needed"]["2.0"] < pw["seeds_needed"]["1.5"]


def test_seed_estimates_and_verdicts():
    est = matched.seed_estimate({0: 0.05, 1: -0.01, 2: 0.03})
    assert est["value"] == pytest.approx(0.07 / 3) and est["df"] == 2
    assert est["low"] < 0 < est["high"] and measures.verdict(est, 0.0) == "not found"
    assert 0.05 < est["p"] < 1
    one = matched.seed_estimate({0: 3.0})
    assert one["low"] is None and measures.verdict(one) == "no interval"
    assert measures.verdict(None) == "not measured"
    # a log estimate reports ratios
    ratio = matched.seed_estimate({0: math.log(2), 1: math.log(2)}, log=True)
    assert ratio["value"] == pytest.approx(2) and ratio["low"] == pytest.approx(2)
    # Holm decides once it has run: a p of 0.03 among three tests is not found
    found = dict(est, low=0.01, high=0.05, p=0.03, p_holm=0.09)
    assert measures.verdict(found, 0.0) == "not found"
    assert measures.verdict(dict(found, p_holm=0.01), 0.0) == "found"


def test_power_and_seeds_needed_match_the_t_approximation():
    # sd 0.4 in log units (the standard study's seed spread was ~0.46): 5 seeds detect
    # exp((2.776 + 0.941) * 0.4 / sqrt 5) = 1.94x
    assert stats.detectable(0.4, 5) == pytest.approx((2.776 + 0.941) * 0.4 / math.sqrt(5))
    assert stats.detectable(0.4, 1) == math.inf
    n = stats.units_needed(0.4, math.log(2))
    assert stats.detectable(0.4, n) <= math.log(2) < stats.detectable(0.4, n - 1)
    assert stats.units_needed(0.4, 0.0) is None


def test_density_and_width_axes():
    fam = FAMILY + [
        ("w32", ["l0"], 32, 0.5, 3.95, [100, 200]),
        ("w128", ["l0"], 128, 0.03125, 3.915, [25, 50]),
    ]
    models, circuits = _rows(fam, ["t1", "t2"], seeds=(0, 1))
    d = measures.density_trend(models, circuits, ["t1", "t2"])
    # edges halve at every halving of density, on every task and seed; so do nodes, and
    # edges per node stay: the trend is in nodes per circuit
    assert d["edges_factor"]["value"] == pytest.approx(0.5)
    assert d["edges_verdict"] == "found" and d["edges_factor"]["n"] == 2
    assert d["nodes_factor"]["value"] == pytest.approx(0.5, rel=0.02)
    assert d["edges_per_node_factor"]["value"] == pytest.approx(1.0, rel=0.02)
    assert d["loss_change"]["value"] > 0 and d["loss_verdict"] == "found"
    w = measures.width_effect(models, circuits, ["t1", "t2"])
    assert w["edges_factor"]["value"] == pytest.approx(0.5)
    assert [p["x"] for p in w["points"]] == [32, 64, 128]
    assert w["points"][0]["geomean_nodes"] == pytest.approx(math.sqrt(25 * 50))
    # loss per doubling of width: (3.915 - 3.95) / 2 = -0.0175, larger than the eval noise
    assert w["loss_change"]["value"] == pytest.approx(-0.0175)
    assert w["eval_noise"] == pytest.approx(0.002) and w["loss_verdict"] == "found"


def test_the_scale_ladder_says_whether_size_and_legibility_fall_hold_or_rise():
    """Three axes over d_model 64-512, three seeds: dense circuits double per doubling of
    width (rises), sparse ones at fixed nonzeros halve (falls), at fixed density they vary
    by seed around no change (holds); legibility falls along the dense axis."""
    widths = [64, 128, 256, 512]
    rows = []
    for i, w in enumerate(widths):
        rows.append((f"dense{w}", ["dense"], w, 1.0, 3.6 - 0.1 * i, [100 * 2**i]))
        rows.append((f"l0_{w}", ["l0"], w, 0.125 / 4**i, 3.7 - 0.05 * i, [400 // 2**i]))
        rows.append((f"fd{w}", ["fixed_density"], w, 0.125, 3.65 - 0.1 * i, [200]))
    models, circuits = _rows(rows, ["t1"], seeds=(0, 1, 2))
    for c in circuits:  # fixed density: seed-dependent noise around no trend
        seed = int(c.model[-1])
        if c.model.startswith("fd"):
            w = int(c.model[2:].split("_")[0])
            c.n_edges = round(200 * (1.3 if (w // 64 + seed) % 2 else 0.8))
            c.n_nodes = c.n_edges // 4
        frac = 0.5 - 0.05 * widths.index(next(x for x in widths if str(x) in c.model))
        c.legibility = {
            "node_fraction": frac if c.model.startswith("dense") else 0.3,
            "effect_fraction": None,
            "criterion": "c",
        }
    axes = measures.scale(models, circuits, ["t1"])
    assert set(axes) == {"dense", "l0", "fixed_density"} and axes["dense"]["widths"] == widths
    assert axes["dense"]["edges_factor"]["value"] == pytest.approx(2.0)
    assert axes["l0"]["edges_factor"]["value"] == pytest.approx(0.5, rel=0.02)
    measures.scale_legibility(models, circuits, axes)
    assert axes["dense"]["legibility_change"]["value"] == pytest.approx(-0.05)
    measures.holm_family({"scale": axes})
    words = answer._scale_words(axes)
    assert "dense (d_model 64-512), per doubling of width: circuit edges rises" in words
    assert (
        "weight-sparse at fixed nonzeros (d_model 64-512), per doubling of width: circuit edges falls"
        in words
    )
    assert (
        "weight-sparse at fixed density (d_model 64-512), per doubling of width: circuit edges no change resolved"
        in words
    )
    assert "share of nodes explained falls" in words


def test_each_rungs_cost_is_stated_before_it_trains():
    cfg = study_config("scale")
    lines = study_run.training_costs(cfg, model_specs(cfg))
    assert len(lines) == len(model_specs(cfg)) + 1 and lines[-1].startswith("to train: 33 models")
    per = {ln.split(":")[0]: float(ln.split("~")[1].split()[0]) for ln in lines[:-1]}
    # at fixed density the rung's compute grows ~4x per doubling of width
    assert per["to train w512_d0.125_s0"] > 3 * per["to train w256_d0.125_s0"]


def test_loss_changes_get_a_t_interval_across_seeds():
    # three seeds whose density slopes disagree in sign: the t-interval (df 2) includes 0
    units = {0: 0.05, 1: -0.01, 2: 0.03}
    iv = matched.seed_estimate(units)
    mean = sum(units.values()) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in units.values()) / 2)
    assert iv["value"] == pytest.approx(mean) and iv["n_seeds"] == 3
    assert iv["high"] - iv["value"] == pytest.approx(4.303 * sd / math.sqrt(3))
    assert measures._loss_verdict(iv, 0.001) == "not found"
    assert measures._loss_verdict(iv, 0.5) == "within eval noise"
    one = matched.seed_estimate({0: 0.05})
    assert measures._loss_verdict(one, 0.001) == "above eval noise, one seed (no interval)"
    assert "95% t-interval" in answer.fmt_interval(iv, " nats", 3)
    assert "3 seeds, df 2" in answer.fmt_interval(iv, " nats", 3)


def _curve_family(seeds=(0, 1, 2)):
    """Dense losses 3.40-3.60, sparse 3.45-3.65 (overlap 3.45-3.60 in every seed); log
    edges linear in loss on each curve, dense = 20000 e^(-10 (L - 3.4)), sparse = 10000
    e^(-20 (L - 3.4)): dense/sparse = 2 e^(10 (L - 3.4)) at every loss L."""
    fam = []
    for i, loss in enumerate((3.40, 3.45, 3.50, 3.55, 3.60)):
        fam.append(
            (f"d{i}", ["dense"], 32 + 8 * i, 1.0, loss, [20000 * math.exp(-10 * (loss - 3.4))])
        )
    for i, loss in enumerate((3.45, 3.55, 3.65)):
        edges = [10000 * math.exp(-20 * (loss - 3.4))]
        fam.append((f"s{i}", ["density"], 64, 0.5 / 2**i, loss, edges))
    return _rows(fam, ["t1"], seeds=seeds)


def test_the_ratio_is_read_at_fixed_losses_inside_the_overlap():
    models, circuits = _curve_family()
    cfg = StudyConfig(loss_quantiles=[0.0, 0.5, 1.0])
    fl = measures.fixed_loss(cfg, models, circuits, ["t1"])
    ov = fl["overlap"]
    assert ov["common"] == pytest.approx([3.45, 3.60]) and ov["width"] == pytest.approx(0.15)
    # seed-mean losses inside the overlap: dense 3.45, 3.50, 3.55, 3.60; sparse 3.45, 3.55
    assert len(ov["inside"]["dense"]) == 4 and len(ov["inside"]["sparse"]) == 2
    assert fl["losses"] == pytest.approx([3.45, 3.525, 3.60])
    for p in fl["edges"]["points"]:
        # linear interpolation of log edges is exact on these curves (edges are rounded)
        want = 2 * math.exp(10 * (p["loss"] - 3.4))
        assert p["estimate"]["value"] == pytest.approx(want, rel=0.02)
        assert p["estimate"]["n"] == 3 and p["n_readings"] == 3
    # the ratio grows e-fold per 0.1 nats of loss
    assert fl["edges"]["per_0.1_nats"]["value"] == pytest.approx(math.e, rel=0.05)
    # a loss outside one seed's sparse curve is not read there (no extrapolation)
    models = [m if m.id != "s2_s1" else dataclasses.replace(m, heldout_loss=3.58) for m in models]
    assert matched.overlap(models)["common"] == pytest.approx([3.45, 3.58])
    text = answer._fixed_loss_words(fl)
    assert text.startswith("the curves overlap in every seed from 3.450 to 3.600 (0.150 nats")
    assert "Pareto" in text
    # 4 dense but 2 sparse models inside: the family is short of the rule
    assert "short of the rule of >= 0.1 nats with >= 3 of each kind" in text


def test_legibility_is_read_at_the_fixed_losses_as_size_is():
    """Dense circuits explain 0.2 of their nodes at every loss, sparse ones 0.2 + (L - 3.4):
    sparse - dense at a fixed loss L is L - 3.4, read per seed on both curves."""
    models, circuits = _curve_family()
    loss_of = {m.id: m.heldout_loss for m in models}
    for c in circuits:
        sparse = c.model.startswith("s")
        frac = 0.2 + (loss_of[c.model] - 3.4 if sparse else 0.0)
        c.legibility = {"node_fraction": frac, "effect_fraction": None, "criterion": "c"}
    losses = matched.fixed_losses(matched.overlap(models), [0.0, 1.0])
    leg = measures.legibility(models, circuits, losses, ["t1"])
    points = leg["node_fraction"]["at_losses"]["points"]
    assert [p["loss"] for p in points] == pytest.approx([3.45, 3.60])
    for p in points:
        assert p["estimate"]["value"] == pytest.approx(p["loss"] - 3.4)
        assert p["estimate"]["n"] == 3 and not p["estimate"]["log"]
    # it joins the verdicts (descriptive), and the sentence reads it
    ms = {"legibility": leg}
    names = {r["name"]: r for r in measures.holm_family(ms)}
    assert names["legibility node_fraction at loss 3.450"]["family"] == "descriptive"
    assert "at fixed held-out losses, sparse - dense 3.450: 0.05" in answer.legibility_sentence(leg)


def test_the_sparse_pareto_curve_keeps_the_undominated_models():
    pts = [(3.4, 10.0, "a"), (3.5, 12.0, "b"), (3.6, 5.0, "c"), (3.7, 6.0, "d")]
    assert matched.pareto(pts) == [(3.4, 10.0, "a"), (3.6, 5.0, "c")]
    fam = [
        ("d0", ["dense"], 32, 1.0, 3.40, [100]),
        ("d1", ["dense"], 64, 1.0, 3.60, [400]),
        ("s0", ["density"], 64, 0.5, 3.45, [50]),
        ("s1", ["density"], 64, 0.25, 3.55, [60]),
        ("w", ["l0"], 128, 0.03, 3.50, [20]),  # only on the Pareto curve: a width-axis model
    ]
    models, circuits = _rows(fam, ["t1"])
    values = measures.ok_values(circuits)
    front = [p[2] for p in matched.pareto_curve(models, values, 0, "t1")]
    assert front == ["s0_s0", "w_s0"]  # s1 (3.55, 60 edges) is beaten by w (3.50, 20)


def test_holm_decides_the_study_verdicts():
    """Two effects whose intervals exclude no change (p 0.03 and 0.04 alone) are not
    found once the family's Holm correction applies (0.06 each)."""

    def est(p):
        return {"value": 2.0, "low": 1.1, "high": 3.0, "p": p, "n": 5, "df": 4}

    ms = {
        "dense_sparse": {"ratio": est(0.03), "verdict": "found"},
        "density": {"edges_factor": est(0.04), "edges_verdict": "found"},
        "dense_sparse_nodes": {"ratio": est(0.03)},  # descriptive: not in the family
    }
    rows = {r["name"]: r for r in measures.holm_family(ms)}
    assert rows["dense/sparse edges at matched loss"]["p_holm"] == pytest.approx(0.06)
    assert rows["edges per halving of density"]["p_holm"] == pytest.approx(0.06)
    nodes = rows["dense/sparse nodes at matched loss"]
    assert nodes["family"] == "descriptive" and nodes["p_holm"] is None
    assert nodes["verdict"] == "found"  # its own interval excludes 1
    assert ms["dense_sparse"]["verdict"] == "not found" == ms["density"]["edges_verdict"]
    ms["dense_sparse"]["ratio"]["p"] = 0.001
    measures.holm_family(ms)
    assert ms["dense_sparse"]["verdict"] == "found"  # 0.002 after Holm


def test_a_loss_change_within_eval_noise_is_not_a_finding():
    fam = [
        ("a", ["l0"], 32, 0.5, 3.900, [10]),
        ("b", ["l0"], 64, 0.125, 3.901, [20]),
    ]
    models, circuits = _rows(fam, ["t1"])
    w = measures.width_effect(models, circuits, ["t1"])
    assert w["loss_verdict"] == "within eval noise"


def _eligibility(models, tasks, miss=()):
    return [
        eligibility_row(
            m.id,
            t,
            reaches=(m.id, t) not in miss,
            accuracy_calibrated=0.8 if (m.id, t) in miss else 0.95,
        )
        for m in models
        for t in tasks
    ]


def test_target_rule_uses_calibrated_test_loss_and_accuracy():
    good = {"loss_calibrated": 0.14, "accuracy_calibrated": 0.92, "loss": 3.0, "accuracy": 0.1}
    assert measures.reaches(good, 0.15, 0.9)
    assert not measures.reaches(good | {"loss_calibrated": 0.16}, 0.15, 0.9)
    assert not measures.reaches(good | {"accuracy_calibrated": 0.89}, 0.15, 0.9)


def test_target_rule_and_validation_decide_what_counts():
    cfg = StudyConfig(tasks=["t1", "t2"], seeds=1, target_loss=0.3)
    models, circuits = _rows(FAMILY, ["t1", "t2"])
    # one model misses the accuracy bar on t2: t2 leaves the frontier for every model
    elig = _eligibility(models, ["t1", "t2"], miss={("s25_s0", "t2")})
    assert measures.frontier_tasks(cfg, elig) == ["t1"]
    # a circuit that failed validation on test pairs is not counted
    for c in circuits:
        if (c.model, c.task) == ("s50_s0", "t1"):
            c.status = "failed_validation"
    res = analyse(cfg, models, circuits, elig)
    front = {f.model: f for f in res.frontier}
    assert front["s50_s0"].n_tasks == 0 and front["s50_s0"].geomean_edges is None
    assert front["s25_s0"].geomean_edges == pytest.approx(100)
    assert res.study["frontier_tasks"] == ["t1"]
    assert all(x["task"] == "t1" for x in res.measures["dense_sparse"]["readings"])
    n = len(models)
    reach = f"full models reaching each task: t1 {n} of {n}; t2 {n - 1} of {n}"
    assert reach in res.answer["details"]
    # a task the empty circuit does is counted apart
    elig[0].trivial = True
    assert measures.reach_counts(cfg, elig).startswith(f"t1 {n} of {n}, 1 of them with the empty")


def test_controls_that_come_close_are_named_in_the_answer():
    cfg = StudyConfig(tasks=["t1"], seeds=1)
    models, circuits = _rows(FAMILY, ["t1", "t2"])
    for c in circuits:
        far = {"status": "unreachable", "n_edges": None}
        c.controls = {
            "nonsense": far,
            "random_init": far,
            "random_circuits": {"reach_target": 0.0},
        }
        if c.model == "s25_s0" and c.task == "t1":
            c.controls["nonsense"] = {"status": "ok", "n_edges": 150}  # < 2 x 100
    ctl = measures.controls([c for c in circuits if c.task == "t1"])
    assert ctl["close"]["nonsense"] == ["s25_s0/t1"] and ctl["n_checked"] == 5
    assert not ctl["close"]["random_init"] and not ctl["close"]["random_circuits"]
    res = analyse(
        cfg, models, [c for c in circuits if c.task == "t1"], _eligibility(models, ["t1"])
    )
    assert "nonsense on 1 of 5 (s25_s0/t1)" in res.answer["sentence"]
    assert "one pretraining seed" in res.answer["sentence"].lower()
    assert "interval" in res.answer["sentence"]


def test_circuits_outside_the_frontier_enter_no_comparison():
    cfg = StudyConfig(tasks=["t1", "t2"], seeds=1)
    models, circuits = _rows(FAMILY, ["t1", "t2"])
    elig = _eligibility(models, ["t1", "t2"], miss={("s25_s0", "t2")})
    for c in circuits:
        c.in_frontier = c.task == "t1"
        close = {"status": "ok", "n_edges": 1}  # a control that would be named if counted
        c.controls = {"nonsense": close if c.task == "t2" else {"status": "unreachable"}}
        if (c.model, c.task) == ("s25_s0", "t2"):
            c.status, c.n_edges = "not_eligible", None
    res = analyse(cfg, models, circuits, elig)
    assert res.study["frontier_tasks"] == ["t1"]
    assert {r["task"] for r in res.measures["dense_sparse"]["readings"]} == {"t1"}
    assert res.measures["controls"]["n_checked"] == len(models)  # t1's circuits only
    assert "come close" not in res.answer["sentence"]  # the outside controls are apart
    n = len(models)
    # their controls are summed up on their own line, where the close ones are named
    line = (
        f"circuits outside the frontier (a model that reaches a task not every model reaches; "
        f"not in the circuit-size comparison): {n - 1} validated of {n - 1} searched; their controls come close "
        f"(nonsense on {n - 1} of {n - 1} ("
    )
    assert any(d.startswith(line) for d in res.answer["details"])


def test_no_frontier_says_why():
    cfg = StudyConfig(tasks=["t1"], seeds=1)
    models, circuits = _rows(FAMILY, ["t1", "t2"])
    res = analyse(cfg, models, circuits, _eligibility(models, ["t1"], miss={("d32_s0", "t1")}))
    assert "no task entered the frontier" in res.answer["sentence"]
    no_controls = "No frontier circuit validated, so no controls in the comparison"
    assert no_controls in res.answer["sentence"]
    assert res.answer["ratio"] is None


def test_nonsense_task_keeps_prompts_and_swaps_answers_at_random():
    task = get_task("single_double_quote", 64, 16, 0)
    nt = nonsense_task(task, 0)
    assert [(p.prompt_a, p.prompt_b) for p in nt.train] == [
        (p.prompt_a, p.prompt_b) for p in task.train
    ]
    swapped = sum(p.answer_a != q.answer_a for p, q in zip(task.train, nt.train, strict=True))
    assert 16 < swapped < 48  # about half the pairs lose their relation to the prompt
    assert nonsense_task(task, 0).train == nt.train


# --- the pipeline -----------------------------------------------------------------------


@pytest.mark.slow
def test_study_end_to_end_resume_and_refusal(tmp_path, tiny_study, monkeypatch, capsys):
    out = tmp_path / "study"
    res = run_study(tiny_study, out, progress=False)
    assert (out / "results.json").exists() and (out / "frontier.png").stat().st_size > 1000
    saved = json.loads((out / "results.json").read_text())
    assert saved["schema_version"] == StudyResults.SCHEMA_VERSION
    ids = [m["id"] for m in saved["models"]]
    assert len(ids) == 4 and "w32_d0.25_s0" in ids  # shared by the density and l0 curves
    batch_size = tiny_study.train_overrides["batch_size"]
    for m in saved["models"]:
        # the eval noise comes from every held-out window training evaluated, not 2 batch means
        assert m["heldout_loss_windows"] == 2 * batch_size
        model, tok = load(m["dir"])
        windows = study_run.heldout_window_losses(Path(m["dir"]), model, tok, 2, batch_size)
        assert float(windows.mean()) == pytest.approx(m["heldout_loss"], abs=1e-4)
        assert m["heldout_loss_se"] == pytest.approx(float(windows.std()) / len(windows) ** 0.5)
        assert m["heldout_loss_se"] > 0
    assert len(saved["eligibility"]) == 4 and all(r["reaches"] for r in saved["eligibility"])
    # the empty circuit is measured beside every full model (not refused here: see below)
    assert all(r["empty_loss_calibrated"] > 0 and not r["trivial"] for r in saved["eligibility"])
    for c in saved["circuits"]:
        assert c["status"] in ("ok", "failed_validation", "collapsed", "unreachable")
        if c["n_edges"] is None:
            continue
        m = c["metrics"]
        # raw and calibrated test numbers side by side; the grid tried every k_coef
        assert {"loss", "accuracy", "loss_calibrated", "accuracy_calibrated"} <= set(m["circuit"])
        assert [g["k_coef"] for g in m["grid"]] == tiny_study.k_coefs
        assert c["k_coef"] in tiny_study.k_coefs
        assert m["validation"]["status"] == c["status"]
        assert m["validation"]["split"] == "select"  # chosen on selection pairs, not test
        assert set(c["controls"]) == {"nonsense", "inverted", "random_init", "random_circuits"}
    assert set(saved["measures"]) == {
        "dense_sparse",
        "dense_sparse_nodes",
        "fixed_loss",
        "density",
        "width",
        "controls",
        "holm",
    }
    assert res.answer["sentence"] == saved["answer"]["sentence"]

    # the summary is regenerated from results.json alone, by today's analysis: a stale
    # answer in the file is recomputed from its rows, and the run's wall time is kept
    (out / "summary.md").unlink()
    stale = dict(saved, answer=dict(saved["answer"], sentence="A stale answer."))
    (out / "results.json").write_text(json.dumps(stale))
    assert main(["study", "--out", str(out), "--summary"]) == 0
    text = (out / "summary.md").read_text()
    assert saved["answer"]["sentence"] in text and "w64_d0.0625_s0" in text
    assert "stale" not in text and "stale" not in (out / "report.html").read_text()
    assert json.loads((out / "results.json").read_text())["timing"] == saved["timing"]

    # a second run reuses every model and circuit
    def boom(*a, **k):
        raise AssertionError("should have been cached")

    monkeypatch.setattr(study_run, "train", boom)
    monkeypatch.setattr(study_run, "find_circuit", boom)
    again = run_study(tiny_study, out, resume=True, progress=False)
    assert again.circuits == res.circuits
    # a study.json written before a field existed resumes as the same study (the field
    # takes its default), as long as the saved values match
    marker = json.loads((out / "study.json").read_text())
    del marker["outside_frontier"]
    (out / "study.json").write_text(json.dumps(marker))
    assert run_study(tiny_study, out, resume=True, progress=False).circuits == res.circuits
    # a config key this version does not know: one line naming the file and the key
    (out / "results.json").write_text(
        json.dumps(dict(saved, study=dict(saved["study"], config={**marker, "foo": 1})))
    )
    assert main(["study", "--out", str(out), "--summary"]) == 2
    assert "results.json: unknown study config key 'foo'" in capsys.readouterr().err

    # a different study in the same folder is refused, unless --force (one that only adds
    # models or tasks grows instead: tests/test_study_grow.py)
    other = StudyConfig(**{**tiny_study.__dict__, "target_loss": 9.0})
    with pytest.raises(UserError, match="holds a different study"):
        run_study(other, out, resume=True, progress=False)

    # Models at chance meet a target above chance with every node ablated: refused, no task
    # has a circuit to size (the models are cached, nothing trains again).
    monkeypatch.undo()
    strict = dataclasses.replace(tiny_study, prune={**tiny_study.prune, "refuse_trivial": True})
    res = run_study(strict, out, force=True, progress=False)
    assert all(r.trivial for r in res.eligibility) and not res.study["frontier_tasks"]
    assert {c.status for c in res.circuits} == {"trivial"}
    assert "the empty circuit (every node mean-ablated) reaches" in res.circuits[0].message


def test_models_that_reach_a_task_outside_the_frontier_get_their_circuits(
    tmp_path, tiny_study, monkeypatch
):
    """One model misses the task: it leaves the frontier, yet the models that reach it
    still get a circuit (with controls), flagged outside the frontier; the one that misses
    gets none. Off (`outside_frontier=False`), none is searched."""
    real_rows = study_run.full_model_rows
    miss = "w32_d0.25_s0"

    def one_misses(cfg, spec, device):
        rows = real_rows(cfg, spec, device)
        return [dataclasses.replace(r, reaches=False) if spec.id == miss else r for r in rows]

    monkeypatch.setattr(study_run, "full_model_rows", one_misses)
    res = run_study(tiny_study, tmp_path / "on", progress=False)
    assert not res.study["frontier_tasks"]
    by_model = {c.model: c for c in res.circuits}
    assert by_model[miss].status == "not_eligible" and by_model[miss].in_frontier is False
    searched = [c for m, c in by_model.items() if m != miss]
    assert searched and all(c.in_frontier is False for c in searched)
    assert all(c.status != "not_eligible" and c.metrics for c in searched)
    assert all(set(c.controls) >= {"nonsense", "random_circuits"} for c in searched)
    assert res.measures["controls"]["n_checked"] == 0  # controls of the frontier only
    assert not res.measures["dense_sparse"]["readings"]
    assert "| no |" in (tmp_path / "on" / "summary.md").read_text()
    add_legibility(tmp_path / "on", progress=False)
    write_summary(tmp_path / "on")
    text = (tmp_path / "on" / "summary.md").read_text()
    assert "## Legibility outside the frontier (not in the circuit-size comparison)" in text
    assert "Outside the frontier (not in the circuit-size comparison), legibility" in text

    off = dataclasses.replace(tiny_study, outside_frontier=False)
    res = run_study(off, tmp_path / "off", progress=False)
    assert {c.status for c in res.circuits} == {"not_eligible"}


def test_every_search_uses_the_same_pairs_and_the_full_grid(tmp_path, tiny_study, monkeypatch):
    """Across pretraining seeds, every model's circuit and each of its controls are
    searched on the same prompt pairs with the same search seed, over the whole
    k_coef x mask_lr grid (controls included), with selection pairs given."""
    cfg = dataclasses.replace(
        tiny_study, seeds=2, l0_widths=[32], densities=[0.5], mask_lrs=[0.05, 0.2]
    )
    calls = []
    real = study_run.find_circuit

    def recording(model, train_b, test_b, means, pcfg, *a, **kw):
        calls.append((kw["task_name"] if "task_name" in kw else a[1], train_b, test_b, pcfg, kw))
        return real(model, train_b, test_b, means, pcfg, *a, **kw)

    monkeypatch.setattr(study_run, "find_circuit", recording)
    run_study(cfg, tmp_path / "s", progress=False)
    assert {m.seed for m in model_specs(cfg)} == {0, 1}
    assert len(calls) >= 2 * len(model_specs(cfg))  # real circuits and controls
    for name, train_b, test_b, pcfg, kw in calls:
        assert kw["k_coefs"] == cfg.k_coefs and kw["mask_lrs"] == [0.05, 0.2]
        assert kw["select_b"] is not None and pcfg.seed == cfg.search_seed
        if "(" not in name:  # the real task (controls relabel the same prompts)
            assert torch.equal(train_b.tokens, calls[0][1].tokens)
            assert torch.equal(test_b.correct, calls[0][2].correct)


def test_parallel_jobs_fill_the_caches_the_serial_study_reads(tmp_path, tiny_study, monkeypatch):
    monkeypatch.setenv("SPARSECIRCUITS_CACHE", str(tmp_path / "cache"))  # nothing trained yet
    out = tmp_path / "study"
    with pytest.raises(UserError, match="--jobs must be at least 1"):
        run_study(tiny_study, out, progress=False, jobs=0)
    res = run_study(tiny_study, out, progress=False, force=True, jobs=2)
    assert len(res.models) == 4 and all(m.heldout_loss is not None for m in res.models)
    assert [(c.model, c.task) for c in res.circuits] == [
        (m.id, t) for m in res.models for t in tiny_study.tasks
    ]
    assert all(c.n_edges is not None for c in res.circuits)

    def boom(*a, **k):
        raise AssertionError("should have been cached")

    monkeypatch.setattr(study_run, "train", boom)
    monkeypatch.setattr(study_run, "find_circuit", boom)
    again = run_study(tiny_study, out, resume=True, progress=False)
    assert again.circuits == res.circuits and again.models == res.models


def test_a_killed_prune_leaves_nothing_half_reused(tmp_path, tiny_study, monkeypatch):
    tiny_study.controls = False
    out = tmp_path / "s"
    real = study_run.find_circuit
    calls = {"n": 0}

    def dies_second_time(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(study_run, "find_circuit", dies_second_time)
    with pytest.raises(KeyboardInterrupt):
        run_study(tiny_study, out, progress=False)
    keys = list((out / "circuits").rglob("key.json"))
    assert len(keys) == 1  # only the finished circuit is marked done
    monkeypatch.setattr(study_run, "find_circuit", real)
    res = run_study(tiny_study, out, resume=True, progress=False)
    assert len(res.circuits) == 4


def test_summary_refuses_a_missing_or_old_result(tmp_path, capsys):
    assert main(["study", "--out", str(tmp_path), "--summary"]) == 2
    assert "no results.json" in capsys.readouterr().err
    (tmp_path / "results.json").write_text(json.dumps({"schema_version": 1}))
    assert main(["study", "--out", str(tmp_path), "--summary"]) == 2
    assert "schema_version 1" in capsys.readouterr().err


def test_cli_refuses_foreign_out(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    assert main(["study", "--preset", "quick", "--out", str(tmp_path / "x")]) == 2
    assert "not a study folder" in capsys.readouterr().err
    assert (tmp_path / "x" / "notes.txt").read_text() == "mine"


def test_a_preset_study_saved_before_presets_pinned_precision_is_the_same_study():
    today = dataclasses.asdict(study_config("quick"))
    saved = copy.deepcopy(today)
    del saved["train_overrides"]["precision"]  # as runs/demo/study.json was written
    assert StudyConfig.completed(saved, "study.json") == today
    # a study of its own (not a preset's) keeps what it saved: nothing pinned it
    own = dict(copy.deepcopy(saved), preset="mine")
    assert StudyConfig.completed(own, "study.json")["train_overrides"] == saved["train_overrides"]
