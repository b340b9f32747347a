"""The access ledger: who read which customer's data, under which ticket, and how much.

Every allowed statement that touches a scoped table is accounted for here:
one statement per subject (customer or product) its proven scope names, and
the rows the application actually fetched from the cursor.

Recording is on every statement's path, so it takes no lock and reads no
clock: a statement appends its plan's ``Tally`` to a queue (a
``collections.deque``, whose ``append`` is atomic), a fetch appends
``(tally, rows)``. A background thread drains the queue every ``interval``
seconds, counts it (``collections.Counter``, in C), adds the counts to the
pending entries and writes them to the sink. When ``max_pending`` updates
wait, the caller drains and writes them itself: a full buffer blocks, it
never drops. ``close()`` (also at interpreter exit) writes what is left.

Entries aggregate identical (employee, ticket, subject, fingerprint) within one
flush window; statements and rows add up exactly across entries. Their
``first`` and ``last`` times are those of the drains that counted them, so
they are accurate to the flush interval.
"""

from __future__ import annotations

import atexit
import datetime as dt
import hashlib
import hmac
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice

from accessguard import metrics
from accessguard.audit.sinks import AuditSink, Event
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


class Tally:
    """One plan's accesses, and the handle its statements count themselves with.

    Made once per plan, shared by every execution of it: ``Ledger.record``
    counts a statement, ``add`` the rows a cursor handed over. Neither takes a
    lock or allocates more than a pair.
    """

    __slots__ = ("_queue", "accesses", "ledger", "weight", "writes")

    def __init__(
        self, ledger: Ledger, accesses: tuple[Access, ...], weight: int = 1, *, writes: bool = False
    ) -> None:
        self.ledger = ledger
        self.accesses = accesses
        self.weight = max(weight, 1)
        #: the plan's statement writes (an UPDATE): the rows it changes are counted too
        self.writes = writes
        self._queue = ledger._queue

    def add(self, n: int) -> None:
        """Count ``n`` rows handed over (times the rows each carries) for each of the accesses."""
        if n > 0:
            queue = self._queue
            queue.append((self, n * self.weight))
            if len(queue) >= self.ledger._max_pending:
                self.ledger.flush()


class Ledger:
    """Aggregates accesses in memory and flushes them to a sink in the background."""

    def __init__(  # noqa: PLR0913 - keyword-only options
        self,
        sink: AuditSink,
        *,
        clock: Callable[[], float] = time.time,
        interval: float = 1.0,
        max_pending: int = 100_000,
        pseudonym_key: bytes | None = None,
        refused: Callable[[tuple[Access, ...], AuditError], None] | None = None,
    ) -> None:
        self.sink = sink
        #: told of each statement refused because the sink fails (the guard audits it)
        self._refused = refused
        self._clock = clock
        self._interval = interval
        self._max_pending = max_pending
        self._key = pseudonym_key
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        #: statements (a Tally) and fetches ((Tally, rows)) not yet counted
        self._queue: deque[Tally | tuple[Tally, int]] = deque()
        self._pending: dict[Key, Entry] = {}
        self._wake = threading.Event()
        self._closed = False
        self._failure: Exception | None = None
        #: told of each batch written (the alerter); its failures are counted, never raised
        self.on_flush: Callable[[list[Event]], object] | None = None
        self.hook_failures = 0
        self._thread = threading.Thread(target=self._run, name="accessguard-ledger", daemon=True)
        self._thread.start()
        _LEDGERS.add(self)

    @property
    def closed(self) -> bool:
        """Whether ``close`` ran: nothing more is recorded (the guard refuses what it would add)."""
        return self._closed

    # ------------------------------------------------------------------ recording

    def tally(
        self, accesses: tuple[Access, ...], weight: int = 1, *, writes: bool = False
    ) -> Tally:
        """The handle a plan's statements are counted with (one per plan, not per statement).

        ``weight``: how many rows of a table one result row may carry (``Facts.row_weight``).
        """
        return Tally(self, accesses, weight, writes=writes)

    def record(self, tally: Tally) -> None:
        """Count one statement for each of the tally's accesses.

        Raises AuditError while the sink is failing (after one synchronous retry):
        a statement that could not be accounted for is not run.
        """
        if self._failure is not None:
            try:
                self._recover()
            except AuditError as exc:
                if self._refused is not None:
                    self._refused(tally.accesses, exc)
                raise
        queue = self._queue
        queue.append(tally)
        if len(queue) >= self._max_pending:
            self.flush()

    def _drain(self) -> None:
        """Move the queued updates into the pending entries (under the lock)."""
        queue = self._queue
        # exactly the updates queued so far; later appends wait for the next drain
        counts = Counter(islice(iter(queue.popleft, _END), len(queue)))
        if not counts:
            return
        now = self._clock()
        pending = self._pending
        for item, times in counts.items():
            if isinstance(item, Tally):
                tally, statements, rows = item, times, 0
            else:
                tally, statements, rows = item[0], 0, item[1] * times
            for access in tally.accesses:
                entry = pending.get(access.key)
                if entry is None:
                    entry = pending[access.key] = Entry(access, first=now, last=now)
                entry.statements += statements
                entry.rows += rows
                entry.last = now

    # ------------------------------------------------------------------ flushing

    def flush(self) -> None:
        """Write every pending entry now (blocks until the sink has them)."""
        with self._flush_lock:
            with self._lock:
                self._drain()
                batch = self._pending
                self._pending = {}
            if not batch:
                self._told([])  # refusals and ticket changes observed since are evaluated too
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
            self._told(events)

    def _told(self, events: list[Event]) -> None:
        if self.on_flush is not None:
            try:
                self.on_flush(events)
            except Exception:  # noqa: BLE001 - the batch is written; a hook never undoes it
                self.hook_failures += 1

    def _event(self, entry: Entry) -> Event:
        access = entry.access
        subject: int | str = access.subject
        subject = self.pseudonym(subject)
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

    def pseudonym(self, subject: int | str) -> int | str:
        """The subject id as the trail keeps it: itself, or its keyed hash (pseudonym_key)."""
        if self._key is None:
            return subject
        return hmac.new(self._key, str(subject).encode(), hashlib.sha256).hexdigest()

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
        """Entries waiting to be written (after counting what is queued)."""
        with self._lock:
            self._drain()
            return len(self._pending)


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="microseconds")


_LEDGERS: weakref.WeakSet[Ledger] = weakref.WeakSet()
#: never queued: ends the C-level drain loop if the queue empties early
_END: object = object()


@atexit.register
def _flush_all() -> None:
    for ledger in list(_LEDGERS):
        try:
            ledger.close()
        except Exception:  # noqa: BLE001, S112 - at exit there is no caller left to tell
            continue
