"""A PostgreSQL audit and ledger sink, written through its own trusted connection.

Events go to ``accessguard.events``, partitioned by month and indexed by data
subject, batched with ``executemany``. The hash chain is kept across processes:
each batch takes a transaction-level advisory lock, reads the last hash and
links onto it. The sink's role needs only INSERT and SELECT on the table
(``setup()`` creates it and, given ``writer_role``, grants exactly that);
guarded sessions cannot reach it (the schema is not in schema.toml).

If the server is down, batches spool to a local JSON-lines file and are
delivered, in order, before the next batch once it is back. If they cannot
even be spooled, ``write`` raises ``AuditError`` and the guard refuses.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

from accessguard.audit import GENESIS, HASH, Event, seal
from accessguard.errors import AuditError

SCHEMA = "accessguard"
TABLE = f"{SCHEMA}.events"
_LOCK_KEY = 0x61636365  # "acce": the advisory lock that serialises chain writers

_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {TABLE} (
    id bigint GENERATED ALWAYS AS IDENTITY,
    ts timestamptz NOT NULL,
    action text NOT NULL,
    user_name text,
    ticket_id text,
    subject_kind text,
    subject_id text,
    hash text NOT NULL,
    event jsonb NOT NULL,
    PRIMARY KEY (id, ts)
) PARTITION BY RANGE (ts);
CREATE INDEX IF NOT EXISTS events_subject ON {TABLE} (subject_kind, subject_id, ts);
CREATE INDEX IF NOT EXISTS events_user ON {TABLE} (user_name, ts);
"""

# Built from the constants above only (no input): S608 does not apply.
_COLUMNS = "ts, action, user_name, ticket_id, subject_kind, subject_id, hash, event"
_INSERT = f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"  # noqa: S608
_LAST_HASH = f"SELECT hash FROM {TABLE} ORDER BY id DESC LIMIT 1"  # noqa: S608
_ALL = f"SELECT event FROM {TABLE} ORDER BY id"  # noqa: S608


def _month(ts: dt.datetime) -> tuple[str, str, str]:
    start = ts.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    return f"events_{start:%Y_%m}", start.isoformat(), end.isoformat()


class PostgresSink:
    """Audit and ledger events in PostgreSQL, with a local spool for outages."""

    def __init__(
        self,
        dsn: str,
        *,
        spool: str | Path | None = None,
        connect: Callable[[str], psycopg.Connection[Any]] | None = None,
    ) -> None:
        self.dsn = dsn
        self.spool = Path(spool) if spool is not None else None
        self._connect = connect or (lambda d: psycopg.connect(d, autocommit=False))
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._partitions: set[str] = set()

    # ------------------------------------------------------------------ setup

    def setup(self, *, writer_role: str | None = None) -> None:
        """Create the schema, table and indexes; grant ``writer_role`` insert and select only."""
        with self._connect(self.dsn) as conn:
            conn.execute(_DDL)
            if writer_role is not None:
                role = psycopg.sql.Identifier(writer_role)
                conn.execute(
                    psycopg.sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                        psycopg.sql.Identifier(SCHEMA), role
                    )
                )
                conn.execute(
                    psycopg.sql.SQL("GRANT SELECT, INSERT ON {}.{} TO {}").format(
                        psycopg.sql.Identifier(SCHEMA), psycopg.sql.Identifier("events"), role
                    )
                )

    # ------------------------------------------------------------------ writing

    def write(self, events: list[Event]) -> None:
        with self._lock:
            if not events and not self.spooled:
                return
            try:
                self._deliver_spool()
                if events:
                    self._insert(events)
            except psycopg.Error as exc:
                self._drop_connection()
                self._to_spool(events, exc)

    def _insert(self, events: list[Event]) -> None:
        conn = self._connection()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
            row = conn.execute(_LAST_HASH).fetchone()
            prev = row[0] if row else GENESIS
            batch = [dict(e) for e in events]
            seal(batch, prev)
            for event in batch:
                self._ensure_partition(conn, _timestamp(event))
            with conn.cursor() as cur:
                cur.executemany(_INSERT, [_row(e) for e in batch])
        for event, sealed in zip(events, batch, strict=True):
            event.update(sealed)

    def _ensure_partition(self, conn: psycopg.Connection[Any], ts: dt.datetime) -> None:
        name, start, end = _month(ts)
        if name in self._partitions:
            return
        conn.execute(
            psycopg.sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.{} PARTITION OF {}.{} FOR VALUES FROM ({}) TO ({})"
            ).format(
                psycopg.sql.Identifier(SCHEMA),
                psycopg.sql.Identifier(name),
                psycopg.sql.Identifier(SCHEMA),
                psycopg.sql.Identifier("events"),
                psycopg.sql.Literal(start),
                psycopg.sql.Literal(end),
            )
        )
        self._partitions.add(name)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect(self.dsn)
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    # ------------------------------------------------------------------ spool

    def _to_spool(self, events: list[Event], exc: Exception) -> None:
        if self.spool is None:
            raise AuditError(
                f"the PostgreSQL audit sink is unreachable ({type(exc).__name__}) and no spool "
                "file is configured"
            ) from exc
        try:
            with self.spool.open("a", encoding="utf-8") as fh:
                for event in events:
                    fh.write(json.dumps(event, sort_keys=True, default=str) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as spool_exc:
            raise AuditError(
                f"the PostgreSQL audit sink is unreachable and the spool {self.spool} cannot be "
                f"written ({spool_exc.strerror})"
            ) from spool_exc

    def _deliver_spool(self) -> None:
        if self.spool is None or not self.spool.exists() or self.spool.stat().st_size == 0:
            return
        spooled = [
            json.loads(line)
            for line in self.spool.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        for event in spooled:  # re-sealed onto the server's chain in order
            event.pop(HASH, None)
        self._insert(spooled)
        self.spool.write_text("", encoding="utf-8")

    @property
    def spooled(self) -> int:
        """Events waiting in the spool for the server to come back."""
        if self.spool is None or not self.spool.exists():
            return 0
        with self.spool.open(encoding="utf-8") as fh:
            return sum(1 for line in fh if line.strip())

    def close(self) -> None:
        with self._lock:
            self._drop_connection()

    def __repr__(self) -> str:
        return "PostgresSink(...)"  # the DSN may hold a password


def _timestamp(event: Event) -> dt.datetime:
    raw = event.get("@timestamp")
    if isinstance(raw, str):
        try:
            return dt.datetime.fromisoformat(raw)
        except ValueError:
            pass
    return dt.datetime.now(dt.UTC)


def _row(event: Event) -> tuple[Any, ...]:
    subject = event.get("accessguard.subject.id")
    return (
        _timestamp(event),
        event.get("event.action", "query"),
        event.get("user.name"),
        event.get("accessguard.ticket.id"),
        event.get("accessguard.subject.kind"),
        None if subject is None else str(subject),
        event[HASH],
        json.dumps(event, sort_keys=True, default=str),
    )


def read_events(dsn: str) -> Iterator[Event]:
    """Every event in the PostgreSQL sink, in chain order."""
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(_ALL)
        for (event,) in cur:
            yield dict(event)
