"""Graded tasks: the same binary next-token task at increasing difficulty levels, for
measuring how activations and accuracy change as a task gets harder.

Each axis has a pair maker taking (rng, level); `DifficultyAxis.task(level, n, seed)` draws
`n` distinct test pairs at that level through the ordinary `TaskGenerator`, so encoding,
accuracy and loss work as for the built-in tasks. These are not registered in TASKS: a
level is a measurement condition, not a task to prune.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Protocol

from .base import Pair, Task
from .generators import TaskGenerator
from .snippets import KEY, WORDS, func_name, function, ind, keyed_pair, names, phrase

OTHER = "\x01"  # marks where the other kind of quote goes


def bracket_depth(rng: random.Random, level: int) -> Pair:
    """Answers `]` and `)`: close the outer bracket, opened `level - 1` nested groups (each a
    call or a list, closed again) before the end. The closer depends on the opener that far
    back, past brackets of both kinds."""
    var, last = names(rng, 2)
    inner = names(rng, 1, avoid=(var, last))[0]
    for _ in range(level - 1):
        if rng.random() < 0.5:
            inner = f"{func_name(rng)}({inner}, {rng.randint(0, 99)})"
        else:
            inner = f"[{inner}, {rng.randint(0, 99)}]"
    body = [f"{ind(1)}{var} = {KEY}{inner}, {last}"]
    return keyed_pair(function(rng, body, avoid=(var, last)), "[", "(", "]", ")")


def quote_distractors(rng: random.Random, level: int) -> Pair:
    """Answers `'` and `"`: close a string that holds `level` words quoted with the other
    kind of quote, so the most recent quote mark is the wrong answer."""
    var = names(rng, 1)[0]
    words = [phrase(rng)]
    for _ in range(level):
        words += [f"{OTHER}{rng.choice(WORDS)}{OTHER}", phrase(rng)]
    text = " ".join(words)
    seed = rng.random()  # the same surrounding function for both prompts

    def prompt(q: str, other: str) -> str:
        line = f"{ind(1)}{var} = {q}{text.replace(OTHER, other)}"
        return function(random.Random(seed), [line], avoid=(var,))

    return Pair(prompt("'", '"'), prompt('"', "'"), "'", '"')


class PairMaker(Protocol):
    """One pair of an axis at a level (`TaskGenerator` gets it with the level bound)."""

    def __call__(self, rng: random.Random, level: int) -> Pair: ...


@dataclass(frozen=True)
class DifficultyAxis:
    name: str
    description: str
    levels: tuple[int, ...]
    make_pair: PairMaker

    def task(self, level: int, n: int, seed: int = 0) -> Task:
        gen = TaskGenerator(
            f"{self.name}_{level}",
            f"{self.description} (level {level})",
            "",
            functools.partial(self.make_pair, level=level),
        )
        return gen(n_train=0, n_test=n, seed=seed)


AXES = {
    a.name: a
    for a in (
        DifficultyAxis(
            "bracket_depth",
            "close the outer bracket past nested groups",
            (1, 2, 3, 4, 5),
            bracket_depth,
        ),
        DifficultyAxis(
            "quote_distractors",
            "close a string holding words quoted the other way",
            (0, 1, 2, 3, 4),
            quote_distractors,
        ),
    )
}
