"""The record an activation-sparsity run writes (activations.json) and returns. Its groups
and models stay JSON trees ({hook: {metric: {position: leaf}}}, see analysis.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..record import JsonRecord


@dataclass
class ActivationResults(JsonRecord):
    # 3: padded conditions, p-values, Holm `tests`, length control, loss and robustness
    SCHEMA_VERSION: ClassVar[int] = 3

    metric_definitions: str
    config: dict
    groups: list[dict]
    models: list[dict]
    robustness: list[dict]
    schema_version: int = field(default=SCHEMA_VERSION)
