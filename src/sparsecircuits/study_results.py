"""The record a study writes (DIR/results.json) and its readers take: the summary, the
legibility step and the report. Its rows are dataclasses, one kind per list: a trained
model (`ModelRow`), a full model on a task (`EligibilityRow`), a circuit search
(`CircuitRow`, built in study/run.py) and a model's point on the frontier plot
(`FrontierRow`, study/measures.py). It lives outside the study package so that the report
(`view`) reads it without importing the study's modules.

A row is written as the JSON object it has always been. One read from a file is written
back with the keys that file gave it, in their order (a field an older version did not
write takes its default and stays unwritten; a key this version does not know is kept), so
re-analysing or explaining an older study changes none of its rows."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .corpus import relocate_cached
from .errors import UserError
from .record import JsonRecord, finite

R = TypeVar("R", bound="Row")


@dataclass(kw_only=True)
class Row:
    """The base of a results.json row (each subclass a dataclass, its fields keyword-only:
    a field with a default may come before one without, in the order the JSON has them)."""

    # Fields written only once set: this version adds them to some rows only (a circuit's
    # mask_lr once searched, its legibility once explained), never as null.
    OPTIONAL: ClassVar[tuple[str, ...]] = ()
    # Fields that must be JSON objects where present: an edited file gets one line naming
    # the row, not a traceback from a reader.
    OBJECTS: ClassVar[tuple[str, ...]] = ()

    # keys of the JSON object this row was read from, in its order (None: made here)
    keys_read: tuple[str, ...] | None = field(default=None, repr=False, compare=False)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # keys not known here

    @classmethod
    def _json_fields(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.name not in ("keys_read", "extra")]

    @classmethod
    def from_json(cls: type[R], d: object, where: str) -> R:
        """The row of a JSON object; a field with a default may be absent (`where` names
        the row in errors)."""
        if not isinstance(d, dict):
            raise UserError(f"{where} is not a JSON object")
        fields = cls._json_fields()
        names = {f.name for f in fields}
        missing = [f.name for f in fields if f.name not in d and _default(f) is _REQUIRED]
        if missing:
            raise UserError(f"{where}: not a complete row (missing {', '.join(missing)})")
        for key in cls.OBJECTS:
            if d.get(key) is not None and not isinstance(d[key], dict):
                raise UserError(
                    f"{where} ({d.get('model')}, {d.get('task')}): '{key}' is not a JSON object"
                )
        return cls(
            **{k: v for k, v in d.items() if k in names},
            extra={k: v for k, v in d.items() if k not in names},
            keys_read=tuple(d),
        )

    def to_json(self) -> dict:
        fields = self._json_fields()
        values = {f.name: getattr(self, f.name) for f in fields} | self.extra
        if self.keys_read is None:  # made by this version: every field it sets
            return {k: v for k, v in values.items() if v is not None or k not in self.OPTIONAL}
        # read from a file: the keys it had, then any field set since (legibility added)
        out = {k: values[k] for k in self.keys_read}
        return out | {
            f.name: values[f.name]
            for f in fields
            if f.name not in out and values[f.name] != _default(f)
        }


_REQUIRED = object()


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _REQUIRED


@dataclass
class ModelId:
    """What names a model of the study's family: the start of the spec it is trained from
    (study/config.py ModelSpec), of its row and of its frontier row."""

    id: str
    label: str
    kind: str  # dense | sparse
    d_model: int
    density: float
    seed: int

    def model_id(self) -> dict[str, Any]:
        """These fields alone, to start another record of the same model."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelId)}


@dataclass(kw_only=True)
class ModelRow(Row, ModelId):
    """A trained model: its spec, folder, parameters, held-out loss and its eval noise."""

    # the curves it is on ("dense", "density", "l0", "fixed_density"); none in rows
    # written before roles were
    roles: list[str] = field(default_factory=list)
    n_layer: int
    dir: str  # its folder: absolute in the token cache, or relative to the study
    total_params: int
    nonzero_params: int
    matrix_nonzero: int  # nonzero weights of the blocks' matrices
    heldout_loss: float | None
    # the held-out loss's spread over its windows (study/run.py _heldout_noise); rows
    # written before it have none (older ones said heldout_loss_batches: kept in extra)
    heldout_loss_windows: int | None = None
    heldout_loss_std: float | None = None
    heldout_loss_se: float | None = None


