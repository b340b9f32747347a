"""Tickets, and where the guard finds them.

A ticket justifies access only while it is open, assigned to the employee and
of the kind a rule names. Stores are asked on every statement; none caches
past the ``ttl`` it states (0 by default), so a ticket that closes stops
working on the next statement.

Lifecycle: each store tells its subscribers (``subscribe``; the Guard is one,
and writes them as ``ticket.*`` audit events) of the changes it observes, as
``TicketChange`` (opened, assigned, closed, reopened): the memory store on
``put`` (which takes who made the change, ``by``, and when, ``at``), the file
store by comparing its snapshots on reload, the PostgreSQL store by comparing
each row it fetches with the last it saw of that ticket.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import yaml

from accessguard.errors import ConfigurationError, PolicyError

_FIELDS = ("id", "assignee", "kind", "status", "customer_id", "product_id")
#: the statuses a ticket file may give (only "open" justifies access)
STATUSES = frozenset({"open", "closed"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Ticket:
    """A support ticket: who works it, of what kind, about which customer or product."""

    id: str
    assignee: str
    kind: str
    status: str
    customer_id: int | None = None
    product_id: int | None = None
    #: who made the ticket's latest change, as the ticket system recorded it (a ticket
    #: file's ``changed_by``); it names the author of the lifecycle events a file
    #: store announces, and is not part of the ticket's identity
    changed_by: str | None = field(default=None, compare=False)

    @property
    def is_open(self) -> bool:
        return self.status == "open"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Ticket:
        missing = [f for f in ("id", "assignee", "kind", "status") if data.get(f) is None]
        if missing:
            raise ValueError(f"ticket is missing {', '.join(missing)}")
        unknown = set(data) - set(_FIELDS) - {"changed_by", "opened_at", "closed_at"}
        if unknown:
            raise ValueError(f"ticket has unknown fields: {', '.join(sorted(unknown))}")
        return cls(
            id=str(data["id"]),
            assignee=str(data["assignee"]),
            kind=str(data["kind"]),
            status=str(data["status"]),
            customer_id=_opt_int(data.get("customer_id")),
            product_id=_opt_int(data.get("product_id")),
            changed_by=None if data.get("changed_by") is None else str(data["changed_by"]),
        )


def _epoch(value: object) -> float | None:
    """A timestamp column's value as epoch seconds (None when absent or not a time)."""
    return value.timestamp() if isinstance(value, dt.datetime) else None


def _opt_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(  # noqa: TRY004 - reported to the user as a bad ticket file entry
            "ticket ids of customers and products must be integers"
        )
    return int(value)


class TicketStoreUnavailable(Exception):
    """A ticket (or elevation) store could not answer, and has no answer young enough.

    Deliberately not an ``AccessGuardError``: a store raises it, the guard
    turns it into a refusal of the statement, audited ``ticket.store_unavailable``.
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class TicketChange:
    """One observed change in a ticket's life: who made it and when, when known."""

    action: str  # "opened" | "assigned" | "closed" | "reopened"
    ticket: Ticket
    by: str | None = None
    at: float | None = None
    previous_assignee: str | None = None


def changes(
    old: Ticket | None,
    new: Ticket,
    *,
    by: str | None = None,
    at: float | None = None,
    closed_at: float | None = None,
) -> list[TicketChange]:
    """What turned ``old`` (None: not seen before) into ``new``, in the order it happened.

    ``at`` is when it happened; a closing happened at ``closed_at`` when the ticket
    system says so apart (a tickets table's column), else at ``at`` too.
    """
    closing = at if closed_at is None else closed_at
    found: list[TicketChange] = []
    if old is None:
        found.append(TicketChange(action="opened", ticket=new, by=by, at=at))
        if not new.is_open:
            found.append(TicketChange(action="closed", ticket=new, by=by, at=closing))
        return found
    if old.assignee != new.assignee:
        found.append(
            TicketChange(
                action="assigned", ticket=new, by=by, at=at, previous_assignee=old.assignee
            )
        )
    if old.is_open and not new.is_open:
        found.append(TicketChange(action="closed", ticket=new, by=by, at=closing))
    elif not old.is_open and new.is_open:
        found.append(TicketChange(action="reopened", ticket=new, by=by, at=at))
    return found


