"""Thin shells that put the guard in front of a database connection."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import psycopg

from accessguard.errors import ConfigurationError

if TYPE_CHECKING:
    from accessguard.engine.gate import Gate
    from accessguard.engine.lane import Session


def wrap_connection(guard: Gate, connection: Any, session: Session, *, dialect: str | None) -> Any:
    """Pick the adapter for ``connection``: psycopg 3, sqlite3, or generic DB-API 2.0."""
    if isinstance(connection, psycopg.Connection):
        from accessguard.adapters.psycopg3 import GuardedConnection

        return GuardedConnection(guard, connection, session)
    if isinstance(connection, psycopg.AsyncConnection):
        raise ConfigurationError(
            "an AsyncConnection is guarded with guard.wrap_async(...) or guard.connect_async(...)"
        )
    from accessguard.adapters.dbapi import GuardedDbapiConnection

    if isinstance(connection, sqlite3.Connection):
        return GuardedDbapiConnection(guard, connection, session, dialect=dialect or "sqlite")
    if dialect is None:
        raise ConfigurationError(
            f"wrap() needs dialect= for a {type(connection).__name__} connection "
            "(the sqlglot dialect its SQL is written in)"
        )
    return GuardedDbapiConnection(guard, connection, session, dialect=dialect)
