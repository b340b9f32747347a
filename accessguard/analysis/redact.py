"""Statement text with every literal replaced by ``?``, and its fingerprint.

Built from the token stream, not the tree, so it works on statements that do
not parse; comments are not tokens and are dropped with whatever they hold.
"""

from __future__ import annotations

import hashlib

import sqlglot
from sqlglot.errors import SqlglotError
from sqlglot.tokenizer_core import Token, TokenType

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
    """The statement with literals as ``?``; None when it does not even tokenize."""
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
    for token in tokens:
        kind = token.token_type
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
    return hashlib.sha256(redacted.lower().encode()).hexdigest()[:16]
