"""The bounds a statement's text passes before anything scans it, and their refusals.

``screen`` (the type, the length, the encoding) runs before any regular
expression or tokenizer sees a statement; ``screen_placeholders`` before
psycopg's placeholder conversion reads it; ``as_text`` decodes bytes under a
bound of their own. ``unanalyzable`` is the refusal of a statement they stop,
with no more of its text than its audit event may show; ``with_redaction``
gives a refusal's facts their redacted text and fingerprint. Re-exported by
``accessguard.analysis``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from sqlglot.tokenizer_core import TokenType

from accessguard.analysis.facts import Facts
from accessguard.analysis.redact import MAX_SQL_LENGTH, digest, fingerprint, redact
from accessguard.errors import Reason

if TYPE_CHECKING:
    from sqlglot.tokenizer_core import Token

#: how long a statement may be as bytes, before it is decoded
_MAX_BYTES = 4 * MAX_SQL_LENGTH


def screen(sql: object) -> str | None:
    """Why ``sql`` must not reach any regular expression or tokenizer; None when it may.

    Not text, longer than ``MAX_SQL_LENGTH``, or holding a lone surrogate
    (text no UTF-8 encoder, PostgreSQL or the audit file, accepts). O(1) for
    ASCII text; one encoding pass at C speed otherwise.
    """
    if not isinstance(sql, str):
        return "the statement is not text"
    if len(sql) > MAX_SQL_LENGTH:
        return f"the statement is {len(sql)} characters long, more than {MAX_SQL_LENGTH}"
    if not sql.isascii():
        try:
            sql.encode("utf-8")
        except UnicodeEncodeError:
            return "the statement is not valid Unicode text (a lone surrogate)"
    return None


#: the most characters psycopg's placeholder scan may read (see screen_placeholders)
MAX_PLACEHOLDER_SCAN = 1_000_000


def screen_placeholders(sql: str) -> str | None:
    """Why psycopg's ``%s`` / ``%(name)s`` conversion must not read ``sql``; None when it may.

    Its regular expression reads from every ``%(`` to the next ``)``: a text of
    unclosed ``%(`` takes quadratic time (100 KB: about 30 s). This adds up
    what it would read, in one linear pass, and stops past ``MAX_PLACEHOLDER_SCAN``.
    """
    cost, close = 0, -1
    at = sql.find("%(")
    while at != -1:
        if close < at:
            close = sql.find(")", at)
            if close == -1:
                close = len(sql)
        cost += close - at
        if cost > MAX_PLACEHOLDER_SCAN:
            return "the statement's placeholders cannot be read (too many unclosed %()"
        at = sql.find("%(", at + 2)
    return None


def many_joins(sql: str, tokens: list[Token], limit: int) -> bool:
    """Whether ``tokens`` (those of ``sql``) hold more than ``limit`` JOIN keywords.

    A JOIN token is the word JOIN in the text: ASCII text that holds the word
    no more than ``limit`` times, in any case, has no more JOIN tokens (the
    tokens are then not counted).
    """
    if sql.isascii() and sql.lower().count("join") <= limit:
        return False
    return sum(1 for token in tokens if token.token_type is TokenType.JOIN) > limit


def as_text(sql: str | bytes | bytearray | memoryview) -> tuple[str, str | None]:
    """``sql`` as text, and why it cannot be analyzed (``screen``; None when it can).

    Bytes must be UTF-8; undecodable ones come back decoded with replacement
    characters (for the audit event's redacted text), with their problem.
    """
    if isinstance(sql, bytes | bytearray | memoryview):
        data = bytes(sql)
        if len(data) > _MAX_BYTES:
            return "", f"the statement is {len(data)} bytes long, more than {_MAX_BYTES}"
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("utf-8", "replace"), "the statement is not valid UTF-8"
        return text, screen(text)
    if not isinstance(sql, str):
        return "", "the statement is not text"
    return sql, screen(sql)


def unanalyzable(sql: str, detail: str, *, dialect: str) -> Facts:
    """The refusal of a statement ``screen`` stops, with what its audit event may show.

    The redacted text is of its first characters at most (``redact``); the
    fingerprint of a statement too long to redact whole is a hash of its length
    and its first ``MAX_SQL_LENGTH`` characters (bounded work, whatever its size).
    """
    redacted = redact(sql, dialect=dialect) if sql else None
    if len(sql) <= MAX_SQL_LENGTH and redacted is not None:
        found = fingerprint(redacted)
    else:
        found = digest(f"{len(sql)}:{sql[:MAX_SQL_LENGTH]}") if sql else None
    return Facts(
        kind="unknown",
        problem=Reason.SQL_UNANALYZABLE,
        detail=detail,
        dialect=dialect,
        redacted=redacted,
        fingerprint=found,
    )


def with_redaction(facts: Facts, sql: str | bytes) -> Facts:
    """``facts`` with the redacted text and fingerprint of ``sql`` (for its audit event)."""
    if facts.redacted is not None:
        return facts
    text, unscreened = as_text(sql)
    if unscreened is not None:
        found = unanalyzable(text, unscreened, dialect=facts.dialect)
        return replace(facts, redacted=found.redacted, fingerprint=found.fingerprint)
    redacted = redact(text, dialect=facts.dialect)
    return replace(facts, redacted=redacted, fingerprint=fingerprint(redacted))
