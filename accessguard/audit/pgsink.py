"""A PostgreSQL audit and ledger sink, written through its own trusted connection.

Events go to ``accessguard.events``, partitioned by month and indexed by data
subject, batched with ``executemany``. The keyed chain (``accessguard.audit.chain``)
is kept across processes: each batch takes a transaction-level advisory lock,
reads the chain's head and its latest checkpoint, links onto them and, in the
same transaction, records a new checkpoint in ``accessguard.checkpoints``. The
sink's role needs only INSERT and SELECT on its tables (``setup()`` creates
them and, given ``writer_role``, grants exactly that); guarded sessions cannot
reach them (the schema is not in schema.toml).

If the server is down, batches go to a local spool (``accessguard.audit.spool``) and
every later batch follows them there, so order holds. A background thread
delivers the spool, a chunk per transaction, once the server is back; so does
``close()``. If the events cannot even be spooled, ``write`` raises
``AuditError`` and the guard refuses.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

from accessguard.audit.chain import (
    FROM_ENV,
    HASH,
    SEQ,
    Checkpoint,
    Head,
    head_of,
    key_id,
    link,
    load_key,
    vouch,
)
from accessguard.audit.spool import Spool
from accessguard.errors import AuditError

Event = dict[str, Any]

SCHEMA = "accessguard"
TABLE = f"{SCHEMA}.events"
CHECKPOINTS = f"{SCHEMA}.checkpoints"
MARKS = f"{SCHEMA}.spool_marks"
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
CREATE TABLE IF NOT EXISTS {CHECKPOINTS} (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    seq bigint NOT NULL,
    hash text NOT NULL,
    key text,
    mac text NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS checkpoints_seq ON {CHECKPOINTS} (seq);
CREATE TABLE IF NOT EXISTS {MARKS} (
    spool text NOT NULL,
    delivered bigint NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS spool_marks_spool ON {MARKS} (spool, delivered);
"""

# Built from the constants above only (no input): S608 does not apply.
_COLUMNS = "ts, action, user_name, ticket_id, subject_kind, subject_id, hash, event"
_INSERT = f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"  # noqa: S608
_LAST = f"SELECT event FROM {TABLE} ORDER BY id DESC LIMIT 1"  # noqa: S608
_COUNT = f"SELECT count(*) FROM {TABLE}"  # noqa: S608
SELECT_ALL = f"SELECT {_COLUMNS} FROM {TABLE} ORDER BY id"  # noqa: S608
_CHECKPOINT = f"INSERT INTO {CHECKPOINTS} (seq, hash, key, mac) VALUES (%s, %s, %s, %s)"  # noqa: S608
_LATEST_CHECKPOINTS = (
    f"SELECT seq, hash, key, mac FROM {CHECKPOINTS} ORDER BY seq DESC, id DESC LIMIT 50"  # noqa: S608
)
SELECT_ALL_CHECKPOINTS = f"SELECT id, seq, hash, key, mac FROM {CHECKPOINTS} ORDER BY seq, id"  # noqa: S608
_MARK = f"INSERT INTO {MARKS} (spool, delivered) VALUES (%s, %s)"  # noqa: S608
_DELIVERED = f"SELECT max(delivered) FROM {MARKS} WHERE spool = %s"  # noqa: S608
_TABLES = ("events", "checkpoints", "spool_marks")


def _month(ts: dt.datetime) -> tuple[str, str, str]:
    start = ts.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    return f"events_{start:%Y_%m}", start.isoformat(), end.isoformat()


