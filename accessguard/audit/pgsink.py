"""A PostgreSQL audit and ledger sink, written through its own trusted connection.

Events go to ``accessguard.events``, partitioned by month and indexed by data
subject, batched with ``executemany`` (the tables, their DDL and statements,
and an event's row are in ``accessguard.audit.pgtables``). The keyed chain
(``accessguard.audit.chain``) is kept across processes: each batch takes a
transaction-level advisory lock, reads the chain's head and its latest
checkpoint, links onto them and, in the same transaction, records a new
checkpoint in ``accessguard.checkpoints``. The sink's role needs only INSERT
and SELECT on its tables (``setup()`` creates them and, given ``writer_role``,
grants exactly that); guarded sessions cannot reach them (the schema is not in
schema.toml).

If the server is down, batches go to a local spool (``accessguard.audit.spool``) and
every later batch follows them there, so order holds. A background thread
delivers the spool, a chunk per transaction, once the server is back; so does
``close()``. If the events cannot even be spooled, ``write`` raises
``AuditError`` and the guard refuses.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from accessguard.audit.chain import (
    FROM_ENV,
    SEQ,
    Checkpoint,
    Head,
    head_of,
    key_id,
    link,
    load_key,
    vouch,
)

# public in pgtables; PostgresSink calls them by the names they had when they lived here
from accessguard.audit.pgtables import DDL as _DDL
from accessguard.audit.pgtables import INSERT_CHECKPOINT as _CHECKPOINT
from accessguard.audit.pgtables import INSERT_EVENT as _INSERT
from accessguard.audit.pgtables import INSERT_MARK as _MARK
from accessguard.audit.pgtables import LOCK_KEY as _LOCK_KEY
from accessguard.audit.pgtables import SCHEMA, event_row
from accessguard.audit.pgtables import SELECT_COUNT as _COUNT
from accessguard.audit.pgtables import SELECT_DELIVERED as _DELIVERED
from accessguard.audit.pgtables import SELECT_LAST as _LAST
from accessguard.audit.pgtables import SELECT_LATEST_CHECKPOINTS as _LATEST_CHECKPOINTS
from accessguard.audit.pgtables import TABLES as _TABLES
from accessguard.audit.pgtables import event_timestamp as _timestamp
from accessguard.audit.pgtables import month_partition as _month
from accessguard.audit.spool import Spool
from accessguard.errors import AuditError

if TYPE_CHECKING:
    import datetime as dt

    from accessguard.audit.pgtables import Event

__all__ = ["PostgresSink"]


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
