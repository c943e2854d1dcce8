"""The record an activation-sparsity run writes (activations.json) and returns. Its groups
and models stay JSON trees ({hook: {metric: {position: leaf}}}, see analysis.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError, read_json, write_json_atomic
from ..report import finite

# 3: padded conditions, p-values, Holm `tests`, length control, loss and robustness
SCHEMA_VERSION = 3


@dataclass
class ActivationResults:
    metric_definitions: str
    config: dict
    groups: list[dict]
    models: list[dict]
    robustness: list[dict]
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict:
        return finite(dataclasses.asdict(self))  # NaN as null: JSON.parse rejects NaN

    @classmethod
    def from_json(cls, d: dict, source: str = "activation results") -> ActivationResults:
        if d.get("schema_version") != SCHEMA_VERSION:
            raise UserError(
                f"{source}: schema_version {d.get('schema_version')}, this version reads "
                f"{SCHEMA_VERSION} (rerun activations)"
            )
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})

    def save(self, path: Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> ActivationResults:
        return cls.from_json(read_json(path), str(path))
