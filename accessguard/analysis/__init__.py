"""Statement text -> facts. Imports sqlglot; nothing of ours above it.

``analyze`` never raises: whatever it cannot fully account for comes back as
``Facts.problem`` (``sql.unanalyzable`` and friends), and the decision denies.

Bounded before anything scans the text: ``screen`` (the length, the type,
the encoding) runs first, in O(1) for ASCII text, so no regular expression
and no tokenizer ever sees a statement longer than ``MAX_SQL_LENGTH`` or one
that is not valid Unicode; every scan that follows is linear in the text, and
nothing after the tokenizer runs on more than ``MAX_TOKENS`` tokens. The text's
bounds and their refusals are in ``analysis.bounds``; the per-thread tokenizers
and parsers in ``analysis.dialects``.
"""

from __future__ import annotations

import itertools
import re
import threading
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.tokenizer_core import Token, TokenType

from accessguard.analysis.bounds import (
    as_text,
    many_joins,
    screen,
    screen_placeholders,
    unanalyzable,
    with_redaction,
)
from accessguard.analysis.crosscheck import crosscheck
from accessguard.analysis.dialects import parser, tokenizer
from accessguard.analysis.facts import Const, Facts, Param, ScopeRef, Value, subject_marker
from accessguard.analysis.redact import (
    MAX_SQL_LENGTH,
    audit_text,
    fingerprint,
    redact,
    redact_tokens,
)
from accessguard.analysis.rewrite import rewrite
from accessguard.analysis.shape import Shape, render, shape_of
from accessguard.analysis.walker import Refusal, Walker, forget_derived
from accessguard.errors import Reason
from accessguard.policy.catalog import Catalog
from accessguard.policy.masking import NO_MASKING, Masking

__all__ = [
    "MAX_SQL_LENGTH",
    "MAX_TOKENS",
    "Const",
    "Facts",
    "Param",
    "ScopeRef",
    "Shape",
    "Value",
    "analyze",
    "as_text",
    "audit_text",
    "fingerprint",
    "redact",
    "redact_tokens",
    "render",
    "screen",
    "screen_placeholders",
    "shape",
    "subject_marker",
    "unanalyzable",
    "with_redaction",
]

#: the most tokens a statement may have: what runs after the tokenizer (the
#: parser, the walker, PostgreSQL's parser, the rewrite) is bounded by it
MAX_TOKENS = 20_000
#: JOINs in one statement: an ORM's deepest select_related chain is far below it
MAX_JOINS = 64

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


