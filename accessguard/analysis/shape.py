"""Statements that differ only in literals share one analysis: their shape.

``shape_of`` replaces every literal token with a placeholder the analyser reads
as a parameter (``$10001``... for PostgreSQL, ``:_agl0``... for SQLite), so
``SELECT ... WHERE customer_id = 42 AND id > 17`` and ``... AND id > 18`` have
one shape, analyzed and decided once. The literal values are then bound like
parameters: those that carry the row scope are checked on every execution,
and the sent SQL gets each literal back exactly as it was written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlglot.tokenizer_core import Token, TokenType

#: first PostgreSQL parameter number used for literals; Param key ``#i``
LITERAL_BASE = 10001
LITERAL_MARK = re.compile(r"__ag_lit(\d+)__")

#: The only literals lifted out and later pasted back: a run of digits, and a
#: plain quoted string with no backslash (quotes doubled). On these two forms
#: sqlglot and PostgreSQL agree where the literal starts and ends; dollar
#: quotes (sqlglot accepts tags PostgreSQL reads as ``$1`` and a comment),
#: E'', U&'', B'' and X'' stay in the shape and are regenerated instead.
_PLAIN_STRING = re.compile(r"'[^'\\]*(?:''[^'\\]*)*'")
_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class Shape:
    """A statement with its literals lifted out."""

    text: str
    #: the literals' values (int for whole numbers, else their text), by ``#i`` key
    values: dict[str, Any]
    #: each literal exactly as written, to put back into the sent SQL
    sources: tuple[str, ...]


def literal_key(index: int) -> str:
    return f"#{index}"


def shape_of(sql: str, tokens: list[Token], dialect: str) -> Shape | None:
    """The statement's shape, or None when it has no literal (or cannot be shaped safely)."""
    if "_agl" in sql:
        return None
    pieces: list[str] = []
    values: dict[str, Any] = {}
    sources: list[str] = []
    last = 0
    previous: Token | None = None
    for token in tokens:
        kind = token.token_type
        after_dollar = previous is not None and previous.token_type == TokenType.PARAMETER
        previous = token
        if after_dollar:
            if kind == TokenType.NUMBER and token.text.isdigit() and int(token.text) >= 10000:
                return None  # the user's own $10001 would collide with ours
            continue
        if kind == TokenType.NUMBER:
            if not _DIGITS.fullmatch(sql, token.start, token.end + 1):
                continue
        elif kind != TokenType.STRING or not _PLAIN_STRING.fullmatch(
            sql, token.start, token.end + 1
        ):
            continue
        index = len(sources)
        pieces.append(sql[last : token.start])
        pieces.append(f"${LITERAL_BASE + index}" if dialect == "postgres" else f":_agl{index}")
        source = sql[token.start : token.end + 1]
        sources.append(source)
        text = token.text
        values[literal_key(index)] = (
            int(text) if kind == TokenType.NUMBER and text.isdigit() else text
        )
        last = token.end + 1
    if not sources:
        return None
    pieces.append(sql[last:])
    return Shape(text="".join(pieces), values=values, sources=tuple(sources))


def render(template: str, shape: Shape, *, escape_percent: bool) -> str:
    """The sent SQL of one statement: its shape's template with its own literals put back."""
    sources = shape.sources
    if escape_percent:
        sources = tuple(s.replace("%", "%%") for s in sources)
    return LITERAL_MARK.sub(lambda m: sources[int(m.group(1))], template)