class Announcer:
    """The subscribers a store tells of the ticket changes it observes."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[TicketChange], object]] = []

    def subscribe(self, listener: Callable[[TicketChange], object]) -> None:
        """Call ``listener`` with every change observed from now on."""
        self._listeners.append(listener)

    def announce(self, found: Iterable[TicketChange]) -> None:
        for change in found:
            for listener in list(self._listeners):
                listener(change)


@runtime_checkable
class TicketStore(Protocol):
    """Where the guard finds tickets: anything with ``get(ticket_id) -> Ticket | None``.

    The contract every store (memory, file, PostgreSQL, HTTP) keeps:

    - ``get`` returns the ticket as the ticket system holds it now, or as it
      held it at most the store's stated ``ttl`` seconds ago; None when there
      is no such ticket. The guard asks on every statement, so a ticket that
      closes stops working within that bound.
    - When it cannot answer (its source is down, the answer is malformed),
      ``get`` raises; it never guesses and never serves an answer older than
      its bound. The guard refuses the statement and audits it:
      ``ticket.store_unavailable`` when it raises ``TicketStoreUnavailable``,
      ``internal.error`` for any other exception.
    - ``get`` may be called from many threads at once.
    - A ``close()`` method, if any, releases connections or threads.
    """

    def get(self, ticket_id: str) -> Ticket | None: ...


class MemoryTicketStore(Announcer):
    """Tickets held in memory; ``put`` replaces one (e.g. when it closes)."""

    def __init__(self, tickets: Iterable[Ticket] = ()) -> None:
        super().__init__()
        self._tickets = {t.id: t for t in tickets}

    def get(self, ticket_id: str) -> Ticket | None:
        return self._tickets.get(ticket_id)

    def put(self, ticket: Ticket, *, by: str | None = None, at: float | None = None) -> None:
        """Add or replace a ticket; subscribers hear what changed, ``by`` whom and ``at`` when."""
        old = self._tickets.get(ticket.id)
        self._tickets[ticket.id] = ticket
        self.announce(changes(old, ticket, by=by, at=at))

    def __iter__(self) -> Any:
        return iter(list(self._tickets.values()))


class FileTicketStore(Announcer):
    """Tickets from a YAML or JSON file (a list or ``{tickets: [...]}``), re-read on change.

    A reload announces what changed since the last snapshot (the first load
    announces nothing: those tickets were there before the store looked). An
    entry's optional ``changed_by`` names who made its latest change: the
    author of the events announced for it (the ``ticket_churn`` alert's
    ``self_assigned`` needs it).
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._tickets: dict[str, Ticket] = {}
        self._load()

    def _load(self) -> None:
        try:
            stat = self.path.stat()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read ticket file {self.path}: {exc.strerror}"
            ) from exc
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        old, first = self._tickets, self._stamp is None
        self._tickets = {t.id: t for t in read_ticket_file(self.path)}
        self._stamp = stamp
        if not first:
            self.announce(
                c
                for t in self._tickets.values()
                if old.get(t.id) != t
                for c in changes(old.get(t.id), t, by=t.changed_by)
            )

    def get(self, ticket_id: str) -> Ticket | None:
        with self._lock:
            self._load()
            return self._tickets.get(ticket_id)


def read_ticket_file(path: Path) -> list[Ticket]:
    """Parse a YAML/JSON ticket file; errors (PolicyError) name the file and line.

    Each ticket id appears once, and each status is one of ``STATUSES``: a
    duplicate id (which one would count?) or a misspelt status is an error,
    not a ticket silently replaced or closed.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"cannot read ticket file ({exc.strerror})", path=str(path)) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(
            "not valid UTF-8 text", path=str(path), line=raw.count(b"\n", 0, exc.start) + 1
        ) from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        line = getattr(exc, "lineno", None)
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            line = mark.line + 1
        raise PolicyError("not a valid ticket file", path=str(path), line=line) from exc
    if isinstance(data, dict):
        data = data.get("tickets")
    if not isinstance(data, list):
        raise PolicyError("expected a list of tickets (or tickets: [...])", path=str(path))
    lines = _entry_lines(text)
    tickets = []
    first: dict[str, int | None] = {}
    for i, entry in enumerate(data, 1):
        at = lines[i - 1] if i <= len(lines) else None
        if not isinstance(entry, dict):
            raise PolicyError(f"ticket #{i} is not a mapping", path=str(path), line=at)
        try:
            ticket = Ticket.from_mapping(entry)
        except ValueError as exc:
            raise PolicyError(f"ticket #{i}: {exc}", path=str(path), line=at) from exc
        if ticket.status not in STATUSES:
            raise PolicyError(
                f"ticket {ticket.id}: unknown status {ticket.status!r} "
                f"({' or '.join(sorted(STATUSES, reverse=True))})",
                path=str(path),
                line=at,
            )
        if ticket.id in first:
            where = f" (first on line {first[ticket.id]})" if first[ticket.id] else ""
            raise PolicyError(f"ticket {ticket.id} appears twice{where}", path=str(path), line=at)
        first[ticket.id] = at
        tickets.append(ticket)
    return tickets


def _entry_lines(text: str) -> list[int]:
    """The line each ticket entry starts on (JSON read as the YAML it is); [] if unknown."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return []
    if isinstance(node, yaml.MappingNode):
        node = next((v for k, v in node.value if k.value == "tickets"), None)
    if not isinstance(node, yaml.SequenceNode):
        return []
    return [item.start_mark.line + 1 for item in node.value]


