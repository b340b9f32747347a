"""What the engines hand back, and how it becomes the answers of ``accessguard.investigate``.

An engine (DuckDB over a file trail, SQL over the PostgreSQL sink) groups
ledger entries by (employee, ticket, ticket kind, subject kind, subject id)
and sums them where the data lives. Only those groups reach Python, where
they are merged under exactly the keys ``investigate.who_read`` and
``investigate.what_read`` use and sorted the same way, so the answers are
the same objects (``Reader``, ``Touch``) the in-Python path returns.

Time: a ledger entry's time is its last statement (``accessguard.last``,
which the ledger also writes as ``@timestamp``). A window keeps entries at
or after ``start`` and before ``end``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from accessguard.investigate.sums import (
    Reader,
    ReaderKey,
    Subject,
    Sums,
    Touch,
    TouchKey,
    event_time,
    json_ready,
    parse_since,
    parse_time,
    reader_rows,
    touch_rows,
)

_MAX_ID_DIGITS = 19  # as investigate: a bigint; a pseudonym has 64 hex digits


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """Entries at or after ``start`` and before ``end`` (either may be open)."""

    start: dt.datetime | None = None
    end: dt.datetime | None = None

    @classmethod
    def of(
        cls,
        *,
        since: str | None = None,
        start: str | None = None,
        end: str | None = None,
        now: dt.datetime,
    ) -> Window:
        """From the CLI's ``--since`` (back from ``now``), ``--from`` and ``--until`` texts."""
        begin = parse_when(start) if start is not None else None
        if since is not None:
            delta = parse_since(since)
            try:
                back = now - delta
            except OverflowError:
                back = dt.datetime.min.replace(tzinfo=dt.UTC)
            begin = back if begin is None else max(begin, back)
        finish = parse_when(end) if end is not None else None
        if begin is not None and finish is not None and finish <= begin:
            raise ValueError("--until must be after --from (and --since)")
        return cls(start=begin, end=finish)

    def holds(self, when: dt.datetime | None) -> bool:
        """Whether an entry at ``when`` is in the window (an unreadable time only if unbounded)."""
        if self.start is None and self.end is None:
            return True
        if when is None:
            return False
        return (self.start is None or when >= self.start) and (self.end is None or when < self.end)


def parse_when(text: str) -> dt.datetime:
    """An ISO 8601 date or date-time as an aware datetime (a date is its midnight, UTC)."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: use an ISO 8601 date or date-time "
            "(2026-11-02, 2026-11-02T08:00, 2026-11-02T08:00:00+01:00)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


class Group(NamedTuple):
    """Ledger entries of one (employee, ticket, kind, subject), summed by an engine."""

    user: str | None
    ticket: str | None
    ticket_kind: str | None
    scope: str | None
    subject: str
    statements: int
    rows: int
    columns: tuple[str, ...]
    tables: tuple[str, ...]
    roles: tuple[str, ...]
    first: dt.datetime | None
    last: dt.datetime | None


#: the periods engines sum the ledger by (``Engine.buckets``)
UNITS = ("hour", "day")


class Bucket(NamedTuple):
    """One employee's ledger in one hour or day (of the entries' first statements)."""

    user: str
    roles: tuple[str, ...]
    start: dt.datetime
    customers: int
    rows: int
    statements: int


class Volume(NamedTuple):
    """One employee's ledger in a window: distinct subjects and tickets, sums, time span."""

    user: str
    roles: tuple[str, ...]  # every role any of her entries named
    customers: int
    products: int  # distinct subjects of any other kind
    tickets: int
    statements: int
    rows: int
    first: dt.datetime | None  # the earliest entry's time (``ts``: its last statement)
    last: dt.datetime | None


class Reach(NamedTuple):
    """One subject's ledger in a window: how many employees read it, how much."""

    subject: str
    readers: int
    statements: int
    rows: int


