"""Shared fixtures: a small corpus of Python-like files the tests make themselves, and a
private token cache so tests never touch the user's."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from sparsecircuits.config import resolve

WORDS = [
    "value",
    "count",
    "items",
    "name",
    "result",
    "total",
    "index",
    "data",
    "key",
    "node",
    "path",
    "line",
    "text",
    "size",
    "left",
    "right",
    "parent",
    "child",
    "buffer",
    "token",
]


def make_source(rng: random.Random, n_funcs: int = 12) -> str:
    out = []
    for _ in range(n_funcs):
        a, b, c = rng.sample(WORDS, 3)
        q = rng.choice(["'", '"'])
        out.append(
            f"def {a}_{b}({a}, {b}={rng.randint(0, 99)}):\n"
            f"    {c} = [{a}, {b}, {rng.randint(0, 9)}]\n"
            f"    for {b} in range(len({c})):\n"
            f"        if {b} == {rng.randint(0, 5)}:\n"
            f"            {a} += {q}{c}{q}\n"
            f"    return {{{q}{a}{q}: {c}}}\n\n"
        )
    return "".join(out)


def write_corpus(root: Path, n_files: int = 30, seed: int = 0) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        sub = root / f"pkg{i % 3}"
        sub.mkdir(exist_ok=True)
        (sub / f"mod{i}.py").write_text(make_source(rng))
    return root


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SPARSECIRCUITS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture()
def one_thread():
    """Tiny tensors: one thread is fastest and does not fight other work for the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


QUOTE_ROWS = [
    ("x = 'ab", "'", '"'),
    ('x = "ab', '"', "'"),
    ("y = 'cd", "'", '"'),
    ('y = "cd', '"', "'"),
    ("def f(): return 'q", "'", '"'),
    ('def f(): return "q', '"', "'"),
    ("name = 'value", "'", '"'),
    ('name = "value', '"', "'"),
    ("s = 'text", "'", '"'),
    ('s = "text', '"', "'"),
    ("k = 'key", "'", '"'),
    ('k = "key', '"', "'"),
]


def write_quote_task(path: Path) -> str:
    """A short user task file (JSONL, pairs as consecutive rows) that tiny models can encode."""
    import json

    path.write_text(
        "".join(
            json.dumps({"prompt": p, "correct": c, "incorrect": i}) + "\n" for p, c, i in QUOTE_ROWS
        )
    )
    return str(path)


def tiny_configs(corpus: Path, **overrides):
    """The smoke preset shrunk further, on the test corpus."""
    sets = dict(
        vocab_size=300,
        n_ctx=16,
        d_model=32,
        n_layer=2,
        steps=12,
        batch_size=4,
        eval_every=6,
        eval_batches=1,
        checkpoint_every=4,
        data=[str(corpus)],
    )
    sets.update(overrides)
    return resolve("smoke", None, sets)
