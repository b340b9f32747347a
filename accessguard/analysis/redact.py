"""Statement text with every literal replaced by ``?``, and its fingerprint.

Built from the token stream, not the tree, so it works on statements that do
not parse; comments are not tokens and are dropped with whatever they hold.

Bounded: a statement longer than ``MAX_SQL_LENGTH`` is never tokenized whole
(only its first ``MAX_AUDIT_TEXT`` characters are redacted), and ``audit_text``
cuts what an audit event carries to ``MAX_AUDIT_TEXT`` characters.
"""

from __future__ import annotations

import hashlib

import sqlglot
from sqlglot.errors import SqlglotError
from sqlglot.tokenizer_core import Token, TokenType

#: the longest statement text analyzed (or redacted whole); longer ones are refused
MAX_SQL_LENGTH = 100_000
#: the most characters of (redacted) statement text an audit event carries
MAX_AUDIT_TEXT = 4096

_LITERALS = frozenset(
    {
        TokenType.STRING,
        TokenType.NUMBER,
        TokenType.BIT_STRING,
        TokenType.HEX_STRING,
        TokenType.BYTE_STRING,
        TokenType.NATIONAL_STRING,
        TokenType.NATIONAL_RAW_STRING,
        TokenType.RAW_STRING,
        TokenType.HEREDOC_STRING,
        TokenType.UNICODE_STRING,
    }
)
_QUOTED = frozenset({TokenType.IDENTIFIER})
_NO_SPACE_BEFORE = frozenset(
    {TokenType.COMMA, TokenType.R_PAREN, TokenType.SEMICOLON, TokenType.DOT, TokenType.DCOLON}
)
_NO_SPACE_AFTER = frozenset({TokenType.L_PAREN, TokenType.DOT, TokenType.DCOLON})


def redact(sql: str, *, dialect: str = "postgres") -> str | None:
    """The statement with literals as ``?``; None when it does not even tokenize.

    Of a statement too long to analyze, only the first ``MAX_AUDIT_TEXT``
    characters are tokenized (a prefix cut inside a literal does not tokenize:
    None, never the literal's text).
    """
    if len(sql) > MAX_SQL_LENGTH:
        sql = sql[:MAX_AUDIT_TEXT]
    try:
        tokens = sqlglot.tokenize(sql, read=dialect)
    except SqlglotError:
        return None
    except Exception:  # noqa: BLE001 - a tokenizer crash means: nothing safe to show
        return None
    return redact_tokens(tokens)


def redact_tokens(tokens: list[Token]) -> str:
    """Rebuild statement text from tokens, every literal as ``?`` and no comments."""
    out: list[str] = []
    glue = True  # no space before the next token
    previous = None
    end = -2  # where the last number ended
    for token in tokens:
        kind = token.token_type
        if kind == TokenType.VAR and token.start == end + 1:
            # a word glued to a number is the rest of one literal to PostgreSQL 16+
            # (4111_1111, 0o17): sqlglot reads a number and a name; both are redacted
            end = token.end
            continue
        if kind == TokenType.NUMBER:
            end = token.end
        if kind in _LITERALS:
            text = "?"
        elif kind in _QUOTED:
            text = '"' + token.text.replace('"', '""') + '"'
        else:
            text = token.text
        call = kind == TokenType.L_PAREN and previous in (TokenType.VAR, TokenType.IDENTIFIER)
        if not glue and kind not in _NO_SPACE_BEFORE and not call:
            out.append(" ")
        out.append(text)
        glue = kind in _NO_SPACE_AFTER
        previous = kind
    return "".join(out)


def fingerprint(redacted: str | None) -> str | None:
    """A short stable hash of the redacted text: equal for statements differing only in literals."""
    if redacted is None:
        return None
    return digest(redacted.lower())


def digest(text: str) -> str:
    """sha256 of ``text`` (lone surrogates included, as they are), 16 hex digits."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def audit_text(redacted: str | None) -> str | None:
    """What an audit event shows of a redacted statement: valid UTF-8, at most
    ``MAX_AUDIT_TEXT`` characters (a cut text ends with ``...[cut]``; the event's
    fingerprint still identifies the whole statement)."""
    if redacted is None:
        return None
    if not redacted.isascii():
        redacted = redacted.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(redacted) <= MAX_AUDIT_TEXT:
        return redacted
    return f"{redacted[:MAX_AUDIT_TEXT]} ...[cut]"
