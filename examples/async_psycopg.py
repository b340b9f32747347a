"""Async psycopg 3: one guarded AsyncConnection, one allowed and one refused query.

Needs a PostgreSQL server; the scenario's tables are (re)created in the
database named by ACCESSGUARD_DSN (created if missing):

    ACCESSGUARD_DSN=postgresql://postgres@127.0.0.1:5432/accessguard_example \\
        python examples/async_psycopg.py
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from accessguard import AccessDenied, Guard, scenario

DSN = os.environ.get("ACCESSGUARD_DSN", "postgresql://postgres@127.0.0.1:5432/accessguard_example")
AUDIT = Path(tempfile.gettempdir()) / "accessguard-example-audit.jsonl"


def prepare(dsn: str) -> None:
    """Create the database if missing and load the reference scenario into it."""
    name = str(conninfo_to_dict(dsn)["dbname"])
    with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(dsn) as conn:
        scenario.load_postgres(conn)


async def main() -> None:
    prepare(DSN)
    with Guard.from_directory(
        scenario.policies_dir(), tickets=scenario.tickets(), audit=AUDIT
    ) as guard:
        async with await guard.connect_async(DSN, user="alice", ticket="T-100") as aconn:
            cur = await aconn.execute("SELECT name, email FROM customers WHERE id = %s", [42])
            print("allowed:", await cur.fetchall())
            try:
                await aconn.execute("SELECT name, email FROM customers")
            except AccessDenied as exc:
                print("refused:", exc)
    print("audit trail:", AUDIT)


if __name__ == "__main__":
    asyncio.run(main())