def analyze(  # noqa: PLR0913 - keyword-only options
    sql: str | bytes,
    *,
    catalog: Catalog,
    dialect: str = "postgres",
    params: bool = False,
    sending: bool = True,
    masking: Masking = NO_MASKING,
) -> Facts:
    """Analyze one statement. ``params``: whether parameters will be bound (escapes %).

    ``masking``: the columns the SQL sent reads through a mask (``Facts.masked``
    says which of them it reads).

    ``sending=False`` (a decision only, as ``Guard.check`` makes) leaves out
    what only the statement actually sent needs: the rewritten SQL
    (``Facts.sent``, ``param_order``) and the redacted text and fingerprint
    (``with_redaction`` adds those to a refusal's facts). Everything the
    decision reads, the PostgreSQL cross-check included, is the same.

    ``sql`` passes ``screen`` before anything scans it (bytes: as UTF-8).
    """
    sql, unscreened = as_text(sql)
    if unscreened is not None:
        return unanalyzable(sql, unscreened, dialect=dialect)
    oversized = _oversized(sql, dialect)
    if oversized is not None:
        return oversized
    try:
        tokens = tokenizer(dialect).tokenize(sql)
    except Exception:  # noqa: BLE001 - fail closed: what does not tokenize is refused
        return Facts(
            kind="unknown",
            problem=Reason.SQL_UNANALYZABLE,
            detail="the statement does not tokenize",
            dialect=dialect,
        )
    if len(tokens) > MAX_TOKENS:
        return _too_many_tokens(sql, tokens, dialect)
    if many_joins(sql, tokens, MAX_JOINS):  # name resolution over a long join chain is quadratic
        return unanalyzable(sql, f"more than {MAX_JOINS} joins in one statement", dialect=dialect)
    redacted = redact_tokens(tokens) if sending else None
    final = {"redacted": redacted, "fingerprint": fingerprint(redacted), "dialect": dialect}
    facts = _analyze_guarded(
        sql, tokens, catalog, dialect, params=params, sending=sending, final=final, masking=masking
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


def _too_many_tokens(sql: str, tokens: list[Token], dialect: str) -> Facts:
    """The refusal of a statement of more than ``MAX_TOKENS`` tokens, kept for this thread.

    Remembered (the last one only) so the connect path, which tokenizes a
    statement to shape it before analyzing it, does not tokenize it twice.
    """
    whole = redact_tokens(tokens)
    facts = Facts(
        kind="unknown",
        problem=Reason.SQL_UNANALYZABLE,
        detail=f"the statement has {len(tokens)} tokens, more than {MAX_TOKENS}",
        dialect=dialect,
        redacted=whole,
        fingerprint=fingerprint(whole),
    )
    _LOCAL.oversized = (dialect, sql, facts)
    return facts


def _oversized(sql: str, dialect: str) -> Facts | None:
    """This thread's refusal of ``sql`` for its token count, if it was the last one made."""
    last: tuple[str, str, Facts] | None = getattr(_LOCAL, "oversized", None)
    if last is not None and last[0] == dialect and last[1] == sql:
        return last[2]
    return None


def _analyze_guarded(  # noqa: PLR0913 - one statement's inputs
    sql: str,
    tokens: list[Token],
    catalog: Catalog,
    dialect: str,
    *,
    params: bool,
    sending: bool,
    final: dict[str, Any],
    masking: Masking,
) -> Facts:
    try:
        return _analyze(
            sql,
            tokens,
            catalog,
            dialect,
            params=params,
            sending=sending,
            final=final,
            masking=masking,
        )
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
    finally:
        forget_derived()  # the tree was rewritten: its index of derived tables is stale


def _analyze(  # noqa: PLR0913 - one statement's inputs
    sql: str,
    tokens: list[Token],
    catalog: Catalog,
    dialect: str,
    *,
    params: bool,
    sending: bool,
    final: dict[str, Any],
    masking: Masking,
) -> Facts:
    """The facts of one statement; without a problem, built whole (``final`` included).

    ``final``: the fields analyze() sets last (redacted text, fingerprint,
    dialect); ``sending``: also rewrite it into the SQL to send.
    """
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
        tokens = tokenizer(dialect).tokenize(sql)
    # a trailing "; -- comment" comes back as a Semicolon node: it is not a statement
    statements = [
        s
        for s in parser(dialect).parse(tokens, sql)
        if s is not None and not isinstance(s, exp.Semicolon)
    ]
    if len(statements) != 1:
        detail = "an empty statement" if not statements else "more than one statement in one call"
        return Facts(kind="multiple", problem=Reason.SQL_UNANALYZABLE, detail=detail)
    tree = statements[0]
    walker = Walker(catalog=catalog, dialect=dialect, text=sql)
    if isinstance(tree, _WALKED):
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
    masked: frozenset[tuple[str, str, str]] = frozenset()
    if sending:
        sent, order, masked = rewrite(
            tree,
            walker.physical,
            reads=walker.reads,
            dialect=dialect,
            escape_percent=params,
            masking=masking,
        )
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
        locked=frozenset(walker.locked),
        sent=sent,
        masked=masked,
        param_order=order,
    )


#: the statements the walker reads (a tuple: a union type is built anew on every call)
_WALKED = (exp.Select, exp.SetOperation, exp.Subquery, exp.Update)
#: characters that open a quoted name in any dialect we read (sqlglot IDENTIFIER tokens)
_QUOTES = re.compile(r'["`\[]')

#: this thread's last refusal for too many tokens (see _too_many_tokens)
_LOCAL = threading.local()


def shape(sql: str, dialect: str) -> tuple[Shape, list[Token]] | None:
    """The statement's literal-free shape and its tokens; None if it has no literal.

    None too for a statement ``screen`` stops: it is not tokenized.
    """
    if screen(sql) is not None or _oversized(sql, dialect) is not None:
        return None
    try:
        tokens = tokenizer(dialect).tokenize(sql)
    except Exception:  # noqa: BLE001 - not shaped: the caller analyzes the text itself
        return None
    if len(tokens) > MAX_TOKENS:
        _too_many_tokens(sql, tokens, dialect)  # analyze refuses it, without tokenizing again
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
