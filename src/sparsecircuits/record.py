"""A results record: a dataclass saved as one JSON file with a schema version, read back
with a check of that version (a file an older version wrote is refused, not misread)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, ClassVar

from .errors import UserError
from .io import read_json, write_json_atomic


def finite(obj):
    """NaN and infinities (Python's json writes them) as null: JSON.parse rejects them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


class JsonRecord:
    """The base of a results dataclass (each subclass is a `@dataclass`)."""

    # Declared for the type checker only: every subclass is a dataclass, so asdict and
    # fields accept it (this is the attribute they look for).
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]
    SCHEMA_VERSION: ClassVar[int]
    # What to do with a file of another schema version, for the refusal message.
    OTHER_VERSION_HINT: ClassVar[str] = "run the analysis again into a fresh folder"
    schema_version: int

    def to_json(self) -> dict:
        return finite(dataclasses.asdict(self))  # NaN as null: JSON.parse rejects NaN

    @classmethod
    def from_json(cls, d: dict, source: str = "results"):
        """The record of a JSON object; a field with a default may be absent."""
        if d.get("schema_version") != cls.SCHEMA_VERSION:
            raise UserError(
                f"{source}: schema_version {d.get('schema_version')}, this version reads "
                f"{cls.SCHEMA_VERSION} ({cls.OTHER_VERSION_HINT})"
            )
        fields = dataclasses.fields(cls)
        missing = [
            f.name
            for f in fields
            if f.name not in d
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise UserError(f"{source}: not a complete record (missing {', '.join(missing)})")
        return cls(**{f.name: d[f.name] for f in fields if f.name in d})

    def save(self, path: Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: Path):
        return cls.from_json(read_json(path), str(path))