class PostgresTicketStore(Announcer):
    """Reads the ``tickets`` table through its own trusted connection.

    ``connect`` returns a DB-API connection that is *not* guarded (the guard
    never hands it to application code). ``ttl`` seconds of caching per ticket
    (default 0: every statement sees the current row). A fetched row that
    differs from the last one seen of that ticket announces the change. A
    ticket first seen whose ``opened_at`` is not before the store started
    looking announces its opening at that time (and its closing at
    ``closed_at``, if it is closed already); one opened earlier announces
    nothing, as a ticket file's first load does. Each process announces what
    it sees: readers of the trail take a ticket's repeated ``opened`` as one.
    A table without ``opened_at`` and ``closed_at`` is read without them.
    """

    #: tickets whose last fetched row is remembered for change detection
    SEEN = 100_000

    _SQL = (
        "SELECT id, assignee, kind, status, customer_id, product_id"
        " FROM public.tickets WHERE id = %s"
    )
    _TIMED = (
        "SELECT id, assignee, kind, status, customer_id, product_id, opened_at, closed_at"
        " FROM public.tickets WHERE id = %s"
    )
    _HAS_TIMES = (
        "SELECT count(*) = 2 FROM information_schema.columns WHERE table_schema = 'public'"
        " AND table_name = 'tickets' AND column_name IN ('opened_at', 'closed_at')"
    )

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        ttl: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._connect = connect
        self._conn: Any = None
        self._seen: dict[str, Ticket] = {}
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, Ticket | None]] = {}
        #: when this store started looking (epoch seconds): tickets opened since are news
        self._started = time.time()
        self._timed: bool | None = None  # whether the table has opened_at and closed_at

    def get(self, ticket_id: str) -> Ticket | None:
        with self._lock:
            now = self._clock()
            hit = self._cache.get(ticket_id)
            if hit is not None and now - hit[0] < self._ttl:
                return hit[1]
            ticket, times = self._fetch(ticket_id)
            if ticket is not None:
                old = self._seen.pop(ticket_id, None)
                if len(self._seen) >= self.SEEN:
                    self._seen.pop(next(iter(self._seen)))
                self._seen[ticket_id] = ticket
                if old != ticket:  # (the times are read only then: not on every lookup)
                    opened, closed = (_epoch(t) for t in times)
                    if old is not None:
                        self.announce(changes(old, ticket, closed_at=closed))
                    elif opened is not None and opened >= self._started:
                        # first seen, and opened since this store started looking
                        self.announce(changes(None, ticket, at=opened, closed_at=closed))
            if self._ttl > 0:
                self._cache[ticket_id] = (now, ticket)
            return ticket

    def _fetch(self, ticket_id: str) -> tuple[Ticket | None, tuple[object, object]]:
        """The ticket, and its opened_at and closed_at values (None where the table has none)."""
        if self._conn is None or getattr(self._conn, "closed", False):
            self._conn = self._connect()
            if hasattr(self._conn, "autocommit"):
                self._conn.autocommit = True
            self._timed = None
        cur = self._conn.cursor()
        try:
            if self._timed is None:
                cur.execute(self._HAS_TIMES)
                found = cur.fetchone()
                self._timed = bool(found and found[0])
            cur.execute(self._TIMED if self._timed else self._SQL, (ticket_id,))
            row = cur.fetchone()
        finally:
            cur.close()
        if row is None:
            return None, (None, None)
        ticket = Ticket.from_mapping(dict(zip(_FIELDS, row[: len(_FIELDS)], strict=True)))
        extra = tuple(row[len(_FIELDS) :])
        return ticket, (extra[0], extra[1]) if len(extra) == 2 else (None, None)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def as_store(tickets: TicketStore | Iterable[Ticket] | None) -> TicketStore:
    """Accept a store, an iterable of tickets, or None (no tickets at all)."""
    if tickets is None:
        return MemoryTicketStore()
    if isinstance(tickets, TicketStore):
        return tickets
    return MemoryTicketStore(tickets)
