"""The records of a stability analysis. Each is a dataclass with `to_json()` and
`from_json()`; the file written (stability.json) is `StabilityResults`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from ..record import JsonRecord, finite


def _json(obj) -> dict:
    return finite(dataclasses.asdict(obj))


@dataclass
class SearchRun:
    """One circuit search: its seeds, outcome and circuit (empty unless it reached)."""

    search_seed: int
    pair_seed: int
    status: str  # ok | failed_validation | collapsed | unreachable
    nodes: list[str] = field(default_factory=list)
    edges: list[list[str]] = field(default_factory=list)  # [src, dst]
    test_loss_calibrated: float | None = None
    forbidden: int = 0  # how many nodes were forbidden
    seconds: float = 0.0
    variant: str | None = None  # the prompts' surface variant (rephrase.py); None: original

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_json(cls, d: dict) -> SearchRun:
        return cls(**d)


@dataclass
class RunSet:
    """Repeated searches differing in one thing (`varies`), and what they share. Only the
    runs that validated ("ok") enter the measures."""

    varies: str  # search_seed | pair_seed | a backup round
    runs: list[SearchRun]
    n_ok: int
    node_jaccard: dict | None  # {mean, min, max, pairs}
    edge_jaccard: dict | None
    core: list[str]  # nodes in every ok run
    union: list[str]  # nodes in any ok run
    frequency: dict[str, float]  # node -> share of ok runs that kept it
    sizes: list[int]  # nodes per ok run
    core_metrics: dict | None = None  # the core alone: calibrated test loss, accuracy
    union_metrics: dict | None = None  # the union alone

    def to_json(self) -> dict:
        return _json(self)

    @classmethod
    def from_json(cls, d: dict) -> RunSet:
        return cls(**{**d, "runs": [SearchRun.from_json(r) for r in d["runs"]]})


@dataclass
class BackupRound:
    round: int
    forbidden_node: str  # forbidden this round (the one most often kept before it)
    forbidden: list[str]  # every node forbidden so far
    runs: RunSet
    reached: bool  # some search still validated

    @classmethod
    def from_json(cls, d: dict) -> BackupRound:
        return cls(**{**d, "runs": RunSet.from_json(d["runs"])})


@dataclass
class Backup:
    """Forbid the most-kept node, search again, until the target is unreachable (after Hao
    & Goldstein). `core`: the nodes every validated circuit of every round kept."""

    rounds: list[BackupRound]
    forbidden: list[str]
    stopped: str  # unreachable | max_rounds | nothing_to_forbid
    core: list[str]
    circuits: int  # validated circuits over all rounds (the repeat runs included)
    distinct: int  # distinct node sets among them
    core_metrics: dict | None = None

    @classmethod
    def from_json(cls, d: dict) -> Backup:
        return cls(**{**d, "rounds": [BackupRound.from_json(r) for r in d["rounds"]]})


@dataclass
class Stability:
    """One (model, task): the two repeat sets and the backup rounds."""

    model: str  # the model's folder
    model_id: str | None  # the study's id for it, when run over a study
    task: str
    target_loss: float
    prune: dict  # the PruneConfig every search shares (its seed is the search-seed set's base)
    n_nodes_total: int
    search: RunSet | None  # same pairs, search seeds differ
    pairs: RunSet | None  # same search seed, train pairs differ
    backup: Backup | None
    status: str = "ok"  # ok | unreachable | trivial | error
    message: str | None = None
    seconds: float = 0.0
    # the original prompts (search-seed run 0) and each surface variant, one search seed
    rephrasing: RunSet | None = None

    def to_json(self) -> dict:
        return _json(self)

    @classmethod
    def from_json(cls, d: dict) -> Stability:
        d = dict(d)
        for key in ("search", "pairs", "rephrasing"):
            d[key] = RunSet.from_json(d[key]) if d.get(key) else None
        d["backup"] = Backup.from_json(d["backup"]) if d.get("backup") else None
        return cls(**d)


@dataclass
class StabilityResults(JsonRecord):
    SCHEMA_VERSION: ClassVar[int] = 1

    setup: dict  # the config and the models
    entries: list[dict]  # Stability.to_json() per (model, task)
    comparison: dict  # dense vs sparse (compare.py); empty for one model
    verdict: str
    seconds: float
    schema_version: int = field(default=SCHEMA_VERSION)

    def stabilities(self) -> list[Stability]:
        return [Stability.from_json(e) for e in self.entries]
