"""Tasks: built-in generators, JSONL user tasks, encoding to tensors, and the task loss."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
import torch

from sparsecircuits.errors import UserError
from sparsecircuits.tasks import (
    TASKS,
    Pair,
    Task,
    TaskBatch,
    get_task,
    list_tasks,
    load_jsonl_task,
    task_accuracy,
    task_logit_diff,
    task_loss,
)
from sparsecircuits.tokenizer import eot_id, train_tokenizer

REQUIRED = [
    "single_double_quote",
    "bracket_counting",
    "set_or_string",
    "set_or_string_fixedvarname",
    "bracket_brace",
    "for_while",
    "if_equals",
    "class_init",
    "enumerate_range",
    "lambda_func",
    "var_if",
    "indent_for",
    "fstring_brace",
]


@pytest.fixture(scope="session")
def tok(corpus_dir):
    """A small byte-level BPE trained on the test corpus plus task prompts followed by their
    answers, so every built-in task's answers get distinct first tokens."""
    texts = [p.read_text() for p in sorted(corpus_dir.rglob("*.py"))]
    for name in TASKS:
        for pair in get_task(name, n_train=32, n_test=0, seed=123).train:
            texts += [
                pair.prompt_a + pair.answer_a + " x\n",
                pair.prompt_b + pair.answer_b + " x\n",
            ]
    return train_tokenizer(texts, 1024)


@pytest.fixture(scope="session")
def bytes_tok():
    """A byte-level tokenizer without merges: every answer's first token is its first byte."""
    return train_tokenizer(["abc"], 257)


def test_registry_has_the_required_tasks():
    assert len(TASKS) >= 10
    assert set(REQUIRED) <= set(TASKS)
    listed = list_tasks()
    assert [name for name, _ in listed] == list(TASKS)
    for _, description in listed:
        assert description and "\n" not in description


@pytest.mark.parametrize("name", list(TASKS))
def test_generator_is_deterministic_with_disjoint_splits(name):
    task = get_task(name, n_train=24, n_test=24, seed=1)
    assert task.name == name
    assert len(task.train) == 24 and len(task.test) == 24
    assert task == get_task(name, n_train=24, n_test=24, seed=1)
    assert task.test != get_task(name, n_train=24, n_test=24, seed=2).test
    # The test split does not depend on how many train pairs were asked for.
    assert task.test == get_task(name, n_train=3, n_test=24, seed=1).test
    train_prompts = {p for pair in task.train for p in (pair.prompt_a, pair.prompt_b)}
    test_prompts = {p for pair in task.test for p in (pair.prompt_a, pair.prompt_b)}
    assert not train_prompts & test_prompts
    for pair in task.train + task.test:
        assert pair.prompt_a != pair.prompt_b
        assert pair.answer_a != pair.answer_b
        for prompt in (pair.prompt_a, pair.prompt_b):
            assert prompt.strip() and "\0" not in prompt
            # A trailing space would be its own token here but part of the answer's in code.
            assert not prompt[-1].isspace()


@pytest.mark.parametrize("name", list(TASKS))
def test_encode_builtin_task(name, tok):
    task = get_task(name, n_train=4, n_test=8, seed=0)
    batch = task.encode(tok, "test", n_ctx=128)
    eot = eot_id(tok)
    assert len(batch) == 16
    assert batch.tokens.dtype == torch.long and batch.tokens.shape[0] == 16
    assert batch.last_pos.shape == batch.correct.shape == batch.incorrect.shape == (16,)
    prompts = [p for pair in task.test for p in (pair.prompt_a, pair.prompt_b)]
    for row, prompt in enumerate(prompts):
        ids = tok.encode(prompt).ids
        last = int(batch.last_pos[row])
        assert last == len(ids) - 1
        assert batch.tokens[row, last] == ids[-1]
        assert tok.decode(batch.tokens[row, : last + 1].tolist()) == prompt
        assert (batch.tokens[row, last + 1 :] == eot).all()
    for i, pair in enumerate(task.test):
        first_a = tok.encode(pair.answer_a).ids[0]
        first_b = tok.encode(pair.answer_b).ids[0]
        assert batch.correct[2 * i : 2 * i + 2].tolist() == [first_a, first_b]
        assert batch.incorrect[2 * i : 2 * i + 2].tolist() == [first_b, first_a]
    assert len(task.encode(tok, "train")) == 8


