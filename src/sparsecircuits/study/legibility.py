"""Legibility of a finished study's circuits: every validated circuit's nodes explained
(explain.py; the explanations are stored in its circuit.json, and cached per model), its
legibility added to its row of results.json, and the dense vs sparse comparison added to
results.json's measures and answer (`measures.legibility`), for frontier tasks and,
apart, for circuits outside the frontier.

A step after `run_study` rather than inside it, so a study's circuits can be explained
again (a new criterion, a moved model folder) without pruning anything.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from ..errors import UserError
from ..explain import circuit_legibility
from ..study_results import StudyResults
from .answer import legibility_sentence, sentence
from .config import StudyConfig
from .measures import holm_family, legibility, scale_legibility, split_frontier


def add_legibility(study_dir: str | Path, progress: bool = True) -> StudyResults:
    """Explain every validated circuit of DIR/results.json and add legibility to it (a
    circuit that cannot be explained gets its error in its row instead); returns the
    results, also written back."""
    study_dir = Path(study_dir)
    path = study_dir / "results.json"
    if not path.is_file():
        raise UserError(f"{study_dir}: no results.json (run sparsecircuits study first)")
    results = StudyResults.load(path)
    # the study's prompt pairs have their own seed (its circuits record the search's)
    pair_seed = (results.study.get("config") or {}).get("pair_seed")
    rows = [c for c in results.circuits if c.status == "ok"]
    for row in tqdm(rows, desc="explain", unit="circuit", disable=not progress, leave=False):
        try:
            if row.path is None:  # a validated circuit always has one: an edited file
                raise UserError(f"{path}: circuit {row.model}, {row.task} names no circuit.json")
            row.legibility = circuit_legibility(study_dir / row.path, pair_seed=pair_seed)
        except UserError as e:
            row.legibility = {"error": str(e)}
    legibility_measures(results)
    results.save(path)
    return results


def legibility_measures(results: StudyResults) -> None:
    """The dense vs sparse legibility measure and sentence, from the legibility stored in
    the circuit rows: over frontier tasks (and there at the fixed held-out losses), and
    apart for circuits outside the frontier. Its verdicts join the study's Holm family,
    so the other verdicts and the answer are restated with it."""
    saved = results.study.get("config")
    cfg = StudyConfig.from_dict(saved, "results.json") if saved is not None else None
    tasks = results.study.get("frontier_tasks", [])
    frontier, outside = split_frontier(results.circuits)
    losses = (results.measures.get("fixed_loss") or {}).get("losses") or []
    leg = legibility(results.models, frontier, losses, tasks)
    results.measures["legibility"] = leg
    if "scale" in results.measures:
        scale_legibility(results.models, frontier, results.measures["scale"])
    results.measures["holm"] = holm_family(results.measures)
    if cfg is not None and "fixed_loss" in results.measures:  # analysed by this version
        results.answer.update(sentence(cfg, tasks, results.measures))
    results.answer["legibility"] = legibility_sentence(leg)
    if any(c.status == "ok" for c in outside):
        leg = legibility(results.models, outside)
        results.measures["legibility_outside"] = leg
        results.answer["legibility_outside"] = legibility_sentence(
            leg, "Outside the frontier (not in the circuit-size comparison), legibility"
        )
