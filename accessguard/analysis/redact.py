"""Statement text with every literal replaced by ``?``, and its fingerprint.

Built from the token stream, not the tree, so it works on statements that do
not parse; comments are not tokens and are dropped with whatever they hold.
"""

from __future__ import annotations

import hashlib

import sqlglot
from sqlglot.errors import SqlglotError
from sqlglot.tokens import TokenType

_LITERALS = frozenset(
    {
        TokenType.STRING, TokenType.NUMBER, TokenType.BIT_STRING, TokenType.HEX_STRING,
        TokenType.BYTE_STRING, TokenType.NATIONAL_STRING, TokenType.NATIONAL_RAW_STRING,
        TokenType.RAW_STRING, TokenType.HEREDOC_STRING, TokenType.UNICODE_STRING,
    }
)
_QUOTED = frozenset({TokenType.IDENTIFIER})


def redact(sql: str, *, dialect: str = "postgres") -> str | None:
    """The statement with literals as ``?``; None when it does not even tokenize."""
    try:
        tokens = sqlglot.tokenize(sql, read=dialect)
    except SqlglotError:
        return None
    except Exception:  # noqa: BLE001 - a tokenizer crash means: nothing safe to show
        return None
    parts = []
    for token in tokens:
        if token.token_type in _LITERALS:
            parts.append("?")
        elif token.token_type in _QUOTED:
            parts.append(f'"{token.text}"')
        elif token.token_type == TokenType.SEMICOLON:
            parts.append(";")
        else:
            parts.append(token.text.upper() if token.token_type != TokenType.VAR else token.text)
    return " ".join(parts)


def fingerprint(redacted: str | None) -> str | None:
    """A short stable hash of the redacted text: equal for statements differing only in literals."""
    if redacted is None:
        return None
    return hashlib.sha256(redacted.encode()).hexdigest()[:16]
