"""Reads after the ticket that allowed them closed (issue 20): the trail's tickets, joined.

The ticket stores write each ticket's life into the trail (``ticket.opened``,
``.assigned``, ``.closed``, ``.reopened``; accessguard.audit.alerts). A ticket
is *closed* from a ``ticket.closed`` event until a ``ticket.reopened`` (or a
new ``ticket.opened``) one. A ledger entry under that ticket whose statements
ran in that span, more than ``grace`` after the closing (a statement in
flight when the ticket closed is no finding), was read after its ticket
closed: a cursor still fetching, a stale session, a cached ticket.

The engines answer who-read and subject-export; this module asks them for
the entries and the lifecycle events (``Engine.others``: the small
non-ledger part of the trail) and joins the two in Python.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from accessguard.investigate.core import Engine, Entry, Window
from accessguard.investigate.sums import ledger_entries, parse_time

__all__ = [
    "GRACE",
    "Closed",
    "LateRead",
    "closed_spans",
    "late",
    "marked",
    "reads_after_close",
    "reads_after_close_in",
    "spans_of",
]

#: the closed_ticket alert's default: a statement in flight at the closing is no finding
GRACE = dt.timedelta(seconds=5)

_OPENING = {"ticket.opened", "ticket.reopened"}


@dataclass(frozen=True, slots=True)
class Closed:
    """One span a ticket was closed: from ``at`` (by ``by``) until ``reopened`` (None: still)."""

    at: dt.datetime
    reopened: dt.datetime | None = None
    by: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LateRead:
    """One ledger entry read after its ticket closed."""

    scope: str
    subject: str
    entry: Entry
    closed: Closed

    def as_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "subject": self.subject,
            "ticket_closed": self.closed.at.isoformat(),
            "closed_by": self.closed.by,
            "seconds_after": round(self.seconds_after, 3),
            **self.entry.as_dict(),
        }

    @property
    def seconds_after(self) -> float:
        """How long after the closing its last statement ran."""
        last = self.entry.last or self.entry.first
        return 0.0 if last is None else (last - self.closed.at).total_seconds()


def closed_spans(engine: Engine, tickets: Collection[str] | None = None) -> dict[str, list[Closed]]:
    """Each ticket's closed spans, in time order (only ``tickets`` when given)."""
    if tickets is None:
        return spans_of(engine.others())
    return spans_of(engine.lifecycle(tickets), tickets) if tickets else {}


def spans_of(
    events: Iterable[Mapping[str, Any]], tickets: Collection[str] | None = None
) -> dict[str, list[Closed]]:
    """``closed_spans`` from events at hand (the lifecycle ones among them)."""
    changes: list[tuple[dt.datetime, str, str, str | None]] = []
    for event in events:
        action = event.get("event.action")
        ticket = event.get("accessguard.ticket.id")
        if not isinstance(action, str) or not action.startswith("ticket."):
            continue
        if not isinstance(ticket, str) or (tickets is not None and ticket not in tickets):
            continue
        when = parse_time(event.get("accessguard.ticket.at")) or parse_time(event.get("@timestamp"))
        if when is None:
            continue
        by = event.get("accessguard.ticket.by")
        changes.append((when, ticket, action, by if isinstance(by, str) else None))
    spans: dict[str, list[Closed]] = {}
    for when, ticket, action, by in sorted(changes, key=lambda c: c[0]):
        found = spans.setdefault(ticket, [])
        if action == "ticket.closed":
            if not found or found[-1].reopened is not None:
                found.append(Closed(when, None, by))
        elif action in _OPENING and found and found[-1].reopened is None:
            found[-1] = replace(found[-1], reopened=when)
    return {t: s for t, s in spans.items() if s}


def late(entry: Entry, spans: list[Closed], grace: dt.timedelta = GRACE) -> Closed | None:
    """The closed span ``entry``'s statements ran in past ``grace``, or None."""
    last = entry.last or entry.first
    first = entry.first or last
    if last is None or first is None:
        return None
    for span in spans:
        if last > span.at + grace and (span.reopened is None or first < span.reopened):
            return span
    return None


def reads_after_close(
    engine: Engine,
    *,
    window: Window,
    customer: str | None = None,
    scope: str = "customer",
    grace: dt.timedelta = GRACE,
) -> list[LateRead]:
    """Every ledger entry read after its ticket closed (about one subject when given)."""
    spans = closed_spans(engine)
    if not spans:
        return []
    if customer is not None:
        subjects = [(scope, customer)]
    else:  # the subjects read under a closed ticket after it first closed
        groups = engine.by_tickets(sorted(spans), None)
        subjects = sorted(
            {
                (g.scope, g.subject)
                for g in groups
                if g.ticket in spans
                and g.last is not None
                and g.scope
                and g.subject is not None
                and g.last > spans[g.ticket][0].at + grace
            }
        )
    pairs = (
        (kind, str(subject), entry)
        for kind, subject in subjects
        for entry in engine.entries(kind, str(subject), window)
    )
    return _late_reads(pairs, spans, grace)


def reads_after_close_in(
    events: Sequence[Mapping[str, Any]],
    *,
    window: Window,
    customer: str | None = None,
    scope: str = "customer",
    grace: dt.timedelta = GRACE,
) -> list[LateRead]:
    """``reads_after_close`` over events at hand (the path without DuckDB)."""
    spans = spans_of(events)
    pairs = (
        (str(e.get("accessguard.subject.kind")), str(e.get("accessguard.subject.id")), entry)
        for e in ledger_entries(events, None)
        if customer is None
        or (
            e.get("accessguard.subject.kind") == scope
            and str(e.get("accessguard.subject.id")) == customer
        )
        if window.holds((entry := Entry.of_event(e)).last)
    )
    return _late_reads(pairs, spans, grace)


def _late_reads(
    pairs: Iterable[tuple[str, str, Entry]], spans: dict[str, list[Closed]], grace: dt.timedelta
) -> list[LateRead]:
    """The entries of (scope, subject, entry) read after their ticket closed, in time order."""
    found = [
        LateRead(scope=scope, subject=subject, entry=entry, closed=closed)
        for scope, subject, entry in pairs
        if (closed := late(entry, spans.get(entry.ticket or "", []), grace)) is not None
    ]
    found.sort(key=lambda r: (r.entry.last or r.closed.at, r.entry.user or "", r.subject))
    return found


def marked(entries: Iterable[Entry], spans: dict[str, list[Closed]]) -> Iterator[Entry]:
    """``entries``, each read after its ticket closed saying when it had closed."""
    for entry in entries:
        closed = late(entry, spans.get(entry.ticket or "", []))
        yield entry if closed is None else replace(entry, ticket_closed=closed.at)
