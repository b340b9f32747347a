"""Per-employee baselines against role peers: distinct customers and rows per active hour.

An engine (``Engine.hourly``: DuckDB over the trail's index, SQL over the
PostgreSQL sink) sums the ledger into one row per (employee, role set, hour):
distinct customers, rows, statements. Only those rows reach Python (a month of
60 employees is a few thousand), where each employee's median hour is set
against the median hour of everyone with the same roles. ``Hourly`` builds
the same rows from events in Python, for the report and for tests.

Hours are those of each entry's first statement (``accessguard.first``), the
time the alert rules count by; an hour with no ledger entry is not counted
(a baseline of active hours, so a part-time peer does not lower it).
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from accessguard.investigations.core import Hourly, utc

#: an employee whose median hour is at least this many times the peers' is singled out
FACTOR = 3.0
#: a ticket closed within this many seconds of opening is a short one (the churn tell)
SHORT_TICKET = 20 * 60
#: alert events kept for the report (the latest)
ALERTS_KEPT = 500


Hour = Hourly


@dataclass(frozen=True, slots=True, kw_only=True)
class Baseline:
    """One employee's typical hour, and their role peers'."""

    user: str
    roles: tuple[str, ...]
    hours: int
    customers_per_hour: float
    rows_per_hour: float
    peak_customers: int
    peak_rows: int
    peers: int
    peers_customers_per_hour: float
    peers_rows_per_hour: float
    customers_ratio: float | None
    rows_ratio: float | None
    outlier: bool


def baselines(hours: Iterable[Hour], *, factor: float = FACTOR) -> list[Baseline]:
    """Each employee against the employees with the same roles, outliers first."""
    mine: dict[str, list[Hour]] = {}
    peers: dict[tuple[str, ...], list[Hour]] = {}
    role_of: dict[str, tuple[str, ...]] = {}
    for hour in hours:
        mine.setdefault(hour.user, []).append(hour)
        peers.setdefault(hour.roles, []).append(hour)
        role_of[hour.user] = hour.roles  # the latest role set seen (a sorted key)
    found = []
    for user, own in mine.items():
        group = peers[role_of[user]]
        customers = statistics.median(h.customers for h in own)
        rows = statistics.median(h.rows for h in own)
        peer_customers = statistics.median(h.customers for h in group)
        peer_rows = statistics.median(h.rows for h in group)
        c_ratio = round(customers / peer_customers, 2) if peer_customers else None
        r_ratio = round(rows / peer_rows, 2) if peer_rows else None
        found.append(
            Baseline(
                user=user,
                roles=role_of[user],
                hours=len(own),
                customers_per_hour=float(customers),
                rows_per_hour=float(rows),
                peak_customers=max(h.customers for h in own),
                peak_rows=max(h.rows for h in own),
                peers=len({h.user for h in group}),
                peers_customers_per_hour=float(peer_customers),
                peers_rows_per_hour=float(peer_rows),
                customers_ratio=c_ratio,
                rows_ratio=r_ratio,
                outlier=any(r is not None and r >= factor for r in (c_ratio, r_ratio)),
            )
        )
    return sorted(
        found,
        key=lambda b: (not b.outlier, -max(b.customers_ratio or 0, b.rows_ratio or 0), b.user),
    )


class Collector:
    """The same hourly rows as the engines', from events in Python (``watch`` passes them on)."""

    def __init__(self, since: dt.datetime | None = None) -> None:
        self._since = since
        #: the latest alert events, and per employee the short tickets they assigned themselves
        self.alerts: deque[Mapping[str, Any]] = deque(maxlen=ALERTS_KEPT)
        self.short_tickets: Counter[str] = Counter()
        self.closed_tickets: Counter[str] = Counter()
        self._opened: dict[str, tuple[dt.datetime, bool]] = {}
        self._cells: dict[tuple[str, tuple[str, ...], dt.datetime], tuple[set[str], list[int]]] = {}

    def add(self, event: Mapping[str, Any]) -> None:
        action = event.get("event.action")
        if action == "alert" or (isinstance(action, str) and action.startswith("ticket.")):
            self._other(action, event)
            return
        if action != "ledger" or event.get("accessguard.subject.id") is None:
            return
        user, when = event.get("user.name"), _first(event)
        if not isinstance(user, str) or when is None:
            return
        if self._since is not None and when < self._since:
            return
        roles = tuple(sorted(str(r) for r in event.get("user.roles") or ()))
        key = (user, roles, when.replace(minute=0, second=0, microsecond=0))
        subjects, sums = self._cells.setdefault(key, (set(), [0, 0]))
        if event.get("accessguard.subject.kind") == "customer":
            subjects.add(str(event.get("accessguard.subject.id")))
        sums[0] += _int(event.get("accessguard.rows"))
        sums[1] += _int(event.get("accessguard.statements"))

    def _other(self, action: str, event: Mapping[str, Any]) -> None:
        when = _first(event)
        if when is None or (self._since is not None and when < self._since):
            return
        if action == "alert":
            self.alerts.append(event)
            return
        ticket, assignee = (
            event.get("accessguard.ticket.id"),
            event.get("accessguard.ticket.assignee"),
        )
        if not isinstance(ticket, str) or not isinstance(assignee, str):
            return
        mine = event.get("accessguard.ticket.by") == assignee
        if action in {"ticket.opened", "ticket.reopened"}:
            self._opened[ticket] = (when, mine)
        elif action == "ticket.assigned" and ticket in self._opened:
            self._opened[ticket] = (self._opened[ticket][0], mine)
        elif action == "ticket.closed":
            self.closed_tickets[assignee] += 1
            opened = self._opened.pop(ticket, None)
            if (
                opened is not None
                and opened[1]
                and (when - opened[0]).total_seconds() <= SHORT_TICKET
            ):
                self.short_tickets[assignee] += 1

    def watch(self, events: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
        """``events``, unchanged, each added on the way."""
        for event in events:
            self.add(event)
            yield event

    def hours(self) -> list[Hour]:
        return sorted(
            Hour(user, roles, hour, len(subjects), rows, statements)
            for (user, roles, hour), (subjects, (rows, statements)) in self._cells.items()
        )


def _first(event: Mapping[str, Any]) -> dt.datetime | None:
    text = event.get("accessguard.first") or event.get("@timestamp")
    if not isinstance(text, str):
        return None
    try:
        return utc(dt.datetime.fromisoformat(text))
    except ValueError:
        return None


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
