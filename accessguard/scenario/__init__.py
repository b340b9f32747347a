"""The reference scenario (shared/scenario.md): schema, seed data, tickets, policies.

``accessguard demo`` and the tests load it. The SQL files sit beside this
module; the policy directory is the repository's top-level ``policies/``,
copied into ``accessguard/scenario/policies`` when a wheel is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from accessguard.tickets.stores import Ticket, read_ticket_file

if TYPE_CHECKING:
    import sqlite3

    import psycopg

__all__ = [
    "load_postgres",
    "load_sqlite",
    "policies_dir",
    "tickets",
    "tickets_file",
]

_HERE = Path(__file__).resolve().parent


def _sql(name: str) -> str:
    """Return the text of one of the scenario's SQL files."""
    return (_HERE / name).read_text(encoding="utf-8")


def policies_dir() -> Path:
    """Return the scenario's policy directory (installed wheel first, then a checkout)."""
    candidates = (_HERE / "policies", _HERE.parents[1] / "policies")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"the reference scenario's policy directory is missing (tried {tried})")


def tickets_file() -> Path:
    """Return the path of the scenario's ticket file (YAML)."""
    return _HERE / "tickets.yaml"


def tickets() -> list[Ticket]:
    """Return the scenario's tickets, the same rows as the seeded ``tickets`` table."""
    return read_ticket_file(tickets_file())


def load_postgres(conn: psycopg.Connection[Any]) -> None:
    """(Re)create the scenario's schema and data in ``public`` (and ``archive``), then commit."""
    # No parameters: psycopg sends each file as one simple query (many statements).
    conn.execute(_sql("schema_postgres.sql").encode())
    conn.execute(_sql("seed.sql").encode())
    conn.commit()


def load_sqlite(conn: sqlite3.Connection) -> None:
    """(Re)create the scenario's tables and data in a SQLite database, then commit."""
    conn.executescript(_sql("schema_sqlite.sql"))
    conn.executescript(_sql("seed.sql"))
    conn.commit()