@pytest.mark.parametrize("name", list(TASKS))
def test_answer_is_the_token_that_follows_the_prompt_in_code(name, tok):
    """Scoring the answer's first token encoded alone is right only if that is the token a
    tokenizer gives it after the prompt, with code following (" x": the next word)."""
    for pair in get_task(name, n_train=16, n_test=0, seed=7).train:
        for prompt, answer in ((pair.prompt_a, pair.answer_a), (pair.prompt_b, pair.answer_b)):
            head = tok.encode(prompt).ids
            full = tok.encode(prompt + answer + " x\n").ids
            assert full[: len(head) + 1] == head + tok.encode(answer).ids[:1], (prompt, answer)


def test_paper_tasks_added_later_read_as_intended():
    vi = get_task("var_if", n_train=1, n_test=0, seed=0).train[0]
    assert " == True" in vi.prompt_a and " = True" in vi.prompt_b and vi.answer_a == ":"
    fs = get_task("fstring_brace", n_train=1, n_test=0, seed=0).train[0]
    assert re.search(r"= f['\"]\{$", fs.prompt_a) and fs.answer_b == "0"
    assert f"({fs.answer_a}" in fs.prompt_a or f" {fs.answer_a})" in fs.prompt_a  # a parameter
    ind = get_task("indent_for", n_train=1, n_test=0, seed=0).train[0]
    depth = [
        len(p.rsplit("\n", 1)[1]) - len(p.rsplit("\n", 1)[1].lstrip())
        for p in (ind.prompt_a, ind.prompt_b)
    ]
    # the body sits one level (4 spaces) below its `for`; the answer's last space goes to the word
    assert [len(a) for a in (ind.answer_a, ind.answer_b)] == [d + 4 for d in depth]


def test_encode_pads_to_the_longest_prompt(tok):
    task = Task("t", "d", [], [Pair("x = 1", "def load_data(path):\n    x", " a", " b")])
    batch = task.encode(tok)
    assert batch.tokens.shape[1] == int(batch.last_pos.max()) + 1
    assert batch.last_pos[0] < batch.last_pos[1]


def test_encode_drops_generated_prompts_longer_than_n_ctx(tok, capsys):
    task = get_task("class_init", n_train=0, n_test=4)
    lengths = task.encode(tok).last_pos + 1
    longest = int(lengths.max())
    assert len(task.encode(tok, n_ctx=longest)) == 8
    kept = task.encode(tok, n_ctx=longest - 1)
    assert len(kept) < 8 and int(kept.last_pos.max()) + 1 < longest
    assert "were left out" in capsys.readouterr().err
    with pytest.raises(UserError, match="no test pair fits in n_ctx=1"):
        task.encode(tok, n_ctx=1)
    # a user's file is the user's to fix: its long prompt is an error naming the line
    user = dataclasses.replace(
        task, source="mine.jsonl", test=[dataclasses.replace(task.test[0], line=3)]
    )
    with pytest.raises(UserError, match="mine.jsonl:3: prompt a is .* longer than n_ctx=2"):
        user.encode(tok, n_ctx=2)


def test_encode_rejects_answers_with_the_same_first_token(bytes_tok):
    task = Task("clash", "d", [], [Pair("x =", "y =", "ab", "ac")])
    with pytest.raises(UserError, match="clash.*'ab' and 'ac' both start with token 'a'"):
        task.encode(bytes_tok)
    # Without merges, " key" and " name" both start with the space byte.
    with pytest.raises(UserError, match="class_init"):
        get_task("class_init", n_train=0, n_test=2).encode(bytes_tok)


def test_encode_rejects_a_bad_split(tok):
    with pytest.raises(UserError, match="split"):
        get_task("for_while", n_train=1, n_test=1).encode(tok, "valid")


