"""Questions an investigator asks of the audit trail, answered from its events.

Pure functions over an iterable of event dicts (the JSON-lines audit file, or
rows of the PostgreSQL sink turned into dicts): no I/O, no clock. Ledger
events (``event.action == "ledger"``) say who read which subject under which
ticket and how much; refusal events (``event.action == "query"``, outcome
``denied`` or ``throttled``) say what failed.

- ``who_read``: every employee and ticket that read one customer (or product).
- ``what_read``: every customer (or product) and ticket one employee read.
- ``who_tried``: every employee, ticket and reason refused while naming one
  customer (or product): the statement's bound subjects
  (``accessguard.subjects``), never its literals.
- ``accessguard.investigate.summary.summarize``: per-employee volume, peers, outliers,
  refusals, throttles, watch-list touches and the most-read customers.

Time filters apply to a ledger entry's ``accessguard.last`` (its last
statement), to other events' ``@timestamp``. An event whose time cannot be
read is kept only when there is no time filter.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from accessguard.audit.chain import FROM_ENV, load_key
from accessguard.audit.verification import Verification, verify
from accessguard.durations import EXAMPLES, parse_seconds

Event = Mapping[str, Any]
Subject = int | str  # an id, or its keyed-hash pseudonym

BUCKETS = tuple(dt.timedelta(hours=h) for h in (1, 6, 24, 168))
MAX_BUCKETS = 400
_MAX_ID_DIGITS = 19  # a bigint; a keyed-hash pseudonym has 64 hex digits


def parse_since(text: str) -> dt.timedelta:
    """'30d', '1h', '1 hour', '2 weeks' as a timedelta; ValueError for anything else.

    The same syntax as limits.toml's ``per`` (``accessguard.durations``).
    """
    seconds = parse_seconds(text)
    try:
        return dt.timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"invalid duration {text!r}: too long ({EXAMPLES})") from None


def cutoff(text: str | None, *, now: dt.datetime) -> dt.datetime | None:
    """The ``since`` datetime for a ``--since`` text (None when no text)."""
    if text is None:
        return None
    delta = parse_since(text)
    try:
        return now - delta
    except OverflowError:
        return dt.datetime.min.replace(tzinfo=now.tzinfo or dt.UTC)


def events_from_file(path: str | Path) -> list[dict[str, Any]]:
    """Every event of a JSON-lines audit file (unverified: see ``verified_events``)."""
    from accessguard.audit.sinks import read_events  # (loads structlog: not for the engines)

    return list(read_events(path))


def verified_events(
    path: str | Path, *, key: bytes | str | None = FROM_ENV
) -> tuple[list[dict[str, Any]], Verification]:
    """Every readable event of a JSON-lines trail, and the verdict of verifying it as read.

    The events go on past a broken line; the verdict names it, so an answer
    drawn from a broken trail is never mistaken for one from an intact trail.
    """
    events: list[dict[str, Any]] = []
    result = verify(path, key=load_key(key), collect=events)
    return events, result


# ---------------------------------------------------------------------- rows


def json_ready(row: Any) -> dict[str, Any]:
    """A dataclass row as JSON-ready values (times in ISO 8601, tuples as lists)."""
    out: dict[str, Any] = {}
    for f in fields(row):
        value = getattr(row, f.name)
        if isinstance(value, dt.datetime):
            value = value.isoformat()
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class _Row:
    statements: int
    rows: int
    columns: tuple[str, ...]
    tables: tuple[str, ...]
    first: dt.datetime | None
    last: dt.datetime | None

    def as_dict(self) -> dict[str, Any]:
        return json_ready(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reader(_Row):
    """One employee and ticket that read a subject (``who_read``)."""

    user: str
    roles: tuple[str, ...]
    ticket: str | None
    ticket_kind: str | None
    scope: str
    customer: Subject


@dataclass(frozen=True, slots=True, kw_only=True)
class Touch(_Row):
    """One subject and ticket an employee read (``what_read``)."""

    user: str
    customer: Subject
    scope: str
    ticket: str | None
    ticket_kind: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    """One employee, ticket and reason refused while naming a subject (``who_tried``)."""

    user: str
    roles: tuple[str, ...]
    ticket: str | None
    ticket_kind: str | None
    outcome: str  # denied | throttled
    reason: str
    attempts: int
    columns: tuple[str, ...]
    first: dt.datetime | None
    last: dt.datetime | None
    scope: str
    customer: Subject

    def as_dict(self) -> dict[str, Any]:
        return json_ready(self)


REFUSED = frozenset({"denied", "throttled"})


def names(event: Event, scope: str, subject: Subject) -> bool:
    """Whether a refusal event names ``subject`` (of ``scope``) among its bound subjects."""
    found = event.get("accessguard.subjects")
    if not isinstance(found, list):
        return False
    want = str(subject)
    return any(
        isinstance(item, Mapping) and item.get("kind") == scope and str(item.get("id")) == want
        for item in found
    )


def who_tried(
    events: Iterable[Event], *, customer: Subject, scope: str = "customer"
) -> list[Attempt]:
    """Every (employee, ticket, outcome, reason) refused while naming ``customer``, oldest
    first: how many times, when first and last, which columns were asked for."""
    groups: dict[tuple[str, str | None, str | None, str, str], dict[str, Any]] = {}
    for event in events:
        outcome = event.get("accessguard.outcome")
        if event.get("event.action") == "ledger" or outcome not in REFUSED:
            continue
        if not names(event, scope, customer):
            continue
        key = (
            str(event.get("user.name")),
            as_opt(event.get("accessguard.ticket.id")),
            as_opt(event.get("accessguard.ticket.kind")),
            str(outcome),
            str(event.get("event.reason") or "-"),
        )
        group = groups.setdefault(
            key, {"n": 0, "roles": set(), "columns": set(), "first": None, "last": None}
        )
        group["n"] += 1
        group["roles"].update(_strings(event.get("user.roles")))
        group["columns"].update(_strings(event.get("accessguard.columns")))
        when = parse_time(event.get("@timestamp"))
        if when is not None:
            group["first"] = when if group["first"] is None else min(group["first"], when)
            group["last"] = when if group["last"] is None else max(group["last"], when)
    rows = [
        Attempt(
            user=user,
            roles=tuple(sorted(g["roles"])),
            ticket=ticket,
            ticket_kind=kind,
            outcome=outcome,
            reason=reason,
            attempts=g["n"],
            columns=tuple(sorted(g["columns"])),
            first=g["first"],
            last=g["last"],
            scope=scope,
            customer=customer,
        )
        for (user, ticket, kind, outcome, reason), g in groups.items()
    ]
    return sorted(rows, key=lambda r: (r.first or _NEVER, r.user, r.ticket or "", r.reason))


_NEVER = dt.datetime.min.replace(tzinfo=dt.UTC)


def _strings(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def render_attempts(rows: Sequence[Attempt]) -> str:
    """The refused attempts as a plain-text table (who-read's second part)."""
    return _table(
        [
            {
                "user": r.user,
                "roles": ",".join(x for x in r.roles if x != "everyone") or "-",
                "ticket": r.ticket or "-",
                "kind": r.ticket_kind or "-",
                "outcome": r.outcome,
                "reason": r.reason,
                "attempts": str(r.attempts),
                "first": _when(r.first),
                "last": _when(r.last),
                "columns": ", ".join(r.columns),
            }
            for r in rows
        ],
        right={"attempts"},
    )


def parse_time(value: object) -> dt.datetime | None:
    """An ISO 8601 timestamp as an aware datetime (naive ones are UTC); None if unreadable."""
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def aware(when: dt.datetime | None) -> dt.datetime | None:
    if when is None or when.tzinfo is not None:
        return when
    return when.replace(tzinfo=dt.UTC)


def event_time(event: Event) -> dt.datetime | None:
    """When an event happened: a ledger entry's last statement, else its ``@timestamp``."""
    if event.get("event.action") == "ledger":
        when = parse_time(event.get("accessguard.last"))
        if when is not None:
            return when
    return parse_time(event.get("@timestamp"))


def within(event: Event, since: dt.datetime | None) -> bool:
    if since is None:
        return True
    when = event_time(event)
    return when is not None and when >= since


def ledger_entries(events: Iterable[Event], since: dt.datetime | None) -> Iterator[Event]:
    """The ledger events (with a subject) at or after ``since``."""
    since = aware(since)
    for event in events:
        if (
            event.get("event.action") == "ledger"
            and event.get("accessguard.subject.id") is not None
            and within(event, since)
        ):
            yield event


def as_int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def as_strs(value: object) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list | tuple) else ()


