"""House rules read from the source itself: no module of the package over 600 lines and no
function over 100 (issue 34). A module or function that grows past them is split by job
rather than the limits raised."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "sparsecircuits"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 100


def too_long(name: str, text: str) -> list[str]:
    """The module, if over its limit, and each function over its limit, counted from the
    def line to the body's last line (nested functions count in their parent too)."""
    found = []
    lines = len(text.splitlines())
    if lines > MAX_MODULE_LINES:
        found.append(f"{name}: {lines} lines (module limit {MAX_MODULE_LINES})")
    for node in ast.walk(ast.parse(text, filename=name)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            n = (node.end_lineno or node.lineno) - node.lineno + 1
            if n > MAX_FUNCTION_LINES:
                found.append(
                    f"{name}:{node.lineno} {node.name}: {n} lines "
                    f"(function limit {MAX_FUNCTION_LINES})"
                )
    return found


def test_no_module_or_function_is_too_long():
    found = [
        line
        for path in sorted(PACKAGE.rglob("*.py"))
        for line in too_long(str(path.relative_to(PACKAGE.parent)), path.read_text())
    ]
    assert not found, "split by job:\n" + "\n".join(found)


def test_the_limits_are_where_they_say():
    def function(lines: int, indent: str = "") -> str:
        body = "".join(f"{indent}    x{i} = {i}\n" for i in range(lines - 1))
        return f"{indent}def f():\n{body}"

    assert too_long("m.py", function(MAX_FUNCTION_LINES)) == []
    assert too_long("m.py", function(MAX_FUNCTION_LINES + 1)) == [
        f"m.py:1 f: {MAX_FUNCTION_LINES + 1} lines (function limit {MAX_FUNCTION_LINES})"
    ]
    method = "class C:\n" + function(MAX_FUNCTION_LINES + 1, indent="    ")
    assert len(too_long("m.py", method)) == 1  # methods count too
    module = "x = 0\n" * (MAX_MODULE_LINES + 1)
    assert too_long("m.py", module) == [f"m.py: {MAX_MODULE_LINES + 1} lines (module limit 600)"]
    assert too_long("m.py", "x = 0\n" * MAX_MODULE_LINES) == []
