"""Statements that differ only in literals share one analysis: their shape.

``shape_of`` replaces every literal token with a placeholder the analyser reads
as a parameter (``$10001``... for PostgreSQL, ``:_agl0``... for SQLite), so
``SELECT ... WHERE customer_id = 42 AND id > 17`` and ``... AND id > 18`` have
one shape, analyzed and decided once. The literal values are then bound like
parameters: those that carry the row scope are checked on every execution,
and the sent SQL gets each literal back exactly as it was written.

``quick_shape`` finds the same literals with one regular expression instead
of the tokenizer, for statements whose shape is already known. Its template
is trusted only if it equals one ``shape_of`` made from real tokens: then the
statement is that template with a self-delimiting literal (a digit run or a
plain quoted string) at each placeholder, and every character outside them is
the tokenized statement's own, so PostgreSQL reads the two alike token for
token. A template it gets wrong (a literal inside a comment, say) matches no
known shape and the statement goes the tokenizer's way.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from pglast.parser import ParseError, scan
from sqlglot.tokenizer_core import Token, TokenType

from accessguard.analysis.redact import MAX_SQL_LENGTH

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
#: a longer digit run is no bigint: it stays in the shape (int() of thousands
#: of digits raises, and would cost quadratic time below that)
MAX_DIGITS = 100

#: quick_shape's scan: quoted identifiers and comments are passed over; a
#: literal is lifted only where no identifier, parameter or string prefix
#: touches it (``t1``, ``$1``, ``:1``, ``E'..'``, ``U&'..'``, ``1.5``, ``0x1F``,
#: ``1_000`` all stay in the template, which then matches no known shape).
#: Linear time: no branch can fail after a long scan more than once (an
#: unclosed comment runs to the end of the text, as an unclosed quote can
#: only be the last quote), so no input makes it quadratic.
#:
#: Every branch starts with one literal character (each digit has its own
#: branch), so the regex engine skips to the next candidate character in C
#: instead of trying the pattern at every position (twice as fast). That is
#: also why the character before a literal is checked after its first
#: character, by a two-character look-behind: ``'(?<![...].)`` is
#: ``(?<![...])'``. The one group is the whole match, so ``split`` returns
#: the text between matches and the matches themselves, alternately.
_QUICK = re.compile(
    r"""
    (
      "[^"]*" | --[^\n]* | /\*(?:[^*]|\*(?!/))*(?:\*/|\Z)
    | '(?<![\w$&'.:?@#].)[^'\\]*(?:''[^'\\]*)*'(?!')
    | """
    + " | ".join(rf"{digit}(?<![\w$.:?@#].)[0-9]*(?![\w.$])" for digit in "0123456789")
    + """
    )
    """,
    re.VERBOSE,
)
#: placeholders and ``#i`` keys made once, for a statement's first literals
_PLACEHOLDERS = {
    "postgres": tuple(f"${LITERAL_BASE + i}" for i in range(64)),
    "sqlite": tuple(f":_agl{i}" for i in range(64)),
}
_KEYS = tuple(f"#{i}" for i in range(64))
#: a ``$10001`` of the user's own, even in a comment or a dollar quote, would
#: read as one of the placeholders: such statements are not shaped
_HIGH_PARAMETER = re.compile(r"\$[0-9]{5}")


class Shape(NamedTuple):
    """A statement with its literals lifted out (a tuple: made for every statement)."""

    text: str
    #: the literals' values (int for whole numbers, else their text), by ``#i`` key
    values: dict[str, Any]
    #: each literal exactly as written, to put back into the sent SQL
    sources: tuple[str, ...]


def literal_key(index: int) -> str:
    return f"#{index}"


def literal_value(source: str, *, number: bool) -> Any:
    """A lifted literal's value, from its text: an int, or the string between the quotes.

    From the text, not the token, since sqlglot folds the rest of a command
    (``PREPARE TRANSACTION 'x'``) into one string token.
    """
    return int(source) if number else source[1:-1].replace("''", "'")


def shape_of(sql: str, tokens: list[Token], dialect: str) -> Shape | None:
    """The statement's shape, or None when it has no literal (or cannot be shaped safely)."""
    if len(sql) > MAX_SQL_LENGTH or "_agl" in sql or _HIGH_PARAMETER.search(sql) is not None:
        return None  # the template's placeholders must be the only ones in it
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
            continue  # $1 is a parameter, not a literal
        if kind == TokenType.NUMBER:
            if token.end + 1 - token.start > MAX_DIGITS or not _DIGITS.fullmatch(
                sql, token.start, token.end + 1
            ):
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
        values[literal_key(index)] = literal_value(source, number=kind == TokenType.NUMBER)
        last = token.end + 1
    if not sources:
        return None
    pieces.append(sql[last:])
    return Shape("".join(pieces), values, tuple(sources))


