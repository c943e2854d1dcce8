"""The built-in tasks: seeded generators of prompt pairs, after the task table of Gao et al.
(2025), "Weight-sparse transformers have interpretable circuits".

Each pair maker draws one pair from a `random.Random`; `TaskGenerator` turns it into a task
with disjoint train and test splits. Answers are chosen for byte-level BPE: a prompt never
ends in a space or in punctuation that would fuse with the answer into one pre-token, so
the answer's first token, encoded alone, is the token that follows the prompt in real code.
Each docstring names the two answers.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UserError
from .base import Pair, Task
from .snippets import (
    KEY,
    NAMES,
    class_name,
    condition,
    def_line,
    distinct_initials,
    fillers,
    func_name,
    function,
    ind,
    keyed_pair,
    names,
    phrase,
)


@dataclass(frozen=True)
class TaskGenerator:
    """A registered task: call it with (n_train, n_test, seed, n_select) to get a `Task`."""

    name: str
    description: str
    notes: str
    make_pair: Callable[[random.Random], Pair]

    def __call__(
        self, n_train: int = 128, n_test: int = 128, seed: int = 0, n_select: int = 0
    ) -> Task:
        for what, n in (("n_train", n_train), ("n_test", n_test), ("n_select", n_select)):
            if not isinstance(n, int) or n < 0:
                raise UserError(f"task {self.name}: {what} must be an integer >= 0, got {n!r}")
        # Each split is drawn from its own stream, test first, then train, then selection,
        # so neither test nor train depends on the later splits' sizes; a pair reusing an
        # earlier split's prompt is skipped.
        seen: set[str] = set()
        test = self._draw(random.Random(f"{self.name}/{seed}/test"), n_test, seen)
        train = self._draw(random.Random(f"{self.name}/{seed}/train"), n_train, seen)
        select = self._draw(random.Random(f"{self.name}/{seed}/select"), n_select, seen)
        return Task(self.name, self.description, train, test, notes=self.notes, select=select)

    def _draw(self, rng: random.Random, n: int, seen: set[str]) -> list[Pair]:
        return draw_distinct(
            rng,
            n,
            self.make_pair,
            lambda p: (p.prompt_a, p.prompt_b),
            seen,
            f"task {self.name}",
            "pairs",
        )


def draw_distinct(
    rng, n: int, make: Callable, prompts: Callable, seen: set[str], what: str, noun: str
):
    """`n` items from `make(rng)` none of whose prompts (`prompts(item)`) was seen before;
    `seen` is updated. A generator that cannot produce that many is an error, not a loop."""
    items: list = []
    for _ in range(20 * n + 100):
        if len(items) == n:
            break
        item = make(rng)
        texts = tuple(prompts(item))
        if not seen.intersection(texts):
            seen.update(texts)
            items.append(item)
    if len(items) < n:
        raise UserError(f"{what}: only {len(items)} distinct {noun} found of the {n} asked for")
    return items


TASKS: dict[str, TaskGenerator] = {}


def _task(description: str, notes: str) -> Callable:
    """Register a pair maker under its function name."""

    def register(make_pair: Callable[[random.Random], Pair]) -> Callable:
        name = make_pair.__name__
        TASKS[name] = TaskGenerator(name, description, notes, make_pair)
        return make_pair

    return register


@_task("close a string with the quote that opened it", "the opening quote, ' or \"")
def single_double_quote(rng: random.Random) -> Pair:
    """Answers `'` and `"`: the closing quote at the end of the line."""
    var = names(rng, 1)[0]
    head = rng.choice([f"{var} =", "return", f"assert {var},", f"{var} +="])
    body = [f"{ind(1)}{head} {KEY}{phrase(rng)}"]
    return keyed_pair(function(rng, body), "'", '"', "'", '"')


@_task("close a list nested two deep or one deep", "the opening bracket, [[ or [")
def bracket_counting(rng: random.Random) -> Pair:
    """Answers `]]` and `]`: close every open bracket of the list at the end of the line."""
    var = names(rng, 1)[0]
    if rng.random() < 0.5:
        items = [str(rng.randint(0, 99)) for _ in range(rng.randint(1, 5))]
    else:
        items = names(rng, rng.randint(1, 4), avoid=(var,))
    body = [f"{ind(1)}{var} = {KEY}{', '.join(items)}"]
    return keyed_pair(function(rng, body), "[[", "[", "]]", "]")


def _set_or_string(rng: random.Random, var: str) -> Pair:
    """Answers `.` (as in `.add(x)`) and ` +=`: grow a set or a string in a loop."""
    coll, item = names(rng, 2, avoid=(var,))
    template = "\n".join(
        [
            def_line(rng, [coll]),
            f"{ind(1)}{var} = {KEY}",
            *fillers(rng, 1, avoid=(var, coll, item)),
            f"{ind(1)}for {item} in {coll}:",
            f"{ind(2)}{var}",
        ]
    )
    return keyed_pair(template, "set()", rng.choice(['""', "''"]), ".", " +=")


@_task("add to a variable made by set() or by an empty string", "the initializer of the variable")
def set_or_string(rng: random.Random) -> Pair:
    """Answers `.` (as in `.add(x)`) and ` +=`; the variable name is random."""
    return _set_or_string(rng, names(rng, 1)[0])


@_task("set_or_string with the variable always named current", "the initializer of `current`")
def set_or_string_fixedvarname(rng: random.Random) -> Pair:
    """Answers `.` (as in `.add(x)`) and ` +=`; the variable is always `current`."""
    return _set_or_string(rng, "current")


@_task("after the first element: dict or list display", "the opening { or [")
def bracket_brace(rng: random.Random) -> Pair:
    """Answers `:` and `,`: what follows the first element after `{` (dict) or `[` (list)."""
    var, first = names(rng, 2)
    if rng.random() < 0.5:
        first = str(rng.randint(0, 99))
    body = [f"{ind(1)}{var} = {KEY}{first}"]
    return keyed_pair(function(rng, body), "{", "[", ":", ",")


@_task("after `for x` or `while x`", "the loop keyword")
def for_while(rng: random.Random) -> Pair:
    """Answers ` in` and `:`: `for x in ...` versus `while x:`."""
    body = [f"{ind(1)}{KEY} {names(rng, 1)[0]}"]
    return keyed_pair(function(rng, body), "for", "while", " in", ":")


@_task("`==` in an if condition versus `=` in an assignment", "`if` before the name or not")
def if_equals(rng: random.Random) -> Pair:
    """Answers ` ==` and ` =`: `if x == ...` versus `x = ...`."""
    body = [f"{ind(1)}{KEY}{names(rng, 1)[0]}"]
    return keyed_pair(function(rng, body), "if ", "", " ==", " =")


@_task("copy the matching parameter in `self.x = x`", "the attribute name after `self.`")
def class_init(rng: random.Random) -> Pair:
    """Answers ` a` and ` b`: two parameters of `__init__`, copied by `self.a = a`."""
    a, b, *stored = distinct_initials(rng, rng.randint(2, 4))
    params = [a, b, *stored]
    rng.shuffle(params)
    lines = [
        f"class {class_name(rng)}:",
        f"{ind(1)}def __init__(self, {', '.join(params)}):",
        # Some parameters are already stored, as in real constructors.
        *[f"{ind(2)}self.{p} = {p}" for p in stored],
        f"{ind(2)}self.{KEY} =",
    ]
    return keyed_pair("\n".join(lines), a, b, f" {a}", f" {b}")


@_task("enumerate or range after `for i, x in` / `for i in`", "one loop variable or two")
def enumerate_range(rng: random.Random) -> Pair:
    """Answers ` enumerate` and ` range`: two loop variables need enumerate, one an index."""
    index = rng.choice(["i", "j", "idx", "pos", "index", "offset"])
    coll, item = names(rng, 2, avoid=(index,))
    body = [f"{ind(1)}for {KEY} in"]
    return keyed_pair(
        function(rng, body, params=[coll], avoid=(index, item)),
        f"{index}, {item}",
        index,
        " enumerate",
        " range",
    )


@_task("`:` after `lambda x` versus `(` after `def x`", "`lambda` or `def` before the name")
def lambda_func(rng: random.Random) -> Pair:
    """Answers `:` and `(`: `f = lambda x: ...` versus `def x(...)`."""
    fn, arg = names(rng, 2)
    body = [f"{ind(1)}{KEY} {arg}"]
    return keyed_pair(function(rng, body), f"{fn} = lambda", "def", ":", "(")


@_task("`:` after `while True`, end of line after `return True`", "`while` or `return`")
def while_return_true(rng: random.Random) -> Pair:
    """Answers `:` and a newline followed by three spaces: `while True:` opens a block, and
    `return True` ends an if-block, so the next line is back at the function's indentation.
    Byte-level pre-tokenization gives that line's last indent space to its first word, so
    the newline and three spaces are the one token that follows `return True` in real code."""
    x = names(rng, 1)[0]
    body = [f"{ind(1)}if {condition(rng, x)}:", f"{ind(2)}{KEY} True"]
    return keyed_pair(function(rng, body), "while", "return", ":", "\n" + ind(1)[:-1])


@_task("the second variable in a swap `a, b = b, a`", "the first name of the swap")
def var_swap(rng: random.Random) -> Pair:
    """Answers ` a` and ` c`: `a, b = b,` ends with ` a` and `c, b = b,` with ` c`."""
    a, c, b = distinct_initials(rng, 3)
    params = [a, b, c]
    rng.shuffle(params)
    body = [f"{ind(1)}{KEY}, {b} = {b},"]
    return keyed_pair(function(rng, body, params=params, avoid=(a, b, c)), a, c, f" {a}", f" {c}")


@_task("open a file for reading or writing, by the function's name", "read_ or write_ verb")
def with_open(rng: random.Random) -> Pair:
    """Answers `r` and `w`: the mode letter after `open(path, '`."""
    path = rng.choice(["path", "filename", "file", "name"])
    quote = rng.choice(["'", '"'])
    template = "\n".join(
        [
            def_line(rng, [path], name=f"{KEY}_{rng.choice(NAMES)}"),
            *fillers(rng, 1, hi=1, avoid=(path,)),
            f"{ind(1)}with open({path}, {quote}",
        ]
    )
    reader = rng.choice(["read", "load", "parse"])
    writer = rng.choice(["write", "save", "dump"])
    return keyed_pair(template, reader, writer, "r", "w")


@_task("`:` after `else`, a condition after `elif`", "`else` or `elif`")
def else_elif(rng: random.Random) -> Pair:
    """Answers `:` and ` x`, where x is the name the `if` above tested."""
    x, y = names(rng, 2)
    body = [
        f"{ind(1)}if {condition(rng, x)}:",
        *fillers(rng, 2, lo=1, hi=2, avoid=(x,)),
        f"{ind(1)}{KEY}",
    ]
    return keyed_pair(function(rng, body, params=[x, y], avoid=(x,)), "else", "elif", ":", f" {x}")


@_task("`:` after an if statement, `else` in a conditional expression", "statement or ternary")
def if_ternary(rng: random.Random) -> Pair:
    """Answers `:` and ` else`: `if x:` versus `y = z if x else ...`."""
    x, y, z = names(rng, 3)
    body = [f"{ind(1)}{KEY}{x}"]
    return keyed_pair(function(rng, body), "if ", f"{y} = {z} if ", ":", " else")


@_task("` as` after `with open(...)`, `:` after `with lock`", "open(...) or a lock")
def with_as(rng: random.Random) -> Pair:
    """Answers ` as` and `:`: a file is bound to a name, a lock is not."""
    path = names(rng, 1)[0]
    lock = rng.choice(["lock", "self.lock", "self._lock", "mutex", "cond"])
    body = [f"{ind(1)}with {KEY}"]
    return keyed_pair(function(rng, body), f"open({path})", lock, " as", ":")


@_task("a default after a parameter that follows a defaulted one", "the earlier `=default`")
def final_kwarg(rng: random.Random) -> Pair:
    """Answers `=` (as in `=None`) and `):`: after a parameter with a default, the last one
    needs one too."""
    first, middle, last = names(rng, 3)
    default = rng.choice(["None", "0", "1", "True", "False"])
    if rng.random() < 0.5:
        head = f"def {func_name(rng)}({first}"
    else:
        head = f"class {class_name(rng)}:\n{ind(1)}def {func_name(rng)}(self, {first}"
    template = f"{head}, {middle}{KEY}, {last}"
    return keyed_pair(template, f"={default}", "", "=", "):")


@_task("`:` after `if x == True`, end of line after `x = True`", "`if` and `==` or an assignment")
def var_if(rng: random.Random) -> Pair:
    """Answers `:` and a newline followed by three spaces: `if x == True:` opens a block,
    while `x = True` is a whole statement, so the next line keeps its indentation (whose
    last space byte-level pre-tokenization gives to the next word)."""
    x = names(rng, 1)[0]
    body = [f"{ind(1)}{KEY} True"]
    return keyed_pair(function(rng, body), f"if {x} ==", f"{x} =", ":", "\n" + ind(1)[:-1])


@_task("indent a for loop's body one level below the `for`", "the `for` line's indentation")
def indent_for(rng: random.Random) -> Pair:
    """Answers a newline with 7 spaces and one with 11: the body of a `for` after an
    if-block is at depth 2, of one inside the if-block at depth 3 (the last space of an
    indent goes to the next word, as in `while_return_true`)."""
    x, coll = names(rng, 2)
    other = names(rng, 1, avoid=(x, coll))[0]
    body = [
        f"{ind(1)}if {condition(rng, other)}:",
        *fillers(rng, 2, lo=1, hi=2, avoid=(x, coll, other)),
        f"{KEY}for {x} in {coll}:",
    ]
    template = function(rng, body, params=[coll, other], avoid=(x, coll, other))
    return keyed_pair(template, ind(1), ind(2), "\n" + ind(2)[:-1], "\n" + ind(3)[:-1])


@_task("a name or `0` after `{` in an f-string or a format string", "the `f` prefix")
def fstring_brace(rng: random.Random) -> Pair:
    """Answers a parameter's name and `0`: in an f-string a brace opens an expression, in a
    plain string a field of a later `.format(...)`, numbered. (`{}` would be the commoner
    field, but `{}` is one punctuation run that a BPE may merge into one token.)"""
    var, x = names(rng, 2)
    body = [f"{ind(1)}{var} = {KEY}" + rng.choice(['"', "'"]) + "{"]
    params = [x, *names(rng, rng.randint(0, 1), avoid=(var, x))]
    rng.shuffle(params)
    return keyed_pair(function(rng, body, params=params, avoid=(var, x)), "f", "", x, "0")