class Cell(NamedTuple):
    """One employee's ledger in one period of ``seconds`` (by the entries' time, ``ts``)."""

    user: str
    start: dt.datetime
    customers: int
    rows: int
    statements: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One ledger entry about a subject: who, when, under which ticket, what, how much."""

    first: dt.datetime | None
    last: dt.datetime | None
    user: str | None
    roles: tuple[str, ...]
    ticket: str | None
    ticket_kind: str | None
    tables: tuple[str, ...]
    columns: tuple[str, ...]
    statements: int
    rows: int
    fingerprint: str | None
    #: when its ticket had closed, if it was read after that (accessguard.investigate.closings)
    ticket_closed: dt.datetime | None = None

    @classmethod
    def of_row(cls, row: Sequence[Any]) -> Entry:
        """An entry from an engine's row: first, last, user, roles, ticket, kind, tables,
        columns, statements, rows, fingerprint (DuckDB's and PostgreSQL's alike)."""
        f, last, u, roles, t, k, tables, cols, st, rw, fp = row
        return cls(
            first=utc(f),
            last=utc(last),
            user=u,
            roles=tuple(sorted(strs(roles))),
            ticket=t,
            ticket_kind=k,
            tables=strs(tables),
            columns=strs(cols),
            statements=st,
            rows=rw,
            fingerprint=fp,
        )

    @classmethod
    def of_event(cls, event: Mapping[str, Any]) -> Entry:
        """An entry from a ledger event as the trail holds it (the in-Python path's)."""

        def count(value: object) -> int:
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        def texts(value: object) -> tuple[str, ...]:
            return tuple(str(v) for v in value) if isinstance(value, list) else ()

        def text(value: object) -> str | None:
            return None if value is None else str(value)

        last = event_time(event)
        return cls(
            first=parse_time(event.get("accessguard.first")) or last,
            last=last,
            user=text(event.get("user.name")),
            roles=tuple(sorted(texts(event.get("user.roles")))),
            ticket=text(event.get("accessguard.ticket.id")),
            ticket_kind=text(event.get("accessguard.ticket.kind")),
            tables=texts(event.get("accessguard.tables")),
            columns=texts(event.get("accessguard.columns")),
            statements=count(event.get("accessguard.statements")),
            rows=count(event.get("accessguard.rows")),
            fingerprint=text(event.get("accessguard.fingerprint")),
        )

    def as_dict(self) -> dict[str, Any]:
        return json_ready(self)


class Engine(Protocol):
    """Where the questions run: the trail's DuckDB index, or the PostgreSQL sink."""

    #: said in the output: which engine answered
    name: str

    def by_subject(self, scope: str, subject: str, window: Window) -> Iterable[Group]: ...

    def by_user(self, user: str, window: Window) -> Iterable[Group]: ...

    def entries(self, scope: str, subject: str, window: Window) -> Iterator[Entry]: ...

    def buckets(self, window: Window, unit: str = "hour") -> Iterable[Bucket]: ...

    # the report's figures (accessguard.investigate.report_engine)
    def volumes(self, window: Window) -> Iterable[Volume]: ...

    def reach(self, scope: str, window: Window) -> Iterable[Reach]: ...

    def readers_of(
        self, scope: str, subjects: Sequence[str], window: Window
    ) -> Iterable[tuple[str, str]]: ...

    def timeline(self, window: Window, seconds: int) -> Iterable[Cell]: ...

    def by_tickets(self, tickets: Sequence[str], kind: str | None) -> Iterable[Group]:
        """Every ledger group of these tickets, or of a ticket kind ``kind`` or ``kind.*``
        (None: of these tickets only)."""
        ...

    def others(self) -> Iterator[dict[str, Any]]:
        """Every event that is not a ledger entry, in trail order (a small fraction)."""
        ...

    def lifecycle(self, tickets: Collection[str]) -> Iterator[dict[str, Any]]:
        """The ticket lifecycle events (``ticket.*``) of ``tickets``, in trail order."""
        ...

    def refusals_of(self, scope: str, subject: str, window: Window) -> Iterator[dict[str, Any]]:
        """The refusals (denied, throttled) whose statement named ``subject`` of ``scope``
        (``accessguard.subjects``), in trail order; at least those (``who_tried`` checks)."""
        ...

    def close(self) -> None: ...


def _fold(sums: Sums, group: Group) -> Sums:
    """Fold one engine group into ``sums`` (the same sums the in-Python path keeps)."""
    sums.fold(
        statements=group.statements,
        rows=group.rows,
        columns=group.columns,
        tables=group.tables,
        roles=group.roles,
        first=utc(group.first),
        last=utc(group.last),
    )
    return sums


def utc(when: dt.datetime | None) -> dt.datetime | None:
    if when is None:
        return None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def utc_at(when: dt.datetime) -> dt.datetime:
    """``when`` in UTC (a naive time is taken as UTC)."""
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def strs(value: object) -> tuple[str, ...]:
    """A JSON array's elements as ``investigate`` reads them (``str`` of each); else ()."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return ()
    return tuple(str(v) for v in value) if isinstance(value, list | tuple) else ()


def subject_of(text: str) -> Subject:
    """A subject id as ``investigate`` keys it: an int when it is digits, else the pseudonym."""
    return int(text) if text.isdigit() and len(text) <= _MAX_ID_DIGITS else text


def readers(groups: Iterable[Group], *, customer: Subject, scope: str) -> list[Reader]:
    """``investigate.who_read``'s answer from an engine's groups."""
    sums: dict[ReaderKey, Sums] = {}
    for group in groups:
        key = (str(group.user), group.ticket, group.ticket_kind)
        _fold(sums.setdefault(key, Sums()), group)
    return reader_rows(sums, scope=scope, customer=customer)


def touches(groups: Iterable[Group], *, user: str) -> list[Touch]:
    """``investigate.what_read``'s answer from an engine's groups."""
    sums: dict[TouchKey, Sums] = {}
    for group in groups:
        key = (str(group.scope), subject_of(group.subject), group.ticket, group.ticket_kind)
        _fold(sums.setdefault(key, Sums()), group)
    return touch_rows(sums, user=user)
