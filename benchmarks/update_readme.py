"""Paste benchmarks/results/NAME.md between `<!-- begin: NAME -->` and `<!-- end: NAME -->`,
for every such marker pair in README.md and in the documentation pages (docs/**/*.md), so
every number they quote comes from a results file a command wrote (see
sparsecircuits.benchmarking).

    python benchmarks/update_readme.py [--check] [--take NAME=FILE ...]

`NAME#answer` pastes only an excerpt of NAME.md: a study summary's **Answer.** paragraph and
the lines below it that read the ratio at fixed losses and the trends (`- at fixed held-out
losses ...`, `- per ...`), which README.md quotes; the whole file lives on its
docs/results/ page.

--check exits 1 when a page differs from what the results files say (nothing written).
--take study_quick=runs/demo/summary.md first copies a file a command wrote (a study's
summary.md) into results/study_quick.md, so the pages quote it as it is; an analysis's
section.json (modularity, activations) is written out as markdown first.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from sparsecircuits.markdown import section_markdown

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(
    r"(<!-- begin: ([\w.-]+)(?:#(\w+))? -->\n)(.*?)(<!-- end: \2(?(3)#\3) -->)", re.S
)


def pages(root: Path = ROOT) -> list[Path]:
    """README.md and every page of the documentation site: the files that quote results."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def answer_excerpt(summary: str) -> str:
    """A study summary's **Answer.** paragraph, its fixed-loss line and its trend lines: the
    headline with its intervals, without the tables."""
    lines = summary.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.startswith("**Answer.**")), None)
    if start is None:
        raise ValueError("no **Answer.** paragraph")
    out = [lines[start]]
    trends = [
        ln for ln in lines[start + 1 :] if ln.startswith(("- per ", "- at fixed held-out losses"))
    ]
    if trends:
        out += ["\n", *trends]
    return "".join(out)


EXCERPTS = {"answer": answer_excerpt}


def block_text(name: str, part: str | None, results: Path, where: str = "README.md") -> str:
    source = results / f"{name}.md"
    if not source.exists():
        raise SystemExit(f"{where}: block {name!r} has no {source}; run its benchmark")
    text = source.read_text()
    if part is None:
        return text
    if part not in EXCERPTS:
        raise SystemExit(f"{where}: block {name}#{part}: unknown excerpt (one of {list(EXCERPTS)})")
    try:
        return EXCERPTS[part](text)
    except ValueError as e:
        raise SystemExit(f"{where}: block {name}#{part}: {source} has {e}") from None


def regenerate(text: str, results: Path, where: str = "README.md") -> str:
    def fill(m: re.Match) -> str:
        return m.group(1) + block_text(m.group(2), m.group(3), results, where) + m.group(5)

    return BLOCK.sub(fill, text)


def blocks(text: str) -> list[str]:
    """The block names of a page, as written in their markers (`NAME` or `NAME#part`)."""
    return [m.group(2) + (f"#{m.group(3)}" if m.group(3) else "") for m in BLOCK.finditer(text)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--take", nargs="+", default=[], metavar="NAME=FILE")
    args = ap.parse_args()
    for item in args.take:
        name, _, source = item.partition("=")
        # its headings sit two levels below the page section that quotes it
        raw = section_markdown(source) if source.endswith(".json") else Path(source).read_text()
        text = "".join(
            "##" + line if line.startswith("#") else line for line in raw.splitlines(keepends=True)
        )
        (ROOT / "benchmarks" / "results" / f"{name}.md").write_text(
            f"From `{source}` (copied by `python benchmarks/update_readme.py --take {item}`):\n\n"
            + text
        )
    stale = []
    for path in pages():
        where = str(path.relative_to(ROOT))
        old = path.read_text()
        new = regenerate(old, ROOT / "benchmarks" / "results", where)
        n = len(blocks(old))
        if new != old:
            stale.append(where)
            if not args.check:
                path.write_text(new)
        if n or new != old:
            print(f"{where}: {n} blocks, {'updated' if new != old else 'unchanged'}")
    if args.check and stale:
        print(f"out of date: {', '.join(stale)} (run: python benchmarks/update_readme.py)")
        sys.exit(1)


if __name__ == "__main__":
    main()