def as_opt(value: object) -> str | None:
    return None if value is None else str(value)


class Sums:
    """Running sums for one group of ledger entries (events here, grouped rows in the engines)."""

    __slots__ = ("columns", "first", "last", "roles", "rows", "statements", "tables")

    def __init__(self) -> None:
        self.statements = self.rows = 0
        self.columns: set[str] = set()
        self.tables: set[str] = set()
        self.roles: set[str] = set()
        self.first: dt.datetime | None = None
        self.last: dt.datetime | None = None

    def add(self, event: Event) -> None:
        """Fold in one ledger event."""
        self.fold(
            statements=as_int(event.get("accessguard.statements")),
            rows=as_int(event.get("accessguard.rows")),
            columns=as_strs(event.get("accessguard.columns")),
            tables=as_strs(event.get("accessguard.tables")),
            roles=as_strs(event.get("user.roles")),
            first=parse_time(event.get("accessguard.first")) or event_time(event),
            last=event_time(event),
        )

    def fold(  # noqa: PLR0913 - one group's figures
        self,
        *,
        statements: int,
        rows: int,
        columns: Iterable[str],
        tables: Iterable[str],
        roles: Iterable[str],
        first: dt.datetime | None,
        last: dt.datetime | None,
    ) -> None:
        """Fold in one group's figures."""
        self.statements += statements
        self.rows += rows
        self.columns.update(columns)
        self.tables.update(tables)
        self.roles.update(roles)
        if first is not None and (self.first is None or first < self.first):
            self.first = first
        if last is not None and (self.last is None or last > self.last):
            self.last = last

    def common(self) -> dict[str, Any]:
        return {
            "statements": self.statements,
            "rows": self.rows,
            "columns": tuple(sorted(self.columns)),
            "tables": tuple(sorted(self.tables)),
            "first": self.first,
            "last": self.last,
        }


