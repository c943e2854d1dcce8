"""Binary next-token tasks: prompt pairs, their tensors, and the pair-wise task loss.

A task is a list of *pairs*: two prompts that differ in one key place and whose correct next
tokens are each other's wrong ones. The model is scored only on the logits of the two
candidate tokens at each prompt's last position, so a pair cancels out everything the two
prompts share and isolates the behaviour the key place controls.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from dataclasses import Field, dataclass, field, fields, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from ..errors import UserError
from ..tokenizer import eot_id


@dataclass(frozen=True)
class Pair:
    """Two prompts with opposite answers: `answer_a` is right for `prompt_a` and wrong for
    `prompt_b`, and the other way round. `line` is where the pair starts in a user's task
    file (for error messages); it takes no part in equality or hashing.

    An `unpaired` example (a task file row with no partner) has one prompt (`prompt_b` is
    `prompt_a`), right answer `answer_a`, wrong answer `answer_b`. It is encoded as two
    identical rows with the same answers, so it weighs as much as a pair in the task loss,
    and a calibration shift (which helps row a as much as it hurts row b) cancels on it.
    """

    prompt_a: str
    prompt_b: str
    answer_a: str
    answer_b: str
    line: int | None = field(default=None, compare=False, hash=False)
    unpaired: bool = False

    def rows(self) -> list[tuple[str, str, str]]:
        """(prompt, correct, incorrect) of each of its prompts."""
        if self.unpaired:
            return [(self.prompt_a, self.answer_a, self.answer_b)]
        return [
            (self.prompt_a, self.answer_a, self.answer_b),
            (self.prompt_b, self.answer_b, self.answer_a),
        ]


class TensorBatch:
    """Mixin for a dataclass whose fields are all tensors: `to(device)` moves every one."""

    # For the type checker: each subclass is a dataclass, so fields and replace accept it.
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    def to(self, device: torch.device | str):
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})


@dataclass
class TaskBatch(TensorBatch):
    """Tensors for a set of pairs; rows 2i and 2i+1 are the two prompts of pair i."""

    tokens: torch.Tensor  # [2N, T] long, right-padded with the end-of-text id
    last_pos: torch.Tensor  # [2N] long, index of each prompt's last token
    correct: torch.Tensor  # [2N] long, first token of the correct answer
    incorrect: torch.Tensor  # [2N] long, first token of the wrong answer

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def subset(self, idx: Sequence[int] | torch.Tensor | slice) -> TaskBatch:
        """The rows of the given pairs (pair indices, not row indices), pairs kept together."""
        n_pairs = len(self) // 2
        if isinstance(idx, slice):
            idx = range(n_pairs)[idx]
        pairs = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        rows = (2 * pairs[:, None] + torch.arange(2)).reshape(-1).to(self.tokens.device)
        return TaskBatch(
            self.tokens[rows], self.last_pos[rows], self.correct[rows], self.incorrect[rows]
        )


SPLITS = ("train", "select", "test")


@dataclass
class Task:
    """A named task with disjoint train and test pairs, and optionally selection pairs.

    Three splits keep every reported number held out: masks and calibrations are fitted on
    `train`, a search's settings are chosen and its circuit validated on `select`, and
    `test` is only reported. `select` is empty unless asked for (`n_select`).
    `notes` says what the key place is; `source` is the file a user task came from, so
    errors found at `encode` time can point at its lines.
    """

    name: str
    description: str
    train: list[Pair]
    test: list[Pair]
    notes: str = ""
    source: str | None = None
    select: list[Pair] = field(default_factory=list)

    def split(self, name: str) -> list[Pair]:
        if name not in SPLITS:
            raise UserError(
                f"{self._label()}: split must be one of {', '.join(SPLITS)}, not {name!r}"
            )
        return getattr(self, name)

    def map_pairs(self, fn, name: str) -> Task:
        """The same task with every split's pairs passed through `fn(pairs) -> pairs`."""
        return replace(self, name=name, **{s: fn(getattr(self, s)) for s in SPLITS})

    def with_selection(self, n_select: int, seed: int) -> Task:
        """`n_select` of the train pairs (a seeded choice) moved to the selection split: for
        a task whose pairs come from a file, where no fresh pairs can be drawn."""
        if n_select <= 0 or self.select:
            return self
        if n_select >= len(self.train):
            raise UserError(
                f"{self._label()}: {n_select} selection pairs leave no train pair "
                f"({len(self.train)} train pairs)"
            )
        rng = random.Random(f"{self.name}/{seed}/select")
        picked = set(rng.sample(range(len(self.train)), n_select))
        return replace(
            self,
            train=[p for i, p in enumerate(self.train) if i not in picked],
            select=[p for i, p in enumerate(self.train) if i in picked],
        )

    def _label(self) -> str:
        return self.source if self.source is not None else f"task {self.name}"

    def where(self, split: str, i: int, pair: Pair) -> str:
        if self.source is not None and pair.line is not None:
            return f"{self.source}:{pair.line}"
        return f"{self._label()} ({split} pair {i})"

    def encode(
        self, tokenizer: Tokenizer, split: str = "test", n_ctx: int | None = None
    ) -> TaskBatch:
        """Tokenize one split. Prompts and answers are encoded separately, without special
        tokens, and only each answer's first token is scored."""
        pairs = self.split(split)
        if not pairs:
            raise UserError(f"{self._label()}: the {split} split has no pairs")
        answers = [a for pair in pairs for a in (pair.answer_a, pair.answer_b)]
        first_token = first_tokens(tokenizer, answers, self._label())

        # Two rows per pair; an unpaired example's one prompt twice (see Pair).
        rows = [r for pair in pairs for r in pair.rows() * (3 - len(pair.rows()))]
        prompts = [prompt for prompt, _, _ in rows]
        encoded = [e.ids for e in tokenizer.encode_batch(prompts, add_special_tokens=False)]
        if n_ctx is not None and self.source is None:
            # A generated task on a short-context model keeps the pairs that fit; a user's
            # file is the user's to fix, so its long prompts stay errors below.
            fits = [
                i
                for i in range(len(pairs))
                if max(len(ids) for ids in encoded[2 * i : 2 * i + 2]) <= n_ctx
            ]
            if not fits:
                raise UserError(f"task {self.name}: no {split} pair fits in n_ctx={n_ctx}")
            if len(fits) < len(pairs):
                print(
                    f"note: task {self.name}: {len(pairs) - len(fits)} of {len(pairs)} {split} "
                    f"pairs are longer than n_ctx={n_ctx} and were left out",
                    file=sys.stderr,
                )
                pairs = [pairs[i] for i in fits]
                rows = [rows[2 * i + r] for i in fits for r in (0, 1)]
                encoded = [encoded[2 * i + r] for i in fits for r in (0, 1)]
        correct, incorrect = [], []
        for i, pair in enumerate(pairs):
            a, b = first_token[pair.answer_a], first_token[pair.answer_b]
            if a == b:
                raise UserError(
                    f"{self.where(split, i, pair)}: answers {pair.answer_a!r} and "
                    f"{pair.answer_b!r} both start with token {tokenizer.decode([a])!r}, "
                    "so this tokenizer cannot tell them apart"
                )
            for row, ids in enumerate(encoded[2 * i : 2 * i + 2]):
                if not ids:
                    raise UserError(f"{self.where(split, i, pair)}: empty prompt")
                if n_ctx is not None and len(ids) > n_ctx:
                    raise UserError(
                        f"{self.where(split, i, pair)}: prompt {'ab'[row]} is {len(ids)} "
                        f"tokens, longer than n_ctx={n_ctx}"
                    )
        for _, right, wrong in rows:
            correct.append(first_token[right])
            incorrect.append(first_token[wrong])

        tokens, last_pos = padded(tokenizer, encoded)
        return TaskBatch(
            tokens=tokens,
            last_pos=last_pos,
            correct=torch.tensor(correct, dtype=torch.long),
            incorrect=torch.tensor(incorrect, dtype=torch.long),
        )


