"""Statement text -> facts. Imports sqlglot; nothing of ours above it.

``analyze`` never raises: whatever it cannot fully account for comes back as
``Facts.problem`` (``sql.unanalyzable`` and friends), and the decision denies.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import SqlglotError
from sqlglot.tokenizer_core import Token, TokenType

from accessguard.analysis.crosscheck import crosscheck
from accessguard.analysis.facts import Const, Facts, Param, ScopeRef, Value, subject_marker
from accessguard.analysis.redact import fingerprint, redact, redact_tokens
from accessguard.analysis.rewrite import rewrite
from accessguard.analysis.shape import Shape, render, shape_of
from accessguard.analysis.walker import Refusal, Walker
from accessguard.catalog import Catalog
from accessguard.errors import Reason

__all__ = [
    "Const",
    "Facts",
    "Param",
    "ScopeRef",
    "Shape",
    "Value",
    "analyze",
    "fingerprint",
    "redact",
    "redact_tokens",
    "render",
    "shape",
    "subject_marker",
    "with_redaction",
]

MAX_SQL_LENGTH = 100_000

#: Statement kinds that are never allowed, whatever the policy says.
_FORBIDDEN_KINDS: dict[type[exp.Expr], str] = {
    exp.Delete: "delete",
    exp.Insert: "insert",
    exp.Merge: "merge",
    exp.Create: "create",
    exp.Drop: "drop",
    exp.Alter: "alter",
    exp.TruncateTable: "truncate",
    exp.Copy: "copy",
    exp.Grant: "grant",
    exp.Revoke: "revoke",
    exp.Set: "set",
    exp.Transaction: "begin",
    exp.Commit: "commit",
    exp.Rollback: "rollback",
    exp.Describe: "describe",
    exp.Pragma: "pragma",
    exp.Use: "use",
    exp.Analyze: "analyze",
    exp.Cache: "cache",
    exp.LoadData: "load",
}


class _DropUnsupportedSyntax(logging.Filter):
    """sqlglot warns with the full statement text when it falls back to Command.

    That text may hold customer data, so the warning must not reach the
    application's logs; the guard refuses such statements anyway.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "unsupported syntax" not in record.getMessage()


logging.getLogger("sqlglot").addFilter(_DropUnsupportedSyntax())


def analyze(
    sql: str,
    *,
    catalog: Catalog,
    dialect: str = "postgres",
    params: bool = False,
    sending: bool = True,
) -> Facts:
    """Analyze one statement. ``params``: whether parameters will be bound (escapes %).

    ``sending=False`` (a decision only, as ``Guard.check`` makes) leaves out
    what only the statement actually sent needs: the rewritten SQL
    (``Facts.sent``, ``param_order``) and the redacted text and fingerprint
    (``with_redaction`` adds those to a refusal's facts). Everything the
    decision reads, the PostgreSQL cross-check included, is the same.
    """
    try:
        tokens = _tokenizer(dialect).tokenize(sql)
    except Exception:  # noqa: BLE001 - fail closed: what does not tokenize is refused
        return Facts(
            kind="unknown",
            problem=Reason.SQL_UNANALYZABLE,
            detail="the statement does not tokenize",
            dialect=dialect,
        )
    redacted = redact_tokens(tokens) if sending else None
    final = {"redacted": redacted, "fingerprint": fingerprint(redacted), "dialect": dialect}
    facts = _analyze_guarded(
        sql, tokens, catalog, dialect, params=params, sending=sending, final=final
    )
    if facts.problem is None and dialect == "postgres":
        # a second opinion from PostgreSQL's own parser (libpg_query)
        detail = crosscheck(sql, facts, default_schema=catalog.default_schema)
        if detail is not None:
            facts = Facts(
                kind=facts.kind,
                tables=facts.tables,
                problem=Reason.SQL_PARSER_DISAGREEMENT,
                detail=f"PostgreSQL reads the statement differently: {detail}",
            )
    if facts.problem is None:
        return facts  # built whole by _analyze: no second copy on the allowed path
    return facts.derived(**final)


