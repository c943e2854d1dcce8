"""Contexts (windows of token ids with their text) and their Python lexing: per token, the
lexical facts the feature library reads."""

from __future__ import annotations

import bisect
import functools
import keyword
import tokenize
from collections.abc import Sequence
from dataclasses import dataclass

# ---------- contexts and their lexing ----------


@dataclass
class Lexed:
    """Per token of a context: what Python's tokenizer says about its first non-blank char."""

    kind: list[
        str
    ]  # identifier | keyword | number | operator | string | comment | whitespace | unknown
    quote: list[str | None]  # the opening quote of the string it is in: ' " or triple
    prefix: list[str]  # that string's prefix letters, lowercased (f, r, b, ...)
    opens: list[bool]
    closes: list[bool]
    comment: list[bool]
    docstring: list[bool]
    depth: list[int]  # enclosing brackets; -1 before the first full line
    inner: list[str | None]
    prev: list[str | None]  # the previous code token's text
    line_first: list[str | None]  # first code token of its line
    line_start: list[bool]
    indent: list[int]  # levels of 4 columns; -1 unknown
    seen: list[bool]


@dataclass
class Context:
    """One window of tokens with its text; `lex_from` is where lexing may start (a line start)."""

    ids: list[int]
    pieces: list[str]
    lex_from: int

    @functools.cached_property
    def starts(self) -> list[int]:
        out, pos = [], 0
        for p in self.pieces:
            out.append(pos)
            pos += len(p)
        return out

    @functools.cached_property
    def text(self) -> str:
        return "".join(self.pieces)

    @functools.cached_property
    def lex(self) -> Lexed:
        return _lex_tokens(self)


def make_context(ids: Sequence[int], token_text: Sequence[str], from_line_start: bool) -> Context:
    """A context of token ids; a window cut from a file (not `from_line_start`) is lexed from
    its first full line on."""
    pieces = [token_text[i] for i in ids]
    ctx = Context(list(map(int, ids)), pieces, 0)
    if not from_line_start:
        nl = ctx.text.find("\n")
        ctx.lex_from = len(ctx.text) if nl < 0 else nl + 1
    return ctx


_CODE = {tokenize.NAME, tokenize.NUMBER, tokenize.STRING, tokenize.OP}
OPEN_BRACKETS, CLOSE_BRACKETS = "([{", ")]}"


def _lex_spans(text: str, start: int) -> list[tuple[int, int, int, str, int]]:
    """(type, start, end, string, previous token type) of the Python tokens of text[start:];
    an unterminated string runs to its line's end (single quote) or the text's end (triple)."""
    lines = text[start:].splitlines(keepends=True)
    line_at = [start]
    for line in lines:
        line_at.append(line_at[-1] + len(line))
    spans: list[tuple[int, int, int, str, int]] = []
    row0, prev = 0, tokenize.NEWLINE
    while row0 < len(lines):
        it = iter(lines[row0:])
        pos = lambda rc, row0=row0: line_at[row0 + rc[0] - 1] + rc[1]  # noqa: E731
        try:
            skip_to = -1
            for tok in tokenize.generate_tokens(it.__next__):
                a, b = pos(tok.start), pos(tok.end)
                if a < skip_to:
                    continue
                if tok.type == tokenize.ERRORTOKEN and tok.string in ("'", '"'):
                    # an opening quote with no close on its line: a string to the line's end
                    end = line_at[row0 + tok.start[0]]
                    end -= text[a:end].endswith("\n")
                    spans.append((tokenize.STRING, a, end, text[a:end], prev))
                    skip_to, prev = end, tokenize.STRING
                    continue
                if tok.type == tokenize.ERRORTOKEN and not tok.string.strip():
                    continue
                spans.append((tok.type, a, b, tok.string, prev))
                if tok.type != tokenize.COMMENT:
                    prev = tok.type
            break
        except IndentationError as e:  # a dedent below the window's first indentation
            row0 += max((e.lineno or 1) - 1, 1)
            prev = tokenize.NEWLINE
        except tokenize.TokenError as e:
            msg, rc = e.args
            if "string" in msg:
                a = pos(rc)
                spans.append((tokenize.STRING, a, len(text), text[a:], prev))
            break
    return spans


