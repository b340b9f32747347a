"""Literal lifting: ``shape_of`` from sqlglot's tokens, ``quick_shape`` by regex.

The guard trusts a ``quick_shape`` template only when it equals one
``shape_of`` made from real tokens. These properties check the argument that
makes this safe against both sqlglot's tokenizer and PostgreSQL's own lexer
(pglast's ``scan``): whenever the quick template of a statement is a template
the tokenizer produces, the tokenizer lifts exactly the same literals from the
statement, and PostgreSQL reads each of them as one literal token.
"""

from __future__ import annotations

import re
from itertools import cycle

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pglast.parser import ParseError, scan
from strategies import CORPUS

from accessguard.analysis import shape
from accessguard.analysis.shape import (
    _QUICK,
    LITERAL_BASE,
    MAX_DIGITS,
    Shape,
    _quick_mixed,
    literals_bare,
    quick_shape,
)

#: Fragments chosen to sit on every lexical boundary the scan must respect:
#: comments, quoted identifiers, prefixed and dollar-quoted strings, numbers
#: with dots, exponents, radix prefixes and separators, parameters, unicode.
FRAGMENTS = (
    "SELECT ",
    "FROM ",
    "WHERE ",
    "orders",
    "t1",
    "x",
    "é",
    "_",
    " ",
    "\n",
    ", ",
    "=",
    "-",
    "(",
    ")",
    ".",
    "*",
    "5",
    "42",
    "007",
    "1.5",
    ".5",
    "1e5",
    "0x1F",
    "0b1",
    "1_000",
    "'a'",
    "'it''s'",
    "''",
    "'a\\b'",
    "'",
    '"',
    "E'x'",
    "U&'d'",
    "B'01'",
    "X'ff'",
    "N'n'",
    "$$a$$",
    "$q$ 5 $q$",
    "$1",
    "$",
    ":1",
    "?",
    "@",
    "#",
    '"c 1"',
    '"c""d"',
    "-- 1\n",
    "/* 2 */",
    "/* /* 3 */ */",
    "/*",
    "*/",
    "--",
    "%s",
    "%%",
    "7" * 101,  # longer than MAX_DIGITS: stays in the template
    "'%'",
    "::int",
    "[",
    "]",
)

#: PostgreSQL's string constants: plain, bit, hex, unicode-escaped
STRINGS = frozenset({"SCONST", "BCONST", "XCONST", "USCONST"})

statements = st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=14).map("".join)


def placeholder(index: int) -> str:
    return f"${LITERAL_BASE + index}"


def canonical(template: str, count: int) -> str:
    """The template with fixed literals in its placeholders (alternately a number and a string)."""
    literals = cycle(("1", "'a'"))
    for index in reversed(range(count)):  # $10010 before $1001
        template = template.replace(placeholder(index), next(literals))
    return template


def slow(sql: str) -> Shape | None:
    found = shape(sql, "postgres")
    return found[0] if found is not None else None


@given(statements)
@example("SELECT 5, $q$ $10002 $q$")
@example("SELECT 1 /* ' */ , 2 -- '")
@example('SELECT "a 1", 2')
@example("SELECT $1 = '', 2")
@example("SELECT X'ff'\n'a', 2")
def test_a_quick_template_the_tokenizer_makes_lifts_the_same_literals(sql: str) -> None:
    """If the tokenizer would make the quick template, it lifts exactly what the regex did."""
    quick = quick_shape(sql, "postgres")
    if quick is None:
        return
    count = len(quick.sources)
    twin = slow(canonical(quick.text, count))
    if twin is None or twin.text != quick.text:
        return  # the guard would never hold this template: the statement goes the slow way
    tokenized = slow(sql)
    if tokenized is not None:
        assert tokenized == quick  # the quick lift adds nothing the tokenizer's would not
        return
    # sqlglot's tokenizer fails on the statement itself (it rejects ``$1 = ''``)
    # though the template it made from a twin fits: PostgreSQL's lexer must then
    # read each lifted literal as one constant, as in the twin.
    try:
        lexed = [(t.start, t.end + 1, t.name) for t in scan(sql)]
    except ParseError:
        return  # PostgreSQL refuses the whole statement ("trailing junk"): nothing runs
    pieces = re.split(r"\$1[0-9]{4}", quick.text)
    start = 0
    for index, source in enumerate(quick.sources):
        start += len(pieces[index])
        end = start + len(source)
        if source.startswith("'"):
            # PostgreSQL joins 'a'<newline>'b' (or X'ff'<newline>'b') into one
            # constant where sqlglot
            # reads two; both lifts agree on it, and the SQL sent is regenerated
            # from sqlglot's tree, so the server runs what was analyzed.
            assert any(
                name in STRINGS and (a == start or b == end) and a <= start and end <= b
                for a, b, name in lexed
            ), index
        else:
            assert (start, end, "ICONST") in lexed, index
        start = end