@dataclass(kw_only=True)
class EligibilityRow(Row):
    """A full model on a task's held-out test pairs (calibrated on its train pairs) against
    the target, and the empty circuit beside it (study/run.py full_model_rows)."""

    model: str
    task: str
    target_loss: float
    # the full model's test metrics (prune_methods.full_model_metrics)
    loss: float
    accuracy: float
    loss_calibrated: float
    accuracy_calibrated: float
    loss_se: float | None
    train_loss_calibrated: float
    reaches: bool  # the target rule (study/measures.py reaches)
    # the empty circuit (every node mean-ablated); rows written before it have none
    empty_loss_calibrated: float | None = None
    empty_train_loss_calibrated: float | None = None
    trivial: bool = False  # the empty circuit reaches the target: no circuit to size


@dataclass(kw_only=True)
class CircuitRow(Row):
    """One (model, task) of the study: why it was not searched, or its circuit's status,
    size, metrics, controls and legibility (study/run.py _circuit, study/legibility.py)."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("mask_lr", "legibility")
    OBJECTS: ClassVar[tuple[str, ...]] = ("metrics", "controls", "legibility")

    model: str
    task: str
    # every model reaches the task (rows written before the flag were all frontier rows)
    in_frontier: bool = True
    status: str  # ok | failed_validation | collapsed | unreachable | error | not_eligible | trivial
    message: str | None = None
    n_nodes: int | None = None
    n_edges: int | None = None
    metrics: dict | None = None  # the circuit's metrics as circuit.json holds them
    path: str | None = None  # its circuit.json, relative to the study
    target_loss: float
    k_coef: float | None = None
    controls: dict | None = None  # per control its best circuit (study/run.py control_record)
    mask_lr: float | None = None  # with k_coef, the setting the circuit was chosen at
    legibility: dict | None = None  # added by the legibility step


@dataclass(kw_only=True)
class FrontierRow(Row, ModelId):
    """A model's point on the frontier: held-out loss against geometric-mean circuit size
    over the frontier tasks it validated (study/measures.py frontier_rows)."""

    heldout_loss: float | None
    model: str
    roles: list[str] = field(default_factory=list)
    geomean_edges: float | None
    geomean_nodes: float | None = None  # rows written before nodes were measured have none
    n_tasks: int

    def size(self, measure: str) -> float | None:
        """Its geometric-mean size in `measure` (edges or nodes)."""
        return {"edges": self.geomean_edges, "nodes": self.geomean_nodes}[measure]


@dataclass
class StudyResults(JsonRecord):
    SCHEMA_VERSION: ClassVar[int] = 2
    OTHER_VERSION_HINT: ClassVar[str] = "rerun the study with --resume to refresh it"
    # the row lists and the kind of row each holds
    ROWS: ClassVar[dict[str, type[Row]]] = {
        "models": ModelRow,
        "circuits": CircuitRow,
        "frontier": FrontierRow,
        "eligibility": EligibilityRow,
    }

    models: list[ModelRow]  # per trained model: its spec, held-out loss and noise
    circuits: list[CircuitRow]  # per (model, task): status, size, metrics, controls, legibility
    frontier: list[FrontierRow]  # per model: held-out loss and geometric-mean edges
    answer: dict  # the answer sentence and its parts, from the measures
    study: dict = field(default_factory=dict)  # preset, tasks, seeds, targets, config
    eligibility: list[EligibilityRow] = field(default_factory=list)  # per (model, task)
    measures: dict = field(default_factory=dict)  # each named measure (study/measures.py)
    timing: dict = field(default_factory=dict)  # this run's wall time (set by run_study)
    schema_version: int = field(default=SCHEMA_VERSION)

    @classmethod
    def from_json(cls, d: dict, source: str = "results") -> StudyResults:
        results = super().from_json(d, source)
        for name, kind in cls.ROWS.items():
            rows = getattr(results, name)
            if not isinstance(rows, list):
                raise UserError(f"{source}: '{name}' is not a list")
            where = f"{source}: {name}"
            setattr(results, name, [kind.from_json(r, f"{where}[{i}]") for i, r in enumerate(rows)])
        return results

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in self.ROWS:
            out[name] = [row.to_json() for row in out[name]]
        return finite(out)  # NaN as null: JSON.parse rejects NaN

    @classmethod
    def of_study(cls, study_dir: str | Path) -> StudyResults:
        """A study folder's results (a clear error where there are none yet)."""
        path = Path(study_dir) / "results.json"
        if not path.is_file():
            raise UserError(f"{study_dir}: no results.json (run sparsecircuits study first)")
        return cls.load(path)

    @staticmethod
    def model_path(study_dir: str | Path, model: ModelRow) -> Path:
        """A model row's folder; a relative one is relative to the study (folders move), a
        cached one is looked up in this cache where it has moved."""
        return relocate_cached(Path(study_dir) / model.dir)
