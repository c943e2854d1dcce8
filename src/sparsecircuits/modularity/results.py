"""The record a modularity run writes (modularity.json) and returns. Its rows stay JSON
objects: a run's fields are built in structures.one_run, a summary row's in
summary.summarise."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError, read_json, write_json_atomic

# 2: kind named by config.model_name, pretrain_seed, units/finetune_sd, both FER variants
SCHEMA_VERSION = 2


@dataclass
class ModularityResults:
    setup: dict
    runs: list[dict]
    summary: list[dict]
    consistency: list[dict]
    findings: list[str]
    forced_vs_emergent: list[dict]
    fer_validation: dict
    seconds: float
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict, source: str = "modularity results") -> ModularityResults:
        if d.get("schema_version") != SCHEMA_VERSION:
            raise UserError(
                f"{source}: schema_version {d.get('schema_version')}, this version reads "
                f"{SCHEMA_VERSION} (rerun modularity into a fresh folder)"
            )
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})

    def save(self, path: Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> ModularityResults:
        return cls.from_json(read_json(path), str(path))