def _batch(n_pairs: int) -> TaskBatch:
    """Rows of 3 tokens; candidates 0 (correct) and 1 (incorrect) at varying positions."""
    rows = 2 * n_pairs
    return TaskBatch(
        tokens=torch.arange(rows * 3).view(rows, 3),
        last_pos=torch.tensor([2, 1, 0])[torch.arange(rows) % 3],
        correct=torch.zeros(rows, dtype=torch.long),
        incorrect=torch.ones(rows, dtype=torch.long),
    )


def test_task_loss_matches_a_hand_computation():
    batch = _batch(2)
    logits = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0))
    per_prompt = []
    for r in range(4):
        at = logits[r, batch.last_pos[r]]
        c, w = at[0].item(), at[1].item()
        per_prompt.append(-math.log(math.exp(c) / (math.exp(c) + math.exp(w))))
    expected = ((per_prompt[0] + per_prompt[1]) + (per_prompt[2] + per_prompt[3])) / 2
    assert task_loss(logits, batch).item() == pytest.approx(expected, rel=1e-5)
    diffs = [logits[r, batch.last_pos[r], 0] - logits[r, batch.last_pos[r], 1] for r in range(4)]
    assert torch.allclose(task_logit_diff(logits, batch), torch.stack(diffs))


def test_task_loss_is_two_log_two_at_chance_and_falls_with_the_margin():
    batch = _batch(2)
    logits = torch.zeros(4, 3, 5)
    assert task_loss(logits, batch).item() == pytest.approx(2 * math.log(2))
    losses = []
    for margin in (0.5, 2.0, 8.0, 30.0):
        logits = torch.zeros(4, 3, 5)
        logits[torch.arange(4), batch.last_pos, 0] = margin
        losses.append(task_loss(logits, batch).item())
    assert losses == sorted(losses, reverse=True)
    assert losses[-1] < 1e-6


def test_task_accuracy_counts_prompts_with_a_positive_margin():
    batch = _batch(2)
    logits = torch.zeros(4, 3, 5)
    logits[torch.arange(4), batch.last_pos, 0] = torch.tensor([1.0, 1.0, -1.0, 0.0])
    assert task_accuracy(logits, batch) == pytest.approx(0.5)


def test_subset_keeps_pairs_together():
    batch = _batch(3)
    sub = batch.subset([2, 0])
    assert len(sub) == 4
    assert sub.tokens.tolist() == batch.tokens[[4, 5, 0, 1]].tolist()
    assert sub.last_pos.tolist() == batch.last_pos[[4, 5, 0, 1]].tolist()
    assert batch.subset(slice(1, None)).tokens.tolist() == batch.tokens[2:].tolist()
    assert batch.subset(torch.tensor([1])).correct.tolist() == batch.correct[2:4].tolist()
    assert batch.to("cpu").tokens.tolist() == batch.tokens.tolist()


