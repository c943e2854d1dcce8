"""A results record: a dataclass saved as one JSON file with a schema version, read back
with a check of that version (a file an older version wrote is refused, not misread)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

from .errors import UserError
from .io import read_json, write_json_atomic
from .report import finite


class JsonRecord:
    SCHEMA_VERSION: ClassVar[int]
    schema_version: int

    def to_json(self) -> dict:
        return finite(dataclasses.asdict(self))  # NaN as null: JSON.parse rejects NaN

    @classmethod
    def from_json(cls, d: dict, source: str = "results"):
        if d.get("schema_version") != cls.SCHEMA_VERSION:
            raise UserError(
                f"{source}: schema_version {d.get('schema_version')}, this version reads "
                f"{cls.SCHEMA_VERSION} (run the analysis again into a fresh folder)"
            )
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})

    def save(self, path: Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: Path):
        return cls.from_json(read_json(path), str(path))