def quick_shape(sql: str, dialect: str) -> Shape | None:
    """The statement's shape by a regular expression, or None if it has no literal.

    To be trusted only when its text equals a shape ``shape_of`` produced (see
    the module docstring); its values and sources then equal ``shape_of``'s.
    One ``split`` scans the text; when every match is a digit run (the usual
    new literal: an id, a limit), the template is joined without a Python loop.
    """
    if len(sql) > MAX_SQL_LENGTH or "_agl" in sql or _HIGH_PARAMETER.search(sql) is not None:
        return None
    parts = _QUICK.split(sql)
    found = parts[1::2]
    count = len(found)
    if count == 0:
        return None
    placeholders = _PLACEHOLDERS["postgres" if dialect == "postgres" else "sqlite"]
    if (
        count <= len(placeholders)
        # only digit runs (a string, comment or quoted identifier has a quote, - or /)
        and "".join(found).isdigit()
        and max(map(len, found)) <= MAX_DIGITS
    ):
        parts[1::2] = placeholders[:count]
        values = dict(zip(_KEYS[:count], map(int, found), strict=True))
        return Shape("".join(parts), values, tuple(found))
    return _quick_mixed(parts, dialect)


def _quick_mixed(parts: list[str], dialect: str) -> Shape | None:
    """``quick_shape`` from the split text, when not every match is a digit run."""
    values: dict[str, Any] = {}
    sources: list[str] = []
    postgres = dialect == "postgres"
    for at in range(1, len(parts), 2):  # the matches; the text between stays as it is
        piece = parts[at]
        first = piece[0]
        if first in _PASSED or (first != "'" and len(piece) > MAX_DIGITS):
            continue  # a comment or quoted identifier, a number too long: left in the template
        index = len(sources)
        parts[at] = f"${LITERAL_BASE + index}" if postgres else f":_agl{index}"
        sources.append(piece)
        # literal_key / literal_value, inline: this runs for every literal of every statement
        values[f"#{index}"] = int(piece) if first != "'" else piece[1:-1].replace("''", "'")
    if not sources:
        return None
    return Shape("".join(parts), values, tuple(sources))


#: how a match passed over starts: a quoted identifier, a line or block comment
_PASSED = frozenset('"-/')


def render(template: str, shape: Shape, *, escape_percent: bool) -> str:
    """The sent SQL of one statement: its shape's template with its own literals put back."""
    sources = shape.sources
    if escape_percent:
        sources = tuple(s.replace("%", "%%") for s in sources)
    split = _SPLIT.get(template)
    if split is None:
        split = _split(template)
    texts, order = split
    pieces = [texts[0]]
    for at, index in enumerate(order, 1):
        pieces.append(sources[index])
        pieces.append(texts[at])
    return "".join(pieces)


#: templates cut at their literal markers once: (texts between, literal index of each marker)
_SPLIT: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {}


def _split(template: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    parts = LITERAL_MARK.split(template)
    split = (tuple(parts[0::2]), tuple(int(i) for i in parts[1::2]))
    if len(_SPLIT) >= 4096:
        _SPLIT.clear()
    _SPLIT[template] = split
    return split


def literals_bare(template: str, count: int) -> bool:
    """Whether ``render`` may fill ``template``: each marker a name token of its own.

    ``render`` pastes each literal's own text where its marker stands. That
    reads as the literal only where PostgreSQL's lexer reads the marker as one
    bare name: a generator that writes the marker inside a string of its own
    (sqlglot writes ``INTERVAL '__ag_lit0__'``) or drops one (a literal lost)
    would send other text than was analyzed. Every literal ``0..count-1``
    must be there too. Checked once per shape plan.
    """
    spans = [(m.start(), m.end(), int(m[1])) for m in LITERAL_MARK.finditer(template)]
    if {index for _start, _end, index in spans} != set(range(count)):
        return False
    try:
        names = {(t.start, t.end + 1) for t in scan(template) if t.name == "IDENT"}
    except ParseError:
        return False
    return all((start, end) in names for start, end, _index in spans)