def _write(tmp_path, lines: list[str], name: str = "task.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _row(prompt: str, correct: str, incorrect: str, **extra) -> str:
    return json.dumps({"prompt": prompt, "correct": correct, "incorrect": incorrect, **extra})


def test_jsonl_both_pair_forms(tmp_path, tok):
    path = _write(
        tmp_path,
        [
            _row("x = 'a", "'", '"', prompt_alt='x = "a'),
            "",
            _row("for x", " in", ":"),
            _row("while x", ":", " in"),
            _row("y = 'b", "'", '"', prompt_alt='y = "b'),
        ],
    )
    task = load_jsonl_task(path, n_test_frac=0.5, seed=0)
    pairs = sorted(task.train + task.test, key=lambda p: p.line)
    assert pairs == [
        Pair("x = 'a", 'x = "a', "'", '"'),
        Pair("for x", "while x", " in", ":"),
        Pair("y = 'b", 'y = "b', "'", '"'),
    ]
    assert [p.line for p in pairs] == [1, 3, 5]
    assert len(task.test) == 2 and len(task.train) == 1
    assert task == load_jsonl_task(path, n_test_frac=0.5, seed=0)
    assert task.name == "task" and "\n" not in task.description
    assert len(task.encode(tok, "test")) == 4
    # get_task takes a path; n_train and n_test set the test fraction.
    assert len(get_task(str(path), n_train=2, n_test=1).test) == 1


def test_jsonl_lone_pair_goes_to_test(tmp_path, tok):
    path = _write(tmp_path, [_row("x = 'a", "'", '"', prompt_alt='x = "a')])
    task = load_jsonl_task(path)
    assert len(task.test) == 1 and task.train == []
    with pytest.raises(UserError, match=f"^{re.escape(str(path))}: the train split has no pairs"):
        task.encode(tok, "train")
    with pytest.raises(UserError, match="n_test_frac"):
        load_jsonl_task(path, n_test_frac=1.5)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"prompt": "a", "correct": "b"'], ":1: invalid JSON"),
        ([_row("a", "'", '"', prompt_alt="b"), "[1, 2]"], ":2: expected a JSON object"),
        (
            [json.dumps({"prompt": "a", "correct": "b", "prompt_alt": "c"})],
            ":1: missing .*incorrect",
        ),
        ([_row("a", "'", '"', prompt_alt=3)], ":1: field 'prompt_alt' must be a non-empty string"),
        ([_row("a", "'", '"', answer="x")], ":1: unknown field 'answer'"),
        # the first problem in file order: line 2's missing field before line 3's bad JSON
        (['{"prompt": "a", "correct": "x"}', "{bad", _row("a", "'", '"')], ":1: missing field"),
        ([_row("a", "'", '"'), '{"prompt": "b"}', "{bad"], ":2: missing field"),
        ([_row("a", "'", "'", prompt_alt="b")], ":1: 'correct' and 'incorrect' are the same"),
        ([_row("a", "'", '"', prompt_alt="a")], ":1: the two prompts .* are identical"),
        (["", "  "], ": no rows"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, lines, message):
    path = _write(tmp_path, lines)
    with pytest.raises(UserError, match=f"^{re.escape(str(path))}{message}"):
        load_jsonl_task(path)


def test_jsonl_same_first_token_is_reported_at_encode_with_its_line(tmp_path, bytes_tok):
    path = _write(
        tmp_path,
        [_row("x", "q", "r", prompt_alt="y"), _row("p", "ab", "ac"), _row("s", "ac", "ab")],
    )
    task = load_jsonl_task(path, n_test_frac=1.0)
    with pytest.raises(UserError, match=f"^{re.escape(str(path))}:2: answers 'ab' and 'ac'"):
        task.encode(bytes_tok)


def test_jsonl_missing_file(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        get_task(str(tmp_path / "nope.jsonl"))


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown task 'no_such_task'") as err:
        get_task("no_such_task")
    for name in TASKS:
        assert name in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_sizes_are_user_errors():
    with pytest.raises(UserError, match="n_train"):
        get_task("for_while", n_train=-1)


def test_jsonl_unpaired_rows_bom_and_duplicates(tmp_path, tok):
    # an unpaired row (no prompt_alt, next row not its swapped partner) is its own example
    path = _write(tmp_path, [_row("x = 'ab", "'", '"'), _row("y = 'cd", "'", '"')])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # a UTF-8 byte-order mark
    task = load_jsonl_task(path, n_test_frac=0.5)
    pairs = task.train + task.test
    assert len(pairs) == 2 and all(p.unpaired for p in pairs)
    batch = task.encode(tok, "test")
    # both rows of an unpaired example score the same prompt with the same answers
    assert torch.equal(batch.tokens[0], batch.tokens[1])
    assert (
        torch.equal(batch.correct[0], batch.correct[1]) and batch.correct[0] != batch.incorrect[0]
    )
    # a pair repeated in the file is kept once, so it cannot be in both splits
    rows = [_row("a", "'", '"', prompt_alt="b")] * 4 + [_row("c", "'", '"', prompt_alt="d")]
    task = load_jsonl_task(_write(tmp_path, rows), n_test_frac=0.5)
    assert len(task.train) == len(task.test) == 1 and task.train != task.test
