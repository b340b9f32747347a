"""One sqlglot Dialect instance per name, shared by analysis and the second wall.

A leaf of the analysis package: ``analysis`` (parsing) and ``analysis.rewrite``
(generating the SQL sent) both import it, and neither imports the other for it.
It also keeps, per thread, each dialect's tokenizer and parser, and keeps the
parser's warnings, which quote the statement, out of the application's logs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlglot.dialects.dialect import Dialect

_DIALECTS: dict[str, Dialect] = {}


def dialect(name: str) -> Dialect:
    """The Dialect named ``name`` (sqlglot builds a new one per lookup; we keep one)."""
    found = _DIALECTS.get(name)
    if found is None:
        found = _DIALECTS[name] = Dialect.get_or_raise(name)
    return found


class _DropUnsupportedSyntax(logging.Filter):
    """sqlglot warns with the full statement text when it falls back to Command.

    That text may hold customer data, so the warning must not reach the
    application's logs; the guard refuses such statements anyway.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "unsupported syntax" not in record.getMessage()


logging.getLogger("sqlglot").addFilter(_DropUnsupportedSyntax())


_LOCAL = threading.local()


def parser(name: str) -> Any:
    """A parser per thread and dialect: sqlglot's parse() resets it before each statement."""
    try:
        return _LOCAL.parsers[name]
    except (AttributeError, KeyError):  # this thread's first of that dialect
        return _per_thread("parsers", name, lambda dialect: dialect.parser())


def tokenizer(name: str) -> Any:
    """A tokenizer per thread and dialect: they keep state while tokenizing."""
    try:
        return _LOCAL.tokenizers[name]
    except (AttributeError, KeyError):  # this thread's first of that dialect
        return _per_thread("tokenizers", name, lambda dialect: dialect.tokenizer())


def _per_thread(slot: str, name: str, make: Callable[[Dialect], Any]) -> Any:
    """This thread's object in ``slot`` for dialect ``name``, made by ``make`` once."""
    made: dict[str, Any] | None = getattr(_LOCAL, slot, None)
    if made is None:
        made = {}
        setattr(_LOCAL, slot, made)
    found = made.get(name)
    if found is None:
        found = made[name] = make(dialect(name))
    return found
