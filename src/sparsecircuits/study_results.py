"""The record a study writes (DIR/results.json) and its readers take: the summary, the
legibility step and the report. Its rows stay JSON objects, built in study/run.py (models,
eligibility, circuits) and study/measures.py (the rest). It lives outside the study
package so that the report (`view`) reads it without importing the study's modules."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from .corpus import relocate_cached
from .errors import UserError
from .record import JsonRecord


@dataclass
class StudyResults(JsonRecord):
    SCHEMA_VERSION: ClassVar[int] = 2
    OTHER_VERSION_HINT: ClassVar[str] = "rerun the study with --resume to refresh it"

    models: list[dict]  # per trained model: its spec, held-out loss and noise
    circuits: list[dict]  # per (model, task): status, size, metrics, controls, legibility
    frontier: list[dict]  # per model: held-out loss and geometric-mean edges
    answer: dict  # the answer sentence and its parts, from the measures
    study: dict = field(default_factory=dict)  # preset, tasks, seeds, targets, config
    eligibility: list[dict] = field(default_factory=list)  # per (model, task): full model
    measures: dict = field(default_factory=dict)  # each named measure (study/measures.py)
    timing: dict = field(default_factory=dict)  # this run's wall time (set by run_study)
    schema_version: int = field(default=SCHEMA_VERSION)

    @classmethod
    def of_study(cls, study_dir: str | Path) -> StudyResults:
        """A study folder's results (a clear error where there are none yet)."""
        path = Path(study_dir) / "results.json"
        if not path.is_file():
            raise UserError(f"{study_dir}: no results.json (run sparsecircuits study first)")
        return cls.load(path)

    @staticmethod
    def model_path(study_dir: str | Path, model: dict) -> Path:
        """A model row's folder; a relative one is relative to the study (folders move), a
        cached one is looked up in this cache where it has moved."""
        return relocate_cached(Path(study_dir) / model["dir"])