class PostgresSink:
    """Audit and ledger events in PostgreSQL, with a local spool for outages."""

    def __init__(  # noqa: PLR0913 - keyword-only options
        self,
        dsn: str,
        *,
        spool: str | Path | None = None,
        connect: Callable[[str], psycopg.Connection[Any]] | None = None,
        key: bytes | str | None = FROM_ENV,
        retry_interval: float = 1.0,
        chunk: int = 1000,
    ) -> None:
        self.dsn = dsn
        self.spool = Path(spool) if spool is not None else None
        self._connect = connect or (lambda d: psycopg.connect(d, autocommit=False))
        self._key = load_key(key)
        self._spool = Spool(spool, key=self._key) if spool is not None else None
        self.key_id = key_id(self._key)
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()  # writers: direct insert, or append to the spool
        self._db_lock = threading.Lock()  # the one connection
        self._deliver_lock = threading.Lock()
        self._partitions: set[str] = set()
        self._retry = retry_interval
        self._chunk = chunk
        #: events wait in the spool: every batch goes there too, to keep the order
        self._pending = self._spool is not None and self._spool.size() > 0
        #: the spool being delivered: its token and how far it was delivered
        self._cursor: tuple[str, int, str] | None = None
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.delivered = threading.Event()  # set each time the spool was emptied
        if self._pending:
            self._start_deliverer()

    # ------------------------------------------------------------------ setup

    def setup(self, *, writer_role: str | None = None) -> None:
        """Create the schema and tables; grant ``writer_role`` insert and select only."""
        with self._connect(self.dsn) as conn:
            conn.execute(_DDL)
            if writer_role is not None:
                role = psycopg.sql.Identifier(writer_role)
                conn.execute(
                    psycopg.sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                        psycopg.sql.Identifier(SCHEMA), role
                    )
                )
                for table in _TABLES:
                    conn.execute(
                        psycopg.sql.SQL("GRANT SELECT, INSERT ON {}.{} TO {}").format(
                            psycopg.sql.Identifier(SCHEMA), psycopg.sql.Identifier(table), role
                        )
                    )

    def check(self) -> None:
        """Raise AuditError unless events can be kept: in the table, or else in the spool."""
        if self._spool is not None:
            try:
                self._spool.check()
            except OSError as exc:
                raise AuditError(
                    f"the audit spool {self.spool} cannot be written ({exc.strerror})"
                ) from exc
        try:
            with self._db_lock:
                conn = self._connection()
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
                    head, cp = self._head(conn)
                    if cp is None and head.seq == 0:  # a new trail: vouch for its emptiness
                        cp = Checkpoint.of(head, self._key)
                        conn.execute(_CHECKPOINT, [cp.seq, cp.hash, cp.key, cp.mac])
        except psycopg.Error as exc:
            self._drop_connection()
            if self._spool is None:
                raise AuditError(
                    f"the PostgreSQL audit sink cannot be written ({type(exc).__name__}) and no "
                    "spool file is configured"
                ) from exc

    # ------------------------------------------------------------------ writing

    def write(self, events: list[Event]) -> None:
        if not events:
            return
        with self._lock:
            if not self._pending:
                try:
                    with self._db_lock:
                        self._insert(events)
                except psycopg.Error as exc:
                    self._drop_connection()
                    self._to_spool(events, exc)
                return
            self._to_spool(events, None)

    def _insert(self, events: list[Event], mark: tuple[str, int] | None = None) -> None:
        """Chain and insert one batch, and a checkpoint, in one transaction (holding _db_lock)."""
        conn = self._connection()
        batch = [dict(e) for e in events]
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
            head = link(batch, self._head(conn)[0], self._key)
            for event in batch:
                self._ensure_partition(conn, _timestamp(event))
            with conn.cursor() as cur:
                cur.executemany(_INSERT, [event_row(e) for e in batch])
            cp = Checkpoint.of(head, self._key)
            conn.execute(_CHECKPOINT, [cp.seq, cp.hash, cp.key, cp.mac])
            if mark is not None:
                conn.execute(_MARK, list(mark))
        for event, sealed in zip(events, batch, strict=True):
            event.clear()
            event.update(sealed)

    def _head(self, conn: psycopg.Connection[Any]) -> tuple[Head, Checkpoint | None]:
        """The chain's head and checkpoint, once they vouch for each other (else AuditError)."""
        row = conn.execute(_LAST).fetchone()
        last = dict(row[0]) if row else None
        head = Head()
        if last is not None:
            position = 0
            if SEQ not in last:  # an old-format trail: positions are row counts
                counted = conn.execute(_COUNT).fetchone()
                position = int(counted[0]) if counted else 0
            head = head_of(last, position)
        cps = [Checkpoint(*r) for r in conn.execute(_LATEST_CHECKPOINTS)]
        cp = next((c for c in cps if c.valid(self._key)), cps[0] if cps else None)
        problem = vouch(head, last, cp, self._key)
        if problem:
            raise AuditError(
                f"refusing to extend the PostgreSQL audit trail: {problem}; verify it "
                "(accessguard audit verify --dsn)"
            )
        return head, cp

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
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    # ------------------------------------------------------------------ spool

    def _to_spool(self, events: list[Event], exc: Exception | None) -> None:
        """Append to the spool (holding _lock); later batches follow until it is delivered."""
        if self._spool is None:
            raise AuditError(
                f"the PostgreSQL audit sink is unreachable ({type(exc).__name__}) and no spool "
                "file is configured"
            ) from exc
        try:
            self._spool.append(events)
        except OSError as spool_exc:
            raise AuditError(
                f"the PostgreSQL audit sink is unreachable and the spool {self.spool} cannot be "
                f"written ({spool_exc.strerror})"
            ) from spool_exc
        if not self._pending:
            self._pending = True
            self.delivered.clear()
            self._start_deliverer()

    def _start_deliverer(self) -> None:
        """Start the deliverer unless one runs (holding _lock, or before any writer exists)."""
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="accessguard-spool", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:  # the decision to stop and a new spooled batch never cross
                if self._closed or not self._pending:
                    self._thread = None
                    return
            try:
                self.deliver()
            except (psycopg.Error, AuditError, OSError):
                self._wake.wait(self._retry)
                self._wake.clear()

    def deliver(self) -> bool:
        """Deliver the spool now, a chunk per transaction, in order; True once it is empty.

        Raises psycopg.Error (the server is still down) or AuditError.
        """
        if self._spool is None:
            return True
        with self._deliver_lock:
            while True:
                cursor = self._cursor or self._resume()
                if cursor is None:
                    return self._finish(0)
                token, offset, prev = cursor
                events, after, last = self._spool.read(offset, prev, limit=self._chunk)
                if not events:
                    if self._finish(offset):
                        return True
                    continue
                try:
                    with self._db_lock:
                        self._insert(events, mark=(token, after))
                except psycopg.Error:
                    self._drop_connection()
                    raise
                self._cursor = (token, after, last)

    def _resume(self) -> tuple[str, int, str] | None:
        """Where delivery of the spool stopped, as the database recorded it."""
        assert self._spool is not None  # noqa: S101 - checked by the caller
        named = self._spool.token()
        if named is None:
            return None
        token, start = named
        with self._db_lock:
            conn = self._connection()
            try:
                row = conn.execute(_DELIVERED, [token]).fetchone()
                conn.commit()
            except psycopg.Error:
                self._drop_connection()
                raise
        done = row[0] if row and row[0] is not None else start
        offset = max(start, int(done))
        self._cursor = (token, offset, self._spool.mac_before(offset))
        return self._cursor

    def _finish(self, offset: int) -> bool:
        """Empty the spool if all of it was delivered; writes go straight to the table again."""
        assert self._spool is not None  # noqa: S101 - checked by the caller
        with self._lock:
            if not self._spool.clear_if_done(offset):
                return False
            self._cursor = None
            self._pending = False
        self.delivered.set()
        return True

    @property
    def spooled(self) -> int:
        """Events waiting in the spool for the server to come back."""
        if self._spool is None:
            return 0
        named = self._spool.token()
        if named is None:
            return 0
        start = self._cursor[1] if self._cursor is not None else named[1]
        return self._spool.count(start)

    def close(self) -> None:
        """Stop the deliverer, deliver what the spool holds if the server is up, disconnect.

        What cannot be delivered stays in the spool for the next sink on it.
        """
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(timeout=30)
        if self._pending:
            with contextlib.suppress(psycopg.Error, AuditError, OSError):
                self.deliver()
        with self._db_lock:
            self._drop_connection()

    def __repr__(self) -> str:
        return "PostgresSink(...)"  # the DSN may hold a password


def _timestamp(event: Event) -> dt.datetime:
    raw = event.get("@timestamp")
    if isinstance(raw, str):
        try:
            when = dt.datetime.fromisoformat(raw)
        except ValueError:
            pass
        else:
            return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
    return dt.datetime.now(dt.UTC)


def _text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def event_row(event: Event) -> tuple[Any, ...]:
    return (
        _timestamp(event),
        _text(event.get("event.action", "query")),
        *_indexed(event),
        event[HASH],
        json.dumps(event, sort_keys=True, default=str),
    )


def _indexed(event: Event) -> tuple[str | None, ...]:
    """The indexed columns as the event says they are: user, ticket, subject kind and id."""
    subject = event.get("accessguard.subject.id")
    return (
        _text(event.get("user.name")),
        _text(event.get("accessguard.ticket.id")),
        _text(event.get("accessguard.subject.kind")),
        None if subject is None else str(subject),
    )


# ---------------------------------------------------------------------- reading


def read_events(dsn: str) -> Iterator[Event]:
    """Every event in the PostgreSQL sink, in chain order (unverified)."""
    with psycopg.connect(dsn) as conn:
        for row in conn.execute(SELECT_ALL):
            yield dict(row[-1])
