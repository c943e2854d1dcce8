"""Surface variants of a task's prompts that keep its rule (after Wu, Tonin & Cevher, who
found discovered circuits change when prompts are rephrased):

    renamed   every variable name of the task generators' pool (tasks/snippets.NAMES) is
              replaced, consistently in both prompts and answers of a pair, by another of
              the same initial (a rotation within each initial's names), so names that must
              differ in their first token still do; string words from the pool change too
    wrapped   other surrounding code: a module-level line (an import, a comment) before the
              prompt, the same for both prompts of a pair

Neither touches what a pair's prompts differ in, nor where the answer is read, so the
answer is still decided by the same rule.
"""

from __future__ import annotations

import dataclasses
import random
import re

from ..errors import UserError
from ..tasks import Pair, Task
from ..tasks.snippets import NAMES

VARIANTS = ("renamed", "wrapped")
PREFIXES = (
    "import os\n\n",
    "import sys\n\n",
    "from typing import Any\n\n",
    "# helpers\n",
    "import re\n\n",
)


def _renaming(shift: int = 1) -> dict[str, str]:
    """Each name -> the name `shift` places on among the pool's names of its initial."""
    groups: dict[str, list[str]] = {}
    for n in sorted(set(NAMES)):
        groups.setdefault(n[0], []).append(n)
    out = {}
    for group in groups.values():
        for i, n in enumerate(group):
            out[n] = group[(i + shift) % len(group)]
    return out


def _renamer(mapping: dict[str, str]):
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(mapping, key=len)[::-1])) + r")\b")
    return lambda text: pattern.sub(lambda m: mapping[m.group(1)], text)


def rephrase(task: Task, variant: str, seed: int = 0) -> Task:
    """The task with every split's pairs in the surface variant `variant` (see above)."""
    if variant == "renamed":
        rename = _renamer(_renaming(1 + seed))

        def fn(pairs: list[Pair]) -> list[Pair]:
            return [
                dataclasses.replace(
                    p,
                    prompt_a=rename(p.prompt_a),
                    prompt_b=rename(p.prompt_b),
                    answer_a=rename(p.answer_a),
                    answer_b=rename(p.answer_b),
                )
                for p in pairs
            ]

    elif variant == "wrapped":
        rng = random.Random(f"{task.name}/wrapped/{seed}")

        def fn(pairs: list[Pair]) -> list[Pair]:
            out = []
            for p in pairs:
                head = rng.choice(PREFIXES)
                out.append(
                    dataclasses.replace(p, prompt_a=head + p.prompt_a, prompt_b=head + p.prompt_b)
                )
            return out

    else:
        raise UserError(f"unknown rephrasing {variant!r}; choose from {', '.join(VARIANTS)}")
    return task.map_pairs(fn, f"{task.name} ({variant})")