def with_redaction(facts: Facts, sql: str) -> Facts:
    """``facts`` with the redacted text and fingerprint of ``sql`` (for its audit event)."""
    if facts.redacted is not None:
        return facts
    redacted = redact(sql, dialect=facts.dialect)
    return replace(facts, redacted=redacted, fingerprint=fingerprint(redacted))


def _analyze_guarded(  # noqa: PLR0913 - one statement's inputs
    sql: str,
    tokens: list[Token],
    catalog: Catalog,
    dialect: str,
    *,
    params: bool,
    sending: bool,
    final: dict[str, Any],
) -> Facts:
    try:
        return _analyze(sql, tokens, catalog, dialect, params=params, sending=sending, final=final)
    except Refusal as refusal:
        return Facts(kind="unknown", problem=refusal.reason, detail=refusal.detail)
    except SqlglotError:
        return Facts(
            kind="unknown", problem=Reason.SQL_UNANALYZABLE, detail="the statement does not parse"
        )
    except RecursionError:
        return Facts(
            kind="unknown",
            problem=Reason.SQL_UNANALYZABLE,
            detail="the statement is nested too deeply to analyze",
        )
    except Exception:  # noqa: BLE001 - fail closed: an analyser error denies
        return Facts(
            kind="unknown",
            problem=Reason.SQL_UNANALYZABLE,
            detail="the analyser could not read the statement",
        )


def _analyze(  # noqa: PLR0913 - one statement's inputs
    sql: str,
    tokens: list[Token],
    catalog: Catalog,
    dialect: str,
    *,
    params: bool,
    sending: bool,
    final: dict[str, Any],
) -> Facts:
    """The facts of one statement; without a problem, built whole (``final`` included).

    ``final``: the fields analyze() sets last (redacted text, fingerprint,
    dialect); ``sending``: also rewrite it into the SQL to send.
    """
    if len(sql) > MAX_SQL_LENGTH:
        return Facts(
            kind="unknown",
            problem=Reason.SQL_UNANALYZABLE,
            detail="the statement is too long to analyze",
        )
    lowered = sql.lower()
    if "__ag_" in lowered or "_agq" in lowered:
        return Facts(
            kind="unknown",
            problem=Reason.SQL_UNANALYZABLE,
            detail="the statement contains a name reserved by the guard",
        )
    if "\v" in sql:
        # whitespace to sqlglot and PostgreSQL 16+, a syntax error to PostgreSQL 15
        return Facts(
            kind="unknown",
            problem=Reason.SQL_UNANALYZABLE,
            detail="a vertical tab is read differently by PostgreSQL versions",
        )
    # an IDENTIFIER token is a quoted name, and every quoted name holds a quote
    for before, after in itertools.pairwise(tokens if _QUOTES.search(sql) else ()):
        if before.token_type == TokenType.IDENTIFIER and after.token_type == TokenType.L_PAREN:
            # "LOWER"(x): sqlglot reads lower(x), PostgreSQL a function that
            # does not exist; a quoted name before a parenthesis is not analyzed
            return Facts(
                kind="unknown",
                problem=Reason.SQL_UNANALYZABLE,
                detail="a quoted name followed by a parenthesis is not analyzed",
            )
    if dialect == "sqlite" and any(t.token_type == TokenType.PLACEHOLDER for t in tokens):
        sql = _number_qmarks(sql)
        tokens = _tokenizer(dialect).tokenize(sql)
    # a trailing "; -- comment" comes back as a Semicolon node: it is not a statement
    statements = [
        s
        for s in _parser(dialect).parse(tokens, sql)
        if s is not None and not isinstance(s, exp.Semicolon)
    ]
    if len(statements) != 1:
        detail = "an empty statement" if not statements else "more than one statement in one call"
        return Facts(kind="multiple", problem=Reason.SQL_UNANALYZABLE, detail=detail)
    tree = statements[0]
    walker = Walker(catalog=catalog, dialect=dialect)
    if isinstance(tree, exp.Select | exp.SetOperation | exp.Subquery | exp.Update):
        kind = "update" if isinstance(tree, exp.Update) else "select"
        try:
            if isinstance(tree, exp.Update):
                walker.update(tree)
            else:
                walker.query(tree, None, {})
        except Refusal as refusal:
            return Facts(
                kind=kind,
                tables=frozenset(walker.tables),
                problem=refusal.reason,
                detail=refusal.detail,
            )
    elif isinstance(tree, exp.Command):
        kind = str(tree.this).lower()
        return Facts(
            kind=kind,
            problem=Reason.STATEMENT_FORBIDDEN,
            detail=f"{kind.upper()} statements are never allowed through the guard",
        )
    else:
        kind = _FORBIDDEN_KINDS.get(type(tree), "")
        if not kind:
            return Facts(
                kind="unknown",
                problem=Reason.SQL_UNANALYZABLE,
                detail="a statement the analyser does not recognise",
            )
        return Facts(
            kind=kind,
            problem=Reason.STATEMENT_FORBIDDEN,
            detail=f"{kind.upper()} statements are never allowed through the guard",
        )
    sent: str | None = None
    order: tuple[int | str, ...] = ()
    if sending:
        sent, order = rewrite(tree, walker.physical, dialect=dialect, escape_percent=params)
    return Facts.build(
        **final,
        kind=kind,
        tables=frozenset(walker.tables),
        reads=frozenset(walker.reads),
        writes=frozenset(walker.writes),
        functions=frozenset(walker.functions),
        scopes=tuple(walker.scopes),
        params=frozenset(walker.params),
        packing=tuple(walker.packed),
        row_weight=walker.row_weight,
        sent=sent,
        param_order=order,
    )


