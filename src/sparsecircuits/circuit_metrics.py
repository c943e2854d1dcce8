"""What a circuit search measures, as typed records: one split's task loss and accuracy
under a set of node masks, the random circuits of the same size, the validation of the
chosen circuit, one row of the grid of settings, and all of them together
(`CircuitMetrics`, the `metrics` of a circuit).

circuit.json and a study's results.json hold them as JSON: `to_json` writes the keys, in
the order, that the dicts before these records wrote (a file saved from one it loaded keeps
its bytes), `from_json` reads them back and refuses unknown or missing keys (TypeError)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

R = TypeVar("R", bound="_Flat")


class _Flat:
    """A record whose JSON object is its fields, in order."""

    # Declared for the type checker only: every subclass is a dataclass.
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls: type[R], d: dict) -> R:
        return cls(**d)


@dataclass
class RawMetrics(_Flat):
    """Task loss and accuracy of the raw logit differences on one split (no calibration:
    the full model with the circuit ablated is recorded so)."""

    loss: float
    accuracy: float


@dataclass
class EvalMetrics(RawMetrics):
    """`RawMetrics` plus the same under a logit calibration fitted on the train pairs, and
    the standard error of the calibrated loss over pairs (None for a single pair)."""

    loss_calibrated: float
    accuracy_calibrated: float
    loss_se: float | None


@dataclass
class FittedMetrics(EvalMetrics):
    """`EvalMetrics` of the split the calibration was not fitted on, plus the calibrated
    loss on the train pairs it was fitted on (the empty circuit, a study's full model)."""

    train_loss_calibrated: float


@dataclass
class RandomCircuits(_Flat):
    """The control beside a circuit: random sets of as many nodes, each calibrated on the
    train pairs and measured on the test pairs (None where there are too few draws)."""

    draws: int
    loss_mean: float | None
    loss_std: float | None
    accuracy_mean: float | None
    reach_target: float | None  # the share that also validates: the scores then add nothing


@dataclass
class Validation(_Flat):
    """The chosen circuit against the target on `split` (where the grid chose: "select" or
    "test") and its test loss against the same rule (held out from every choice)."""

    status: str  # ok | failed_validation | collapsed
    split: str
    loss_calibrated: float
    test_loss_calibrated: float
    limit: float
    tolerance: float
    tolerance_rule: str
    test_within_limit: bool


@dataclass
class GridRow(_Flat):
    """One setting of the grid as the circuit records it."""

    k_coef: float
    mask_lr: float
    k: int
    n_edges: int
    reached: bool
    status: str
    select_loss_calibrated: float
    test_loss_calibrated: float


@dataclass
class CircuitMetrics(_Flat):
    """A circuit validated on the test pairs: the full model, the circuit alone
    (sufficiency), the full model with only the circuit ablated (necessity), the empty
    circuit, random circuits of its size; how it was chosen and validated."""

    full: EvalMetrics
    circuit: EvalMetrics
    ablated: RawMetrics
    empty: FittedMetrics
    random: RandomCircuits
    full_train_loss_calibrated: float
    validation: Validation
    grid: list[GridRow]
    forbidden: list[str] | None = None  # held ablated throughout; absent from the JSON if none

    def to_json(self) -> dict:
        d = super().to_json()
        if self.forbidden is None:
            del d["forbidden"]
        return d

    @classmethod
    def from_json(cls, d: dict) -> CircuitMetrics:
        records: dict[str, type[_Flat]] = {
            "full": EvalMetrics,
            "circuit": EvalMetrics,
            "ablated": RawMetrics,
            "empty": FittedMetrics,
            "random": RandomCircuits,
            "validation": Validation,
        }
        typed = {key: record.from_json(d[key]) for key, record in records.items()}
        return cls(**d | typed | {"grid": [GridRow.from_json(g) for g in d["grid"]]})
