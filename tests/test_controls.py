"""The study's rules that keep its numbers honest, on the planted model where the truth is
known: controls that can fail (they come close when they should), selection pairs that
decide while test pairs are only reported, and the k_coef x mask_lr grid."""

from __future__ import annotations

import copy
import dataclasses
import itertools

import pytest
import torch

from sparsecircuits.nodes import compute_node_means, node_sites
from sparsecircuits.planted import SOFT, planted_batch, planted_model
from sparsecircuits.prune import TargetUnreachable, find_circuit
from sparsecircuits.prune_methods import PruneConfig
from sparsecircuits.study import answer, inverted_task, measures, nonsense_task
from sparsecircuits.study.run import control_record
from sparsecircuits.tasks import TaskBatch, get_task
from study_fixture import circuit_row
from test_planted import PLANTED, TARGET, planted

CFG = PruneConfig(method="masks", target_loss=TARGET, steps=300, random_draws=0, effect_nodes=0)


pytestmark = pytest.mark.usefixtures("one_thread")


def inverted(b: TaskBatch) -> TaskBatch:
    """Every prompt's answers swapped: the batch `inverted_task` encodes to."""
    return dataclasses.replace(b, correct=b.incorrect, incorrect=b.correct)


def control_row(model, train, test, means) -> dict:
    """A control as the study records it (study/run.py `_control`)."""
    try:
        c = find_circuit(model, train, test, means, CFG, progress=False, require_full_model=False)
    except TargetUnreachable:
        return {"status": "unreachable", "n_edges": None, "test_loss_calibrated": None}
    return control_record(c)


def flipped_model():
    """The planted model trained, as it were, on the inverted rule: its head writes minus
    the key sign, so it answers Y after A and X after B with the same seven nodes."""
    model = planted_model(SOFT)
    with torch.no_grad():
        model.blocks[0].attn.o_proj.weight[4, 0] = -1.0
    model.requires_grad_(False)
    sites = node_sites(model.cfg)
    windows = [planted_batch(64, 100 + i).tokens for i in range(2)]
    return model, compute_node_means(model, windows, sites, progress=False)


def test_the_inverted_rule_control_comes_close_only_where_the_model_learned_that_rule():
    p = planted(SOFT)
    real = find_circuit(p.model, p.train, p.test, p.means, CFG, progress=False)
    assert {n.name for n in real.nodes} == PLANTED
    on_planted = control_row(p.model, inverted(p.train), inverted(p.test), p.means)
    model, means = flipped_model()
    on_flipped = control_row(model, inverted(p.train), inverted(p.test), means)
    # The flipped model does the inverted rule with a circuit of the planted size: the
    # control comes close there (it can fail), and not on the model that learned the rule.
    rows = [
        circuit_row(name, "t", n_edges=real.n_edges, controls=ctl)
        for name, ctl in (
            ("planted", {"inverted": on_planted}),
            ("flipped", {"inverted": on_flipped}),
        )
    ]
    ctl = measures.controls(rows)
    assert ctl["close"]["inverted"] == ["flipped/t"]
    assert on_flipped["status"] == "ok" and on_flipped["n_nodes"] == len(PLANTED)
    assert ctl["best"]["inverted"]["best_test_loss"] == on_flipped["test_loss_calibrated"]
    assert "inverted validated on 1 of 2 at 1.0-1.0x the real circuit" in answer.controls_text(ctl)