#: characters that open a quoted name in any dialect we read (sqlglot IDENTIFIER tokens)
_QUOTES = re.compile(r'["`\[]')

_DIALECTS: dict[str, Dialect] = {}
_LOCAL = threading.local()


def _dialect(name: str) -> Dialect:
    """One Dialect instance per name (sqlglot builds a new one per lookup)."""
    found = _DIALECTS.get(name)
    if found is None:
        found = _DIALECTS[name] = Dialect.get_or_raise(name)
    return found


def _parser(name: str) -> Any:
    """A parser per thread and dialect: sqlglot's parse() resets it before each statement."""
    return _per_thread("parsers", name, lambda dialect: dialect.parser())


def _tokenizer(name: str) -> Any:
    """A tokenizer per thread and dialect: they keep state while tokenizing."""
    return _per_thread("tokenizers", name, lambda dialect: dialect.tokenizer())


def _per_thread(slot: str, name: str, make: Callable[[Dialect], Any]) -> Any:
    """This thread's object in ``slot`` for dialect ``name``, made by ``make`` once."""
    made: dict[str, Any] | None = getattr(_LOCAL, slot, None)
    if made is None:
        made = {}
        setattr(_LOCAL, slot, made)
    found = made.get(name)
    if found is None:
        found = made[name] = make(_dialect(name))
    return found


def shape(sql: str, dialect: str) -> tuple[Shape, list[Token]] | None:
    """The statement's literal-free shape and its tokens; None if it has no literal."""
    try:
        tokens = _tokenizer(dialect).tokenize(sql)
    except Exception:  # noqa: BLE001 - not shaped: the caller analyzes the text itself
        return None
    found = shape_of(sql, tokens, dialect)
    return (found, tokens) if found is not None else None


def _number_qmarks(sql: str) -> str:
    """Give each ``?`` its position (``:_agqN``) so scope can name the bound value."""
    tokens = sqlglot.tokenize(sql, read="sqlite")
    out, last, n = [], 0, 0
    for token in tokens:
        if token.token_type == TokenType.PLACEHOLDER and token.text == "?":
            out.append(sql[last : token.start])
            out.append(f":_agq{n}")
            last, n = token.end + 1, n + 1
    out.append(sql[last:])
    return "".join(out)
