"""Markdown from results: numbers and tables for summary.md, and an analysis's report
section (section.json) as text, so README can quote what a command wrote."""

from __future__ import annotations

from pathlib import Path

from .errors import UserError
from .io import read_json


def num(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def table(columns: list[str], rows: list[list]) -> list[str]:
    return [
        "| " + " | ".join(str(c) for c in columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(num(v) for v in row) + " |" for row in rows),
    ]


def section_markdown(path: str | Path) -> str:
    """A section.json (report.write_section) as markdown: title, paragraphs, tables; its
    images are named, not embedded."""
    sec = read_json(Path(path))
    if not isinstance(sec, dict) or not isinstance(sec.get("title"), str):
        raise UserError(f"{path}: a section needs a 'title' string")
    lines = [f"# {sec['title']}", ""]
    for p in sec.get("paragraphs") or []:
        lines += [str(p), ""]
    for t in sec.get("tables") or []:
        if t.get("caption"):
            lines += [f"**{t['caption']}**", ""]
        lines += [*table(t["columns"], t["rows"]), ""]
    for img in sec.get("images") or []:
        lines += [f"(image: `{img['file']}`, {img.get('caption', '')})", ""]
    return "\n".join(lines)
