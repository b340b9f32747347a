"""The access ledger: who read which customer's data, under which ticket, and how much.

Every allowed statement that touches a scoped table is accounted for here:
one statement per subject (customer or product) its proven scope names, and
the rows the application actually fetched from the cursor. Recording is an
in-memory update under a lock; a background thread flushes aggregated
entries to the sink every ``interval`` seconds (and when ``max_pending``
entries wait, in the caller's thread: a full buffer blocks, it never drops).
``close()`` (also at interpreter exit) flushes what is left.

Entries aggregate identical (employee, ticket, subject, fingerprint) within one
flush window; statements and rows add up exactly across entries.
"""

from __future__ import annotations

import atexit
import datetime as dt
import hashlib
import hmac
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from accessguard import metrics
from accessguard.audit import AuditSink, Event
from accessguard.errors import AuditError

#: identity of an aggregated entry
Key = tuple[str, str | None, str, int, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class Access:
    """What one allowed statement was: who, under which ticket, which subject and shape."""

    user: str
    roles: tuple[str, ...]
    ticket_id: str | None
    ticket_kind: str | None
    scope: str
    subject: int
    fingerprint: str
    tables: tuple[str, ...]
    columns: tuple[str, ...]
    policy_version: str
    key: Key = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = (self.user, self.ticket_id, self.scope, self.subject, self.fingerprint)
        object.__setattr__(self, "key", key)


@dataclass(slots=True)
class Entry:
    """Counts for one access shape in one flush window."""

    access: Access
    first: float
    last: float
    statements: int = 0
    rows: int = 0


@dataclass(slots=True)
class Tally:  # not frozen: one is made per statement, on the hot path
    """What a cursor holds to add the rows it hands over to its statement's entries."""

    ledger: Ledger
    accesses: tuple[Access, ...]
    rows: int = field(default=0)

    def add(self, n: int) -> None:
        if n > 0:
            self.rows += n
            self.ledger.add_rows(self.accesses, n)


class Ledger:
    """Aggregates accesses in memory and flushes them to a sink in the background."""

    def __init__(
        self,
        sink: AuditSink,
        *,
        clock: Callable[[], float] = time.time,
        interval: float = 1.0,
        max_pending: int = 10_000,
        pseudonym_key: bytes | None = None,
    ) -> None:
        self.sink = sink
        self._clock = clock
        self._interval = interval
        self._max_pending = max_pending
        self._key = pseudonym_key
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending: dict[Key, Entry] = {}
        self._wake = threading.Event()
        self._closed = False
        self._failure: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="accessguard-ledger", daemon=True)
        self._thread.start()
        _LEDGERS.add(self)

    # ------------------------------------------------------------------ recording

    def record(self, accesses: tuple[Access, ...]) -> Tally:
        """Count one statement for each access; return the tally its cursor adds rows to.

        Raises AuditError while the sink is failing (after one synchronous retry):
        a statement that could not be accounted for is not run.
        """
        if self._failure is not None:
            self._recover()
        self._bump(accesses, statements=1, rows=0)
        return Tally(self, accesses)

    def add_rows(self, accesses: tuple[Access, ...], n: int) -> None:
        self._bump(accesses, statements=0, rows=n)

    def _bump(self, accesses: tuple[Access, ...], *, statements: int, rows: int) -> None:
        now = self._clock()  # one clock read and one lock per call: this is the hot path
        with self._lock:
            for access in accesses:
                entry = self._pending.get(access.key)
                if entry is None:
                    entry = self._pending[access.key] = Entry(access, first=now, last=now)
                entry.statements += statements
                entry.rows += rows
                entry.last = now
            full = len(self._pending) >= self._max_pending
        if full:
            self.flush()

    # ------------------------------------------------------------------ flushing

    def flush(self) -> None:
        """Write every pending entry now (blocks until the sink has them)."""
        with self._flush_lock:
            with self._lock:
                batch = self._pending
                self._pending = {}
            if not batch:
                return
            events = [self._event(e) for e in batch.values()]
            try:
                self.sink.write(events)
                self._failure = None
                metrics.ROWS.inc(sum(e.rows for e in batch.values()))
            except Exception as exc:
                self._failure = exc
                with self._lock:  # put the counts back: nothing is lost
                    for key, entry in batch.items():
                        mine = self._pending.get(key)
                        if mine is None:
                            self._pending[key] = entry
                        else:
                            mine.statements += entry.statements
                            mine.rows += entry.rows
                            mine.first = entry.first
                raise

    def _event(self, entry: Entry) -> Event:
        access = entry.access
        subject: int | str = access.subject
        if self._key is not None:
            subject = hmac.new(self._key, str(subject).encode(), hashlib.sha256).hexdigest()
        return {
            "@timestamp": _iso(entry.last),
            "event.kind": "event",
            "event.category": ["database"],
            "event.type": ["access", "allowed"],
            "event.action": "ledger",
            "event.outcome": "success",
            "accessguard.outcome": "allowed",
            "user.name": access.user,
            "user.roles": list(access.roles),
            "accessguard.ticket.id": access.ticket_id,
            "accessguard.ticket.kind": access.ticket_kind,
            "accessguard.subject.kind": access.scope,
            "accessguard.subject.id": subject,
            "accessguard.tables": list(access.tables),
            "accessguard.columns": list(access.columns),
            "accessguard.fingerprint": access.fingerprint,
            "accessguard.statements": entry.statements,
            "accessguard.rows": entry.rows,
            "accessguard.first": _iso(entry.first),
            "accessguard.last": _iso(entry.last),
            "accessguard.policy.version": access.policy_version,
        }

    def _recover(self) -> None:
        try:
            self.flush()
        except Exception as exc:
            raise AuditError(
                "The access ledger cannot be written; statements on customer data are refused "
                f"until it can ({type(exc).__name__})."
            ) from exc

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # noqa: BLE001, S112 - counts stay pending; retried next tick
                continue

    def close(self) -> None:
        """Stop the flusher and write what is left (raises if the sink cannot take it)."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)
        self.flush()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="microseconds")


_LEDGERS: weakref.WeakSet[Ledger] = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    for ledger in list(_LEDGERS):
        try:
            ledger.close()
        except Exception:  # noqa: BLE001, S112 - at exit there is no caller left to tell
            continue
