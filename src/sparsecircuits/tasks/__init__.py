"""Binary next-token tasks in Python code for circuit pruning: built-in generators, user
JSONL files, their tensors and the pair-wise task loss.

    task = get_task("single_double_quote", n_train=128, n_test=128, seed=0)
    batch = task.encode(tokenizer, "test", n_ctx=128)
    loss = task_loss(model(batch.tokens), batch)
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .base import (
    Pair,
    Task,
    TaskBatch,
    pair_loss,
    prompt_windows,
    task_accuracy,
    task_logit_diff,
    task_loss,
)
from .generators import TASKS, TaskGenerator
from .jsonl import load_jsonl_task

__all__ = [
    "TASKS",
    "Pair",
    "Task",
    "TaskBatch",
    "TaskGenerator",
    "get_task",
    "list_tasks",
    "load_jsonl_task",
    "pair_loss",
    "prompt_windows",
    "task_accuracy",
    "task_logit_diff",
    "task_loss",
]


def list_tasks() -> list[tuple[str, str]]:
    """(name, one-line description) of every built-in task."""
    return [(name, gen.description) for name, gen in TASKS.items()]


def get_task(
    name_or_path: str, n_train: int = 128, n_test: int = 128, seed: int = 0, n_select: int = 0
) -> Task:
    """A built-in task by name, or a user task from a .jsonl file.

    For a file, its own rows decide the number of pairs; n_train and n_test only set the
    fraction that goes to the test split, and `n_select` selection pairs are taken from its
    train pairs.
    """
    if name_or_path in TASKS:
        return TASKS[name_or_path](n_train=n_train, n_test=n_test, seed=seed, n_select=n_select)
    path = Path(name_or_path)
    if path.suffix == ".jsonl" or path.is_file():
        if n_train < 0 or n_test < 0 or n_train + n_test == 0:
            raise UserError(f"{path}: n_train and n_test must be >= 0 and not both 0")
        task = load_jsonl_task(path, n_test_frac=n_test / (n_train + n_test), seed=seed)
        return task.with_selection(n_select, seed)
    raise UserError(
        f"unknown task {name_or_path!r}; known tasks: {', '.join(TASKS)} "
        "(or give a path to a .jsonl file)"
    )