def subject_key(subject: Subject) -> tuple[int, int, str]:
    return (0, subject, "") if isinstance(subject, int) else (1, 0, subject)


def event_subject(event: Event) -> Subject:
    """The subject id: an int (also when a sink hands it over as digits), else a pseudonym."""
    value = event["accessguard.subject.id"]
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value)
    return int(text) if text.isdigit() and len(text) <= _MAX_ID_DIGITS else text


def who_read(
    events: Iterable[Event],
    *,
    customer: Subject,
    since: dt.datetime | None,
    scope: str = "customer",
) -> list[Reader]:
    """Every (employee, ticket) that read ``customer`` (a product with ``scope="product"``)."""
    groups: dict[tuple[str, str | None, str | None], Sums] = defaultdict(Sums)
    for event in ledger_entries(events, since):
        if event.get("accessguard.subject.kind") != scope:
            continue
        if str(event["accessguard.subject.id"]) != str(customer):
            continue
        key = (
            str(event.get("user.name")),
            as_opt(event.get("accessguard.ticket.id")),
            as_opt(event.get("accessguard.ticket.kind")),
        )
        groups[key].add(event)
    return reader_rows(groups, scope=scope, customer=customer)


def what_read(events: Iterable[Event], *, user: str, since: dt.datetime | None) -> list[Touch]:
    """Every (customer or product, ticket) that ``user`` read."""
    groups: dict[tuple[str, Subject, str | None, str | None], Sums] = defaultdict(Sums)
    for event in ledger_entries(events, since):
        if event.get("user.name") != user:
            continue
        scope = str(event.get("accessguard.subject.kind"))
        key = (
            scope,
            event_subject(event),
            as_opt(event.get("accessguard.ticket.id")),
            as_opt(event.get("accessguard.ticket.kind")),
        )
        groups[key].add(event)
    return touch_rows(groups, user=user)


#: (employee, ticket, ticket kind): one who-read row
ReaderKey = tuple[str, str | None, str | None]
#: (scope, subject, ticket, ticket kind): one what-read row
TouchKey = tuple[str, Subject, str | None, str | None]


def reader_rows(sums: Mapping[ReaderKey, Sums], *, scope: str, customer: Subject) -> list[Reader]:
    """who-read's rows from sums per (employee, ticket, kind), in their order (every path's)."""
    return [
        Reader(
            user=user,
            roles=tuple(sorted(acc.roles)),
            ticket=ticket,
            ticket_kind=kind,
            scope=scope,
            customer=customer,
            **acc.common(),
        )
        for (user, ticket, kind), acc in sorted(
            sums.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2] or "")
        )
    ]


def touch_rows(sums: Mapping[TouchKey, Sums], *, user: str) -> list[Touch]:
    """what-read's rows from sums per (scope, subject, ticket, kind), in their order."""
    ordered = sorted(
        sums.items(),
        key=lambda kv: (kv[0][0], subject_key(kv[0][1]), kv[0][2] or "", kv[0][3] or ""),
    )
    return [
        Touch(
            user=user,
            customer=subject,
            scope=scope,
            ticket=ticket,
            ticket_kind=kind,
            **acc.common(),
        )
        for (scope, subject, ticket, kind), acc in ordered
    ]


# ---------------------------------------------------------------------- terminal


def _when(value: dt.datetime | None) -> str:
    return "-" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _cells(row: Reader | Touch) -> dict[str, str]:
    head: dict[str, str]
    if isinstance(row, Reader):
        roles = ",".join(r for r in row.roles if r != "everyone") or "-"
        head = {"user": row.user, "roles": roles}
    else:
        head = {"scope": row.scope, "id": str(row.customer)}
    return {
        **head,
        "ticket": row.ticket or "-",
        "kind": row.ticket_kind or "-",
        "statements": str(row.statements),
        "rows": str(row.rows),
        "first": _when(row.first),
        "last": _when(row.last),
        "columns": ", ".join(row.columns),
    }


def render_table(rows: Sequence[Reader] | Sequence[Touch]) -> str:
    """A plain-text table with aligned columns (numbers right-aligned), for a terminal."""
    if not rows:
        return "(no matching accesses)"
    return _table([_cells(r) for r in rows], right={"id", "statements", "rows"})


def _table(cells: Sequence[Mapping[str, str]], *, right: set[str]) -> str:
    heads = list(cells[0])
    widths = {h: max(len(h), *(len(c[h]) for c in cells)) for h in heads}

    def line(values: Mapping[str, str]) -> str:
        parts = [
            values[h].rjust(widths[h]) if h in right else values[h].ljust(widths[h]) for h in heads
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * widths[h] for h in heads)
    return "\n".join([line({h: h.upper() for h in heads}), rule, *(line(c) for c in cells)])
