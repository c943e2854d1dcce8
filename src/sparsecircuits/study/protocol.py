"""The study's registered protocol: which version a preset was fixed under, how a run
departs from it, and what the designs before it answered.

docs/protocol.md states the protocol in words; `REGISTERED` pins each registered preset's
config by hash, so a preset edited after registration fails the tests until a new version
is written down (a change after seeing the run is a new version, not an edit). Each earlier
design's answer is quoted from the results file it was measured in; a test checks that the
quote is there, so none of these numbers is typed from memory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .config import STUDY_PRESETS, StudyConfig, config_hash, study_config

PROTOCOL_FILE = "docs/protocol.md"

# protocol version -> {preset: hash of its StudyConfig as registered}
REGISTERED: dict[int, dict[str, str]] = {
    1: {"standard": "7dfa024613aed72b313b"},
}


@dataclass(frozen=True)
class EarlierDesign:
    """A design the standard study ran under before any protocol was registered."""

    name: str
    what: str
    answer: str  # quoted exactly from `source`
    source: str


HISTORY: tuple[EarlierDesign, ...] = (
    EarlierDesign(
        "0.1",
        "AbsTopK on, dense d_model 64-128, 3 seeds",
        "3.64x (n=1, too few for an interval)",
        "benchmarks/results/study_standard_dense64-128.md",
    ),
    EarlierDesign(
        "0.2",
        "AbsTopK off, dense d_model 32/48/64, one quarter of today's tokens",
        "3.70x (95% interval 3.27-4.42x, n=3: 1 task x 3 seeds)",
        "benchmarks/results/study_standard_1x.md",
    ),
    EarlierDesign(
        "0.3",
        "4x the tokens (batch 128), calibration without smoothed targets",
        "1.47x (95% interval 0.99-2.35x, n=3: 1 task x 3 seeds)",
        "benchmarks/results/study_standard_before_smoothing.md",
    ),
    EarlierDesign(
        "0.4",
        "smoothed calibration targets, 27 models (density to 1/16)",
        "1.36x (95% interval 0.71-2.23x, n=6: 2 tasks x 3 seeds)",
        "benchmarks/results/study_standard_27models.md",
    ),
    EarlierDesign(
        "0.5",
        "24 models (density to 1/8), windowed eval noise; bootstrap over (task, seed) cells",
        "1.16x (95% interval 0.70-1.74x, n=12: 4 tasks x 3 seeds)",
        "benchmarks/results/study_standard.md",
    ),
)


def registered_hash(cfg: StudyConfig) -> str:
    return config_hash(dataclasses.asdict(cfg))


def deviations(cfg: StudyConfig) -> list[str]:
    """How a run's config departs from its preset as registered (field: registered ->
    run); empty for a preset run as registered or a study with no protocol."""
    if cfg.protocol is None or cfg.preset not in STUDY_PRESETS:
        return []
    reg = dataclasses.asdict(study_config(cfg.preset))
    run = dataclasses.asdict(cfg)
    return [f"{k}: registered {reg[k]!r}, run {run[k]!r}" for k in reg if reg[k] != run[k]]


def protocol_lines(cfg: StudyConfig) -> list[str]:
    """The summary's protocol paragraph: version, deviations, earlier answers."""
    if cfg.protocol is None:
        return [
            "Protocol: none registered for this preset (an exploratory run); see "
            f"{PROTOCOL_FILE} for the registered `standard` study.",
        ]
    devs = deviations(cfg)
    lines = [
        f"Protocol: version {cfg.protocol} ({PROTOCOL_FILE}), registered before the run that "
        "answers with it.",
        "Deviations from it: " + ("; ".join(devs) if devs else "none") + ".",
    ]
    if cfg.preset == "standard":
        lines.append(
            "Earlier designs (before any protocol; each changed after a look at the data) "
            "answered: "
            + "; ".join(f"{h.name} ({h.what}): {h.answer} [{h.source}]" for h in HISTORY)
            + "."
        )
    return lines
