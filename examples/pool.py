"""psycopg_pool: the employee is bound per checkout, never per physical connection.

Needs a PostgreSQL server; the scenario's tables are (re)created in the
database named by ACCESSGUARD_DSN (created if missing):

    ACCESSGUARD_DSN=postgresql://postgres@127.0.0.1:5432/accessguard_example \\
        python examples/pool.py
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from accessguard import AccessDenied, Guard, scenario

DSN = os.environ.get("ACCESSGUARD_DSN", "postgresql://postgres@127.0.0.1:5432/accessguard_example")
AUDIT = Path(tempfile.gettempdir()) / "accessguard-example-audit.jsonl"
QUERY = "SELECT name, email FROM customers WHERE id = %s"


def prepare(dsn: str) -> None:
    """Create the database if missing and load the reference scenario into it."""
    name = str(conninfo_to_dict(dsn)["dbname"])
    with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(dsn) as conn:
        scenario.load_postgres(conn)


def main() -> None:
    prepare(DSN)
    with (
        Guard.from_directory(
            scenario.policies_dir(), tickets=scenario.tickets(), audit=AUDIT
        ) as guard,
        guard.pool(DSN, min_size=1, max_size=1) as pool,
    ):
        with pool.connection(user="alice", ticket="T-100") as conn:
            print("alice on T-100:", conn.execute(QUERY, [42]).fetchall())
        # the same physical connection, now for bob: nothing of alice's checkout is left
        with pool.connection(user="bob") as conn:
            try:
                conn.execute(QUERY, [42])
            except AccessDenied as exc:
                print("bob refused:", exc)
        # or take the employee bound for this context (a web request, a task)
        with guard.acting_as(user="alice", ticket="T-100"), pool.connection() as conn:
            print("acting as alice:", conn.execute(QUERY, [42]).fetchall())
    print("audit trail:", AUDIT)


if __name__ == "__main__":
    main()
