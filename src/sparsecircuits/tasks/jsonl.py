"""User tasks from a JSON Lines file.

Each row is `{"prompt": ..., "correct": ..., "incorrect": ...}`. A pair is either one row
with an extra `"prompt_alt"` (whose correct answer is the row's `incorrect`), or two
consecutive rows whose answers are swapped. A row that is neither is an unpaired example:
its prompt is scored on its own correct vs incorrect answer (see `Pair.unpaired`). Blank
lines are skipped, a UTF-8 byte-order mark is allowed, and a pair repeated in the file is
kept once (so it cannot land in both splits). Every mistake is reported as
`path:line: problem`, the first in file order.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..errors import UserError
from ..io import read_regular
from .base import Pair, Task

REQUIRED = ("prompt", "correct", "incorrect")
OPTIONAL = ("prompt_alt",)
# Prompts must fit a context of at most 4096 tokens; a field far longer than that is a
# mistake, and a 50 MB one made the tokenizer abort the process.
MAX_FIELD_CHARS = 65536


def read_objects(path: Path, check=None) -> list[tuple[int, dict]]:
    """(line number, JSON object) for every non-blank line of a JSONL file; `check(path, n,
    row)`, if given, vets each row as it is read, so the first problem in the file is the
    one reported."""
    data = read_regular(path, ".jsonl file").removeprefix(b"\xef\xbb\xbf")  # a BOM
    rows = []
    # Split on "\n" only: str.splitlines would also break on U+2028, which JSON strings
    # may contain unescaped. Each line decoded alone, so an error names its line.
    for n, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{path}:{n}: not UTF-8 text") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        if check is not None:
            check(path, n, row)
        rows.append((n, row))
    return rows


def _check_row(path: Path, n: int, row: dict) -> None:
    for key in row:
        if key not in REQUIRED + OPTIONAL:
            allowed = ", ".join(REQUIRED + OPTIONAL)
            raise UserError(f"{path}:{n}: unknown field {key!r} (allowed: {allowed})")
    for key in REQUIRED:
        if key not in row:
            raise UserError(f"{path}:{n}: missing field {key!r}")
    for key, value in row.items():
        if not isinstance(value, str) or not value:
            raise UserError(f"{path}:{n}: field {key!r} must be a non-empty string")
        if len(value) > MAX_FIELD_CHARS:
            raise UserError(
                f"{path}:{n}: field {key!r} holds {len(value):,} characters, more than "
                f"{MAX_FIELD_CHARS:,} (no context is that long)"
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate such as "\ud800", legal in JSON
            raise UserError(f"{path}:{n}: field {key!r} is not valid Unicode text") from None
    if row["correct"] == row["incorrect"]:
        raise UserError(f"{path}:{n}: 'correct' and 'incorrect' are the same")


def _pairs(path: Path, rows: list[tuple[int, dict[str, str]]]) -> list[Pair]:
    pairs = []
    i = 0
    while i < len(rows):
        n, row = rows[i]
        if "prompt_alt" in row:
            pairs.append(
                Pair(row["prompt"], row["prompt_alt"], row["correct"], row["incorrect"], line=n)
            )
            i += 1
            continue
        partner = rows[i + 1][1] if i + 1 < len(rows) else {}
        if (
            "prompt_alt" not in partner
            and partner.get("correct") == row["incorrect"]
            and partner.get("incorrect") == row["correct"]
        ):
            pairs.append(
                Pair(row["prompt"], partner["prompt"], row["correct"], row["incorrect"], line=n)
            )
            i += 2
        else:
            pairs.append(
                Pair(row["prompt"], row["prompt"], row["correct"], row["incorrect"], n, True)
            )
            i += 1
    for pair in pairs:
        if pair.prompt_a == pair.prompt_b and not pair.unpaired:
            raise UserError(f"{path}:{pair.line}: the two prompts of the pair are identical")
    return list(dict.fromkeys(pairs))  # a repeated pair once, at its first line


def split_indices(n: int, n_test_frac: float, seed: int) -> set[int]:
    """Which of `n` rows are test rows: about `n_test_frac` of them, shuffled by `seed`; both
    splits non-empty when there are two rows or more (a lone row is for testing)."""
    n_test = round(n * n_test_frac)
    if 0 < n_test_frac < 1:
        n_test = min(max(n_test, 1), max(n - 1, 1))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return set(order[:n_test])


def load_jsonl_task(path: str | Path, n_test_frac: float = 0.5, seed: int = 0) -> Task:
    """A task from a JSONL file, its pairs shuffled by `seed` and split so that about
    `n_test_frac` of them are test pairs; each split keeps the file's order."""
    path = Path(path)
    if not 0 <= n_test_frac <= 1:
        raise UserError(f"{path}: n_test_frac must be between 0 and 1, got {n_test_frac}")
    pairs = _pairs(path, read_objects(path, _check_row))
    if not pairs:
        raise UserError(f"{path}: no rows; expected JSON objects with {', '.join(REQUIRED)}")
    test_idx = split_indices(len(pairs), n_test_frac, seed)
    return Task(
        name=path.stem,
        description=f"user task from {path.name} ({len(pairs)} pairs)",
        train=[p for i, p in enumerate(pairs) if i not in test_idx],
        test=[p for i, p in enumerate(pairs) if i in test_idx],
        source=str(path),
    )