def _quote_of(s: str) -> tuple[str, str, bool]:
    """(prefix, quote, terminated) of a string literal's text."""
    body = s.lstrip("rRbBuUfF")
    prefix = s[: len(s) - len(body)].lower()
    q = body[:3] if body[:3] in ('"""', "'''") else body[:1]
    terminated = len(body) >= 2 * len(q) and body.endswith(q)
    return prefix, ("triple" if len(q) == 3 else q), terminated


def _lex_tokens(ctx: Context) -> Lexed:
    text, n = ctx.text, len(ctx.ids)
    spans = _lex_spans(text, ctx.lex_from)
    span_starts = [s[1] for s in spans]
    # bracket state before each span, and after it
    stack: list[str] = []
    before, after = [], []
    typ: int | None  # a span's token type; None for a token outside every span (below)
    for typ, _, _, s, _ in spans:
        before.append((len(stack), stack[-1] if stack else None))
        if typ == tokenize.OP and s in OPEN_BRACKETS:
            stack.append(s)
        elif typ == tokenize.OP and s in CLOSE_BRACKETS and stack:
            stack.pop()
        after.append((len(stack), stack[-1] if stack else None))
    code_idx = [k for k, sp in enumerate(spans) if sp[0] in _CODE]
    code_ends = [spans[k][2] for k in code_idx]
    # first code token of each line, and names seen before each span
    line_starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
    first_code: dict[int, str] = {}
    for k in code_idx:
        first_code.setdefault(bisect.bisect_right(line_starts, spans[k][1]) - 1, spans[k][3])
    names: set[str] = set()
    seen_at: list[bool] = []
    for typ, _, _, s, _ in spans:
        is_name = typ == tokenize.NAME and not keyword.iskeyword(s)
        seen_at.append(is_name and s in names)
        if is_name:
            names.add(s)

    out = Lexed(*([] for _ in range(14)))
    for t in range(n):
        s0, piece = ctx.starts[t], ctx.pieces[t]
        blank = len(piece) - len(piece.lstrip())
        a = s0 + (blank if blank < len(piece) else 0)
        e0 = s0 + len(piece)
        line = bisect.bisect_right(line_starts, a) - 1
        known = a >= ctx.lex_from
        j = bisect.bisect_right(span_starts, a) - 1
        inside = known and j >= 0 and a < spans[j][2]
        typ, sa, sb, s, prev_type = spans[j] if inside else (None, 0, 0, "", None)
        kind = "unknown"
        if known and typ is not None:
            kind = {
                tokenize.NAME: "keyword" if keyword.iskeyword(s) else "identifier",
                tokenize.NUMBER: "number",
                tokenize.OP: "operator",
                tokenize.STRING: "string",
                tokenize.COMMENT: "comment",
            }.get(typ, "whitespace")
        elif known:  # between spans
            kind = "whitespace"
        prefix, quote, terminated = _quote_of(s) if typ == tokenize.STRING else ("", None, False)
        out.kind.append(kind)
        out.quote.append(quote)
        out.prefix.append(prefix)
        out.opens.append(quote is not None and s0 <= sa + len(prefix) < e0)
        out.closes.append(quote is not None and terminated and s0 <= sb - 1 < e0)
        out.comment.append(typ == tokenize.COMMENT)
        out.docstring.append(
            quote == "triple"
            and prev_type in (tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT)
        )
        if not known:
            depth, inner = -1, None
        elif inside:
            closing = typ == tokenize.OP and s in CLOSE_BRACKETS
            depth, inner = (after if closing else before)[j]
        else:
            depth, inner = after[j] if j >= 0 else (0, None)
        out.depth.append(depth)
        out.inner.append(inner)
        c = bisect.bisect_right(code_ends, sa if inside else a) - 1
        out.prev.append(spans[code_idx[c]][3] if known and c >= 0 else None)
        out.line_first.append(first_code.get(line) if known else None)
        lstart = line_starts[line]
        line_text = text[lstart : line_starts[line + 1] if line + 1 < len(line_starts) else None]
        lead = len(line_text) - len(line_text.lstrip(" \t"))
        out.line_start.append(known and a == lstart + lead and blank < len(piece))
        width = len(text[lstart : lstart + lead].expandtabs(8))
        out.indent.append(width // 4 if known and line_starts[line] >= ctx.lex_from else -1)
        out.seen.append(inside and seen_at[j])
    return out
