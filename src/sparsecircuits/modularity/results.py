"""The record a modularity run writes (modularity.json) and returns. Its rows stay JSON
objects: a run's fields are built in structures.one_run, a summary row's in
summary.summarise."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..record import JsonRecord


@dataclass
class ModularityResults(JsonRecord):
    # 2: kind named by config.model_name, pretrain_seed, units/finetune_sd, both FER variants
    SCHEMA_VERSION: ClassVar[int] = 2

    setup: dict
    runs: list[dict]
    summary: list[dict]
    consistency: list[dict]
    findings: list[str]
    forced_vs_emergent: list[dict]
    fer_validation: dict
    seconds: float
    schema_version: int = field(default=SCHEMA_VERSION)
