"""Paste benchmarks/results/NAME.md into README.md between `<!-- begin: NAME -->` and
`<!-- end: NAME -->`, for every such marker pair (see results.py).

    python benchmarks/update_readme.py [--check] [--take NAME=FILE ...]

--check exits 1 when README differs from what the results files say (nothing written).
--take study_quick=runs/demo/summary.md first copies a file a command wrote (a study's
summary.md) into results/study_quick.md, so README quotes it as it is; an analysis's
section.json (modularity, activations) is written out as markdown first.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from sparsecircuits.markdown import section_markdown

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- begin: ([\w.-]+) -->\n)(.*?)(<!-- end: \2 -->)", re.S)


def regenerate(readme: str, results: Path) -> str:
    def fill(m: re.Match) -> str:
        source = results / f"{m.group(2)}.md"
        if not source.exists():
            raise SystemExit(f"README.md: block {m.group(2)!r} has no {source}; run its benchmark")
        return m.group(1) + source.read_text() + m.group(4)

    return BLOCK.sub(fill, readme)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--take", nargs="+", default=[], metavar="NAME=FILE")
    args = ap.parse_args()
    for item in args.take:
        name, _, source = item.partition("=")
        # its headings sit two levels below the README section that quotes it
        raw = section_markdown(source) if source.endswith(".json") else Path(source).read_text()
        text = "".join(
            "##" + line if line.startswith("#") else line for line in raw.splitlines(keepends=True)
        )
        (ROOT / "benchmarks" / "results" / f"{name}.md").write_text(
            f"From `{source}` (copied by `python benchmarks/update_readme.py --take {item}`):\n\n"
            + text
        )
    path = ROOT / "README.md"
    old = path.read_text()
    new = regenerate(old, ROOT / "benchmarks" / "results")
    if args.check:
        sys.exit(0 if new == old else 1)
    if new != old:
        path.write_text(new)
    print(
        f"README.md: {len(BLOCK.findall(old))} blocks, {'updated' if new != old else 'unchanged'}"
    )


if __name__ == "__main__":
    main()
