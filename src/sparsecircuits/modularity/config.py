"""The experiment's settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError
from ..weightmask import MaskConfig

REGIMES = ("pretrained", "scratch", "random", "shuffled")
# regimes built from each checkpoint (an independent pretraining seed), not once per config
PER_CHECKPOINT = ("pretrained", "shuffled")
RESULTS_FILE = "modularity.json"
# what a run folder may grow by: the job list, not the settings every run's numbers depend on
JOB_FIELDS = ("tasks", "task_files", "regimes", "base_seeds", "finetune_seeds")


@dataclass
class ModularityConfig:
    tasks: list[str] = field(default_factory=lambda: ["quote_bracket", "nested_close"])
    # user compound tasks: [compound.jsonl, a.jsonl, b.jsonl] each (tasks/compound.py)
    task_files: list[list[str]] = field(default_factory=list)
    regimes: list[str] = field(default_factory=lambda: list(REGIMES))
    base_seeds: int = 3  # scratch and random: independent inits per model config
    finetune_seeds: int = 2  # pretrained: data orders per pretraining checkpoint
    mask_seeds: int = 2
    n_train: int = 96  # cells of four prompts
    n_test: int = 48
    finetune_steps: int = 200
    finetune_lr: float = 1e-3
    scratch_lr: float = 3e-3  # a random init needs larger steps than a pretrained one
    batch_size: int = 32
    masks: MaskConfig = field(default_factory=MaskConfig)
    node_target: float = 0.3  # task loss the node circuit must reach (pair loss, calibrated)
    node_steps: int = 300
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.masks, dict):
            self.masks = MaskConfig(**self.masks)
        bad = [r for r in self.regimes if r not in REGIMES]
        if bad:
            raise UserError(f"unknown regime(s) {bad}; choose from {', '.join(REGIMES)}")
        if any(len(files) != 3 for files in self.task_files):
            raise UserError("each user compound task is three files: compound, A and B (.jsonl)")
        if not self.tasks and not self.task_files:
            raise UserError("modularity needs at least one compound task")
        for name in ("base_seeds", "finetune_seeds", "mask_seeds", "n_train", "n_test"):
            if getattr(self, name) < 1:
                raise UserError(f"modularity config: {name} must be >= 1")
