"""Building blocks for realistic Python prompts: name pools, indentation, neutral filler
statements, and the pair builder every built-in task uses.

The variable names are words that the 2048-token stdlib tokenizer keeps as one token, both
bare and after a space, so a name used as an answer is a single token there.
"""

from __future__ import annotations

import random

from .base import Pair

INDENT = "    "


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


NAMES = _words(
    "name value count item data key path line lines text size index result node child "
    "buffer token source config message prefix offset start end mode state header block "
    "frame event handler module args obj filename file files func default values col part "
    "char names attr root msg error errors err exc output out url user group sock conn "
    "encoding base first temp pos flags spec method timeout context local version "
    "parser"
)

VERBS = _words(
    "get load save parse build make read write update check find add remove format handle "
    "process collect merge split apply render validate convert compute reset prepare"
)

# Lowercase words for string contents; they end with a letter, so a closing quote after
# them never merges with other punctuation into one pre-token.
WORDS = _words(
    "file not found invalid value missing key done error unknown option expected string "
    "empty line ready utf ascii default name path config start stop count total header"
)

# The key place of a pair: each template holds this marker exactly once.
KEY = "\0"


def ind(depth: int) -> str:
    return INDENT * depth


def names(rng: random.Random, k: int, avoid: tuple[str, ...] = ()) -> list[str]:
    """k distinct variable names, none of them in `avoid`."""
    return rng.sample([n for n in NAMES if n not in avoid], k)


def distinct_initials(rng: random.Random, k: int, avoid: tuple[str, ...] = ()) -> list[str]:
    """k names with different first letters: their first tokens then differ under any
    byte-level BPE that has merged a space with a letter, not only the stdlib one."""
    by_initial: dict[str, list[str]] = {}
    for n in NAMES:
        if n not in avoid:
            by_initial.setdefault(n[0], []).append(n)
    return [rng.choice(by_initial[c]) for c in rng.sample(sorted(by_initial), k)]


def func_name(rng: random.Random) -> str:
    return f"{rng.choice(VERBS)}_{rng.choice(NAMES)}"


def class_name(rng: random.Random) -> str:
    return "".join(n.capitalize() for n in names(rng, rng.randint(1, 2)))


def def_line(rng: random.Random, params: list[str], name: str | None = None) -> str:
    return f"def {name or func_name(rng)}({', '.join(params)}):"


def fillers(
    rng: random.Random, depth: int, lo: int = 0, hi: int = 2, avoid: tuple[str, ...] = ()
) -> list[str]:
    """Between lo and hi neutral statements: no quotes, brackets, braces or keywords that a
    task keys on, so they lengthen the context without giving the answer away."""
    out = []
    for _ in range(rng.randint(lo, hi)):
        a, b = names(rng, 2, avoid)
        n = rng.randint(0, 99)
        out.append(
            ind(depth)
            + rng.choice(
                [
                    f"{a} = {b}",
                    f"{a} = {n}",
                    f"{a} = None",
                    f"{a} = len({b})",
                    f"{a} = {b}.{rng.choice(['strip', 'copy', 'lower'])}()",
                    f"{a} += {n}",
                    f"{a} = {b} * {n}",
                ]
            )
        )
    return out


def function(
    rng: random.Random,
    body: list[str],
    params: list[str] | None = None,
    name: str | None = None,
    **fill,
) -> str:
    """A top-level function: the def line, some fillers, then `body` (already indented).
    Without `params` it takes one to three names not in fill["avoid"]; `fill` passes
    lo/hi/avoid on to `fillers`."""
    if params is None:
        params = names(rng, rng.randint(1, 3), fill.get("avoid", ()))
    return "\n".join([def_line(rng, params, name), *fillers(rng, 1, **fill), *body])


def condition(rng: random.Random, x: str) -> str:
    """A simple test of the name x."""
    other = names(rng, 1, avoid=(x,))[0]
    return rng.choice([f"{x} is None", f"not {x}", f"{x} > {rng.randint(0, 9)}", f"{x} == {other}"])


def phrase(rng: random.Random) -> str:
    return " ".join(rng.sample(WORDS, rng.randint(1, 3)))


def keyed_pair(template: str, key_a: str, key_b: str, answer_a: str, answer_b: str) -> Pair:
    """The pair whose prompts are `template` with KEY replaced by key_a and by key_b."""
    assert template.count(KEY) == 1, template
    return Pair(template.replace(KEY, key_a), template.replace(KEY, key_b), answer_a, answer_b)
