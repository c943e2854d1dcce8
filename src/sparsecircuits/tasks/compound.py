"""Compound tasks: one answer that combines two subroutines, and a dataset per subroutine in
which only that subroutine varies (after the protocol of Lepori et al. 2023).

Example, `quote_bracket`: `foo(a, 'abc` must be closed with `')`, `x = [a, "abc` with `"]`.
The answer is quote type (factor A) x bracket type (factor B); the four closers are single
tokens of the stdlib tokenizer. Every example is one *cell* of four prompts that share all
their text and differ only in the two factors, so

- the compound dataset is every prompt with its own answer (4-way: all closers compete),
- subroutine A's dataset is pairs of prompts of one cell that differ only in A (B fixed),
- subroutine B's dataset likewise, and each is a `Task` like any other (pairs, pair loss).

User compound tasks come as three JSONL files: the compound rows `{"prompt", "answer",
"a", "b"}` (a and b name the factor values), and the A and B files in the ordinary task
format (tasks/jsonl.py). A subroutine file whose pairs change the other factor, or do not
change their own, is refused: it would not measure what it claims.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from ..errors import UserError
from .base import Pair, Task, TensorBatch, first_tokens, last_logits, padded
from .generators import draw_distinct
from .jsonl import load_jsonl_task, read_objects, split_indices
from .snippets import WORDS, func_name, names

FACTORS = ("a", "b")


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    a: str
    b: str


@dataclass
class CompoundBatch(TensorBatch):
    """Single prompts for training and 4-way scoring: `answer` indexes `candidates`."""

    tokens: torch.Tensor  # [N, T]
    last_pos: torch.Tensor  # [N]
    answer: torch.Tensor  # [N] index into candidates
    candidates: torch.Tensor  # [C] first token of each possible answer

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def subset(self, idx) -> CompoundBatch:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return CompoundBatch(
            self.tokens[idx], self.last_pos[idx], self.answer[idx], self.candidates
        )


@dataclass
class CompoundTask:
    """A compound task, its two factors and the three datasets (see the module docstring)."""

    name: str
    description: str
    factor_names: tuple[str, str]  # what A and B are, e.g. ("quote", "bracket")
    train: list[Example]
    test: list[Example]
    sub: dict[str, Task]  # "a" / "b" -> the subroutine's paired task
    source: str | None = None

    @property
    def answers(self) -> list[str]:
        return sorted({e.answer for e in self.train + self.test})

    def encode(self, tokenizer: Tokenizer, split: str, n_ctx: int | None = None) -> CompoundBatch:
        examples = self.train if split == "train" else self.test
        if not examples:
            raise UserError(f"{self.source or self.name}: the {split} split has no examples")
        order = self.answers
        first = first_tokens(tokenizer, order, self.source or self.name)
        if len(set(first.values())) < len(first):
            raise UserError(
                f"{self.source or self.name}: answers {order} do not start with distinct "
                "tokens under this tokenizer, so they cannot be told apart"
            )
        encoded = [
            e.ids
            for e in tokenizer.encode_batch([x.prompt for x in examples], add_special_tokens=False)
        ]
        longest = max(len(ids) for ids in encoded)
        if n_ctx is not None and longest > n_ctx:
            raise UserError(
                f"{self.source or self.name}: a prompt is {longest} tokens > n_ctx={n_ctx}"
            )
        tokens, last_pos = padded(tokenizer, encoded)
        return CompoundBatch(
            tokens,
            last_pos,
            torch.tensor([order.index(x.answer) for x in examples]),
            torch.tensor([first[a] for a in order]),
        )


def compound_accuracy(logits: torch.Tensor, batch: CompoundBatch) -> float:
    """Fraction of prompts whose answer has the largest logit among all candidates."""
    last = last_logits(logits, batch.last_pos)[:, batch.candidates.to(logits.device)]
    return float((last.argmax(-1) == batch.answer.to(logits.device)).float().mean())


def compound_loss(logits: torch.Tensor, batch: CompoundBatch) -> torch.Tensor:
    """Next-token cross-entropy of the answer over the whole vocabulary (what fine-tuning
    minimises: the model learns the task as language modelling, not as a classifier)."""
    target = batch.candidates[batch.answer].to(logits.device)
    return torch.nn.functional.cross_entropy(last_logits(logits, batch.last_pos), target)


# ---------- built-in compound tasks ----------

Cell = Callable[[random.Random], dict[tuple[str, str], str]]


@dataclass(frozen=True)
class CompoundSpec:
    name: str
    description: str
    factor_names: tuple[str, str]
    values: tuple[tuple[str, str], tuple[str, str]]  # the two values of A and of B
    answer: Callable[[str, str], str]
    make_cell: Cell  # one random context -> {(a, b): prompt} for all four combinations


def _quote_bracket_cell(rng: random.Random) -> dict[tuple[str, str], str]:
    var, arg = names(rng, 2)
    word = rng.choice(WORDS)
    heads = {"(": f"{var} = {func_name(rng)}({arg}, ", "[": f"{var} = [{arg}, "}
    return {(q, b): f"{heads[b]}{q}{word}" for q in "'\"" for b in "(["}


def _nested_close_cell(rng: random.Random) -> dict[tuple[str, str], str]:
    var, arg, obj = names(rng, 3)
    fn, inner_fn = func_name(rng), func_name(rng)
    inner = {"(": f"{inner_fn}({arg}", "[": f"{obj}[{arg}"}
    outer = {"(": f"{fn}(", "[": "["}
    return {(i, o): f"{var} = {outer[o]}{inner[i]}" for i in "([" for o in "(["}


CLOSE = {"(": ")", "[": "]"}

COMPOUND_TASKS: dict[str, CompoundSpec] = {
    s.name: s
    for s in (
        CompoundSpec(
            "quote_bracket",
            "close a string argument: quote type (A) x bracket type (B), e.g. ') or \"]",
            ("quote", "bracket"),
            (("'", '"'), ("(", "[")),
            lambda q, b: q + CLOSE[b],
            _quote_bracket_cell,
        ),
        CompoundSpec(
            "nested_close",
            "close two nested brackets: inner bracket (A) x outer bracket (B), e.g. ]) or )]",
            ("inner bracket", "outer bracket"),
            (("(", "["), ("(", "[")),
            lambda i, o: CLOSE[i] + CLOSE[o],
            _nested_close_cell,
        ),
    )
}


def _sub_pairs(cells: list[dict], spec_answer, factor: str, rng: random.Random) -> list[Pair]:
    """One pair per cell: the two prompts that differ only in `factor` (the other factor's
    value drawn at random, so both of its values occur)."""
    pairs = []
    for cell in cells:
        (a0, b0), (a1, b1) = sorted(cell)[0], sorted(cell)[-1]
        if factor == "a":
            b = rng.choice((b0, b1))
            keys = ((a0, b), (a1, b))
        else:
            a = rng.choice((a0, a1))
            keys = ((a, b0), (a, b1))
        pairs.append(
            Pair(cell[keys[0]], cell[keys[1]], spec_answer(*keys[0]), spec_answer(*keys[1]))
        )
    return pairs


def get_compound_task(
    name: str, n_train: int = 128, n_test: int = 128, seed: int = 0
) -> CompoundTask:
    """A built-in compound task with `n_train` / `n_test` cells (4 prompts each)."""
    if name not in COMPOUND_TASKS:
        raise UserError(f"unknown compound task {name!r}; known: {', '.join(COMPOUND_TASKS)}")
    spec = COMPOUND_TASKS[name]
    rng = random.Random(f"{name}/{seed}")
    cells = draw_distinct(
        rng, n_train + n_test, spec.make_cell, dict.values, set(), f"compound task {name}", "cells"
    )
    splits = {"test": cells[:n_test], "train": cells[n_test:]}
    examples = {
        split: [Example(p, spec.answer(a, b), a, b) for cell in cs for (a, b), p in cell.items()]
        for split, cs in splits.items()
    }
    sub = {}
    for factor in FACTORS:
        pairs = {s: _sub_pairs(cs, spec.answer, factor, rng) for s, cs in splits.items()}
        label = spec.factor_names[FACTORS.index(factor)]
        sub[factor] = Task(
            f"{name}.{factor}",
            f"{name}, only the {label} varies",
            pairs["train"],
            pairs["test"],
            notes=f"the {label}",
        )
    task = CompoundTask(
        name, spec.description, spec.factor_names, examples["train"], examples["test"], sub
    )
    check_subroutines(task)
    return task


# ---------- user compound tasks ----------

COMPOUND_FIELDS = ("prompt", "answer", "a", "b")


def load_compound_task(
    compound: str | Path,
    a_file: str | Path,
    b_file: str | Path,
    n_test_frac: float = 0.5,
    seed: int = 0,
) -> CompoundTask:
    """A user compound task from three JSONL files (see the module docstring)."""
    path = Path(compound)
    examples = []
    for n, row in read_objects(path):
        if sorted(row) != sorted(COMPOUND_FIELDS):
            raise UserError(
                f"{path}:{n}: expected an object with exactly {', '.join(COMPOUND_FIELDS)}"
            )
        if not all(isinstance(v, str) and v for v in row.values()):
            raise UserError(f"{path}:{n}: every field must be a non-empty string")
        examples.append(Example(row["prompt"], row["answer"], row["a"], row["b"]))
    if not examples:
        raise UserError(f"{path}: no rows; expected JSON objects with {', '.join(COMPOUND_FIELDS)}")
    combos = {(e.a, e.b) for e in examples}
    if len({e.a for e in examples}) < 2 or len({e.b for e in examples}) < 2:
        raise UserError(
            f"{path}: each factor needs at least two values (a: {sorted({e.a for e in examples})}, b: {sorted({e.b for e in examples})})"
        )
    answer_of: dict[tuple[str, str], str] = {}
    for e in examples:
        if answer_of.setdefault((e.a, e.b), e.answer) != e.answer:
            raise UserError(
                f"{path}: a={e.a!r}, b={e.b!r} has two answers, {answer_of[(e.a, e.b)]!r} and {e.answer!r}"
            )
    test_idx = split_indices(len(examples), n_test_frac, seed)
    sub = {
        "a": load_jsonl_task(a_file, n_test_frac, seed),
        "b": load_jsonl_task(b_file, n_test_frac, seed),
    }
    task = CompoundTask(
        path.stem,
        f"user compound task from {path.name} ({len(examples)} prompts, {len(combos)} answers)",
        ("a", "b"),
        [e for i, e in enumerate(examples) if i not in test_idx],
        [e for i, e in enumerate(examples) if i in test_idx],
        sub,
        source=str(path),
    )
    check_subroutines(task)
    return task


def check_subroutines(task: CompoundTask) -> None:
    """Every pair of subroutine X's dataset must change X and keep the other factor: its two
    answers are compound answers whose factors say so. Otherwise the dataset does not vary
    what it claims, and any 'subnetwork for X' found on it would mean something else."""
    factors_of: dict[str, set[tuple[str, str]]] = {}
    for e in task.train + task.test:
        factors_of.setdefault(e.answer, set()).add((e.a, e.b))
    for factor, sub in task.sub.items():
        i, other = FACTORS.index(factor), 1 - FACTORS.index(factor)
        label = task.factor_names[i]
        for split, pairs in (("train", sub.train), ("test", sub.test)):
            for k, pair in enumerate(pairs):
                where = sub.where(split, k, pair)
                fa, fb = factors_of.get(pair.answer_a), factors_of.get(pair.answer_b)
                if not fa or not fb:
                    missing = pair.answer_a if not fa else pair.answer_b
                    raise UserError(
                        f"{where}: answer {missing!r} is not an answer of the compound task {task.name}"
                    )
                if len(fa) > 1 or len(fb) > 1:
                    raise UserError(
                        f"{where}: answer {pair.answer_a if len(fa) > 1 else pair.answer_b!r} stands for several factor values, so the pair's factors are ambiguous"
                    )
                (xa,), (xb,) = fa, fb
                if xa[i] == xb[i]:
                    raise UserError(
                        f"{where}: the two answers {pair.answer_a!r} and {pair.answer_b!r} have the "
                        f"same {label} ({xa[i]!r}): this dataset claims to vary only the {label}, but this pair does not vary it"
                    )
                if xa[other] != xb[other]:
                    raise UserError(
                        f"{where}: the answers {pair.answer_a!r} and {pair.answer_b!r} also differ in "
                        f"{task.factor_names[other]} ({xa[other]!r} vs {xb[other]!r}): this dataset "
                        f"claims to vary only the {label}"
                    )