@pytest.mark.parametrize("sql", CORPUS)
def test_quick_and_tokenized_shapes_agree_on_the_corpus(sql: str) -> None:
    """On every statement of the case files, the two lifts agree or the quick one is unusable."""
    quick, tokenized = quick_shape(sql, "postgres"), slow(sql)
    if quick is not None and tokenized is not None and quick.text == tokenized.text:
        assert quick == tokenized
    if tokenized is not None:  # the template re-filled with other literals is found again
        refilled = canonical(tokenized.text, len(tokenized.sources))
        again = quick_shape(refilled, "postgres")
        if quick is not None and quick.text == tokenized.text:
            assert again is not None
            assert again.text == tokenized.text


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 FROM t WHERE a = $10001",  # the user's own placeholder-like parameter
        "SELECT 1 FROM t WHERE a = 2 -- $10002",
        "SELECT 1, $q$ $10002 $q$",
        "SELECT :_agl0, 1",
    ],
)
def test_statements_naming_a_placeholder_are_not_shaped(sql: str) -> None:
    """A template's placeholders must be the only ones in it, so neither lift shapes these."""
    assert quick_shape(sql, "postgres") is None
    assert slow(sql) is None


@pytest.mark.parametrize(
    ("sql", "kept"),
    [
        ("SELECT t1 FROM x WHERE y = 2", "t1"),
        ("SELECT $1, 2", "$1"),
        ("SELECT E'x', 2", "E'x'"),
        ("SELECT U&'d', 2", "U&'d'"),
        ("SELECT 1.5, 2", "1.5"),
        ("SELECT 0x1F, 2", "0x1F"),
        ("SELECT 1_000, 2", "1_000"),
        ('SELECT "c 1", 2', '"c 1"'),
        ("SELECT 2 -- 3", "-- 3"),
        ("SELECT 2 /* 'x' */", "/* 'x' */"),
        ("SELECT 'a\\b', 2", "'a\\b'"),
    ],
)
def test_quick_shape_lifts_only_free_standing_literals(sql: str, kept: str) -> None:
    quick = quick_shape(sql, "postgres")
    assert quick is not None
    assert kept in quick.text
    assert re.search(r"\$10001\b", quick.text)


def test_quick_shape_values_match_the_tokenizer() -> None:
    sql = "SELECT 'it''s', 007, '' FROM t WHERE b = 'a%b'"
    quick = quick_shape(sql, "postgres")
    assert quick is not None
    assert quick.values == {"#0": "it's", "#1": 7, "#2": "", "#3": "a%b"}
    assert quick == slow(sql)
    sqlite = quick_shape(sql, "sqlite")
    assert sqlite is not None
    assert sqlite.text == "SELECT :_agl0, :_agl1, :_agl2 FROM t WHERE b = :_agl3"


class TestQuickShape:
    def test_an_unclosed_comment_runs_to_the_end(self) -> None:
        """An unclosed comment swallows the rest of the text, as a one-pass scan must."""
        found = quick_shape("SELECT 1 /* 2", "postgres")
        assert found is not None
        assert found.text == f"SELECT ${LITERAL_BASE} /* 2"

    def test_a_long_digit_run_stays_in_the_template(self) -> None:
        """A digit run too long for any integer column is not lifted (int() would raise)."""
        digits = "7" * (MAX_DIGITS + 1)
        found = quick_shape(f"SELECT {digits}, 2", "postgres")
        assert found is not None
        assert found.text == f"SELECT {digits}, ${LITERAL_BASE}"

    @given(statements)
    @example("SELECT 1, 2")
    @example("SELECT 1, '2'")
    @example("SELECT 1 -- 2\n, 3")
    def test_the_digits_only_path_and_the_general_one_agree(self, sql: str) -> None:
        """Whole in C when every match is a digit run, or match by match: the same shape."""
        named = "_agl" in sql or re.search(r"\$[0-9]{5}", sql) is not None
        for dialect in ("postgres", "sqlite"):
            general = None if named else _quick_mixed(_QUICK.split(sql), dialect)
            assert quick_shape(sql, dialect) == general

    @pytest.mark.parametrize("count", [63, 64, 65, 200])
    def test_many_literals_are_all_lifted_in_order(self, count: int) -> None:
        """Past the placeholders made in advance, the literals are lifted just the same."""
        sql = "SELECT " + ", ".join(str(i) for i in range(count))
        found = quick_shape(sql, "postgres")
        assert found is not None
        assert found.sources == tuple(str(i) for i in range(count))
        assert found.values == {f"#{i}": i for i in range(count)}
        assert found.text == "SELECT " + ", ".join(placeholder(i) for i in range(count))
        sqlite = quick_shape(sql, "sqlite")
        assert sqlite is not None
        assert sqlite.text == "SELECT " + ", ".join(f":_agl{i}" for i in range(count))


@pytest.mark.parametrize(
    ("template", "count", "fills"),
    [
        ("SELECT x FROM t WHERE a = __ag_lit0__ AND b = __ag_lit1__", 2, True),
        ('SELECT "é" FROM t WHERE a = __ag_lit0__', 1, True),
        ("SELECT INTERVAL '__ag_lit0__' FROM t", 1, False),  # inside a string of its own
        ("SELECT INTERVAL FROM t", 1, False),  # the literal was lost
        ('SELECT "__ag_lit0__" FROM t', 1, False),  # a quoted name
        ("SELECT 1 /* __ag_lit0__ */ FROM t WHERE a = __ag_lit0__", 1, False),  # in a comment
        ("SELECT x FROM t WHERE a = __ag_lit0__", 2, False),  # literal 1 missing
        ("SELECT x FROM t WHERE a = __ag_lit0__x", 1, False),  # part of a longer name
    ],
)
def test_a_template_is_filled_only_where_each_marker_is_a_bare_name(
    template: str, count: int, *, fills: bool
) -> None:
    """render() pastes literals at the markers: only where PostgreSQL reads each one alone."""
    assert literals_bare(template, count) is fills