def test_the_nonsense_control_comes_close_when_its_labels_keep_the_rule():
    """At swap rate 0 the relabelled task is the task itself: the control must come close
    (the comparison can fail); at 0.5 the labels carry no rule and it must not."""
    p = planted(SOFT)
    real = find_circuit(p.model, p.train, p.test, p.means, CFG, progress=False)
    g = torch.Generator().manual_seed(0)

    def relabel(b: TaskBatch, rate: float) -> TaskBatch:  # per pair, as nonsense_task does
        swap = (torch.rand(len(b) // 2, generator=g) < rate).repeat_interleave(2)
        return dataclasses.replace(
            b,
            correct=torch.where(swap, b.incorrect, b.correct),
            incorrect=torch.where(swap, b.correct, b.incorrect),
        )

    rows = []
    for rate in (0.0, 0.5):
        ctl = control_row(p.model, relabel(p.train, rate), relabel(p.test, rate), p.means)
        rows.append(
            circuit_row(f"rate{rate}", "t", n_edges=real.n_edges, controls={"nonsense": ctl})
        )
    assert measures.controls(rows)["close"]["nonsense"] == ["rate0.0/t"]


def noised(model, keep_planted: bool, density: float = 0.1, scale: float = 0.02):
    """The planted model's shape at a weight-sparse random init (`density` of the weights
    drawn normal at `scale`, as the study's random-init control keeps its model's density):
    with `keep_planted`, every planted weight kept as it is (an untrained model that happens
    to hold the circuit), else none of them (an untrained model)."""
    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for w in model.parameters():
            noise = scale * torch.randn(w.shape, generator=g)
            noise *= torch.rand(w.shape, generator=g) < density
            w.copy_(torch.where(w != 0, w, noise) if keep_planted else noise)
    sites = node_sites(model.cfg)
    windows = [planted_batch(64, 100 + i).tokens for i in range(2)]
    return model, compute_node_means(model, windows, sites, progress=False)


def test_the_random_init_control_comes_close_only_where_an_untrained_model_does_the_task():
    """The random-init control asks whether a model that never learned the task has a
    circuit as small: it must come close on an untrained model that holds the planted
    circuit by chance (it can fail), and not on a plain random init."""
    p = planted(SOFT)
    real = find_circuit(p.model, p.train, p.test, p.means, CFG, progress=False)
    rows = []
    for name, keep in (("lucky", True), ("random", False)):
        model, means = noised(p.model, keep)
        ctl = control_row(model, p.train, p.test, means)
        rows.append(circuit_row(name, "t", n_edges=real.n_edges, controls={"random_init": ctl}))
    assert measures.controls(rows)["close"]["random_init"] == ["lucky/t"]


def test_inverted_and_nonsense_tasks_keep_prompts_and_change_answers():
    task = get_task("single_double_quote", 32, 16, 0, n_select=8)
    inv = inverted_task(task)
    for split in ("train", "select", "test"):
        for p, q in zip(task.split(split), inv.split(split), strict=True):
            assert (p.prompt_a, p.prompt_b) == (q.prompt_a, q.prompt_b)
            assert (q.answer_a, q.answer_b) == (p.answer_b, p.answer_a)  # every pair swapped
    assert nonsense_task(task, 0, rate=0.0).train == task.train
    assert len(nonsense_task(task, 0).select) == 8


def test_selection_pairs_decide_and_test_pairs_are_only_reported():
    """Test pairs whose answers are all wrong: a search that validates on selection pairs
    still validates (and reports the test loss as measured); one that validated on the
    test pairs (no selection pairs given) fails. So nothing is chosen on test pairs."""
    p = planted(SOFT)
    select = planted_batch(64, 3)
    c = find_circuit(p.model, p.train, inverted(p.test), p.means, CFG, False, select_b=select)
    v = c.metrics.validation
    assert v.split == "select" and v.status == "ok"
    assert not v.test_within_limit and c.metrics.circuit.loss_calibrated > 1.0
    assert v.test_loss_calibrated == c.metrics.circuit.loss_calibrated
    on_test = find_circuit(p.model, p.train, inverted(p.test), p.means, CFG, False).metrics
    assert on_test.validation.split == "test"
    assert on_test.validation.status == "failed_validation"


def test_the_grid_spans_k_coef_and_mask_lr():
    p = planted(SOFT)
    cfg = dataclasses.replace(CFG, steps=100)
    c = find_circuit(
        p.model,
        p.train,
        p.test,
        p.means,
        cfg,
        False,
        k_coefs=[1e-3, 1e-2],
        mask_lrs=[0.05, 0.2],
        select_b=planted_batch(64, 3),
    )
    grid = c.metrics.grid
    assert [(g.k_coef, g.mask_lr) for g in grid] == list(
        itertools.product([1e-3, 1e-2], [0.05, 0.2])
    )
    ok = [g for g in grid if g.status == "ok"]
    best = min(ok, key=lambda g: g.n_edges)
    assert c.n_edges == best.n_edges
    assert (c.prune_config["k_coef"], c.prune_config["mask_lr"]) in {
        (g.k_coef, g.mask_lr) for g in ok if g.n_edges == best.n_edges
    }