def first_tokens(tokenizer: Tokenizer, answers, label: str) -> dict[str, int]:
    """{answer: its first token}, each encoded alone without special tokens."""
    first: dict[str, int] = {}
    for answer in answers:
        if answer not in first:
            ids = tokenizer.encode(answer, add_special_tokens=False).ids
            if not ids:
                raise UserError(f"{label}: answer {answer!r} encodes to no tokens")
            first[answer] = ids[0]
    return first


def padded(tokenizer: Tokenizer, encoded: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [N, longest] right-padded with end-of-text, index of each last real token)."""
    width = max(len(ids) for ids in encoded)
    tokens = torch.full((len(encoded), width), eot_id(tokenizer), dtype=torch.long)
    for r, ids in enumerate(encoded):
        tokens[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return tokens, torch.tensor([len(ids) - 1 for ids in encoded], dtype=torch.long)


def prompt_windows(batch) -> list[torch.Tensor]:
    """Each prompt of a batch as its own [1, len] window, without the padding: what the
    means of an ablation over "the task's prompts" are taken over."""
    return [batch.tokens[i : i + 1, : int(batch.last_pos[i]) + 1] for i in range(len(batch))]


def last_logits(logits: torch.Tensor, last_pos: torch.Tensor) -> torch.Tensor:
    """logits [N, T, V] -> [N, V]: each row's logits at its own last position."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, last_pos.to(logits.device)]


def task_logit_diff(logits: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
    """[2N] logit(correct) - logit(incorrect) at each prompt's last position; logits
    [2N, T, V], or [2N, V] already taken there (`model(tokens, positions=batch.last_pos)`)."""
    last = last_logits(logits, batch.last_pos) if logits.dim() == 3 else logits
    correct = last.gather(1, batch.correct.to(logits.device)[:, None])
    incorrect = last.gather(1, batch.incorrect.to(logits.device)[:, None])
    return (correct - incorrect).squeeze(1)


def pair_loss(diff: torch.Tensor) -> torch.Tensor:
    """Task loss from per-prompt logit differences (correct - incorrect), rows paired as in
    TaskBatch: binary cross-entropy summed over each pair, mean over pairs."""
    # -log softmax over two logits is softplus of minus their difference.
    return F.softplus(-diff).view(-1, 2).sum(1).mean()


def task_loss(logits: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
    """Binary cross-entropy over the two candidates' logits, summed over the pair, mean over
    pairs (= mean over pairs of softplus(-diff_a) + softplus(-diff_b))."""
    return pair_loss(task_logit_diff(logits, batch))


def task_accuracy(logits: torch.Tensor, batch: TaskBatch) -> float:
    """Fraction of prompts whose correct candidate has the larger logit."""
    return (task_logit_diff(logits, batch) > 0).float().mean().item()
