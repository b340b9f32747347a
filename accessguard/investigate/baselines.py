"""Per-employee baselines against role peers: per active hour and per active day.

An engine (``Engine.buckets``: DuckDB over the trail's index, SQL over the
PostgreSQL sink) sums the ledger into one row per (employee, role set, hour
or day): distinct customers, rows, statements. Only those rows reach Python
(a month of 60 employees is a few thousand), where each employee's median
hour (distinct customers, rows) and median day (distinct customers) is set
against the median of everyone with the same roles. ``Collector`` builds the
same rows from events in Python, for the report and for tests.

Periods are those of each entry's first statement (``accessguard.first``),
the time the alert rules count by; a period with no ledger entry is not
counted (a baseline of active periods, so a part-time peer does not lower it).
An employee at ``factor`` times the peers' median or more on any measure is
an outlier: the hour catches a steady bulk or heavy reader, the day one who
works through many customers in bursts (a ticket churner).
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from accessguard.investigate.core import Bucket, utc

#: an employee whose median hour is at least this many times the peers' is singled out
FACTOR = 3.0
#: a ticket closed within this many seconds of opening is a short one (the churn tell)
SHORT_TICKET = 20 * 60


@dataclass(slots=True)
class Alerts:
    """The alerts one rule raised about one employee: how many, first and last, latest evidence."""

    rule: str
    user: str
    count: int
    first: str
    last: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Baseline:
    """One employee's typical hour and day, and their role peers'."""

    user: str
    roles: tuple[str, ...]
    hours: int
    days: int
    customers_per_hour: float
    rows_per_hour: float
    customers_per_day: float
    peak_customers: int
    peak_rows: int
    peers: int
    peers_customers_per_hour: float
    peers_rows_per_hour: float
    peers_customers_per_day: float
    customers_ratio: float | None
    rows_ratio: float | None
    day_ratio: float | None
    outlier: bool


def baselines(
    hours: Iterable[Bucket], days: Iterable[Bucket] = (), *, factor: float = FACTOR
) -> list[Baseline]:
    """Each employee against the employees with the same roles, outliers first."""
    mine, peers, role_of = _group(hours)
    my_days, peer_days, _ = _group(days)
    found = []
    for user, own in mine.items():
        group = peers[role_of[user]]
        own_days = my_days.get(user, [])
        group_days = peer_days.get(role_of[user], [])
        customers = _median(h.customers for h in own)
        rows = _median(h.rows for h in own)
        per_day = _median(d.customers for d in own_days)
        peer_customers = _median(h.customers for h in group)
        peer_rows = _median(h.rows for h in group)
        peer_day = _median(d.customers for d in group_days)
        ratios = (
            _ratio(customers, peer_customers),
            _ratio(rows, peer_rows),
            _ratio(per_day, peer_day),
        )
        found.append(
            Baseline(
                user=user,
                roles=role_of[user],
                hours=len(own),
                days=len(own_days),
                customers_per_hour=customers,
                rows_per_hour=rows,
                customers_per_day=per_day,
                peak_customers=max(h.customers for h in own),
                peak_rows=max(h.rows for h in own),
                peers=len({h.user for h in group}),
                peers_customers_per_hour=peer_customers,
                peers_rows_per_hour=peer_rows,
                peers_customers_per_day=peer_day,
                customers_ratio=ratios[0],
                rows_ratio=ratios[1],
                day_ratio=ratios[2],
                outlier=any(r is not None and r >= factor for r in ratios),
            )
        )
    return sorted(
        found,
        key=lambda b: (
            not b.outlier,
            -max(b.customers_ratio or 0, b.rows_ratio or 0, b.day_ratio or 0),
            b.user,
        ),
    )


def _group(
    buckets: Iterable[Bucket],
) -> tuple[
    dict[str, list[Bucket]], dict[tuple[str, ...], list[Bucket]], dict[str, tuple[str, ...]]
]:
    mine: dict[str, list[Bucket]] = {}
    peers: dict[tuple[str, ...], list[Bucket]] = {}
    role_of: dict[str, tuple[str, ...]] = {}
    for bucket in buckets:
        mine.setdefault(bucket.user, []).append(bucket)
        peers.setdefault(bucket.roles, []).append(bucket)
        role_of[bucket.user] = bucket.roles  # the latest role set seen (a sorted key)
    return mine, peers, role_of


def _median(values: Iterable[int]) -> float:
    found = list(values)
    return float(statistics.median(found)) if found else 0.0


def _ratio(mine: float, peers: float) -> float | None:
    return round(mine / peers, 2) if peers else None


class Collector:
    """The same hourly rows as the engines', from events in Python (``watch`` passes them on)."""

    def __init__(self, since: dt.datetime | None = None) -> None:
        self._since = since
        #: the latest alert events, and per employee the short tickets they assigned themselves
        self.alerts: dict[tuple[str, str], Alerts] = {}
        self.short_tickets: Counter[str] = Counter()
        self.closed_tickets: Counter[str] = Counter()
        self._opened: dict[str, tuple[dt.datetime, bool]] = {}
        #: per unit, the ledger's buckets as an engine summed them (``buckets`` returns those)
        self.given: dict[str, list[Bucket]] = {}
        #: (unit, employee, roles, start) -> (customers, [rows, statements])
        self._cells: dict[
            tuple[str, str, tuple[str, ...], dt.datetime], tuple[set[str], list[int]]
        ] = {}

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
        hour = when.replace(minute=0, second=0, microsecond=0)
        customer = event.get("accessguard.subject.kind") == "customer"
        rows, statements = (
            _int(event.get("accessguard.rows")),
            _int(event.get("accessguard.statements")),
        )
        for key in (("hour", user, roles, hour), ("day", user, roles, hour.replace(hour=0))):
            subjects, sums = self._cells.setdefault(key, (set(), [0, 0]))
            if customer:
                subjects.add(str(event.get("accessguard.subject.id")))
            sums[0] += rows
            sums[1] += statements

    def _other(self, action: str, event: Mapping[str, Any]) -> None:
        when = _first(event)
        if when is None or (self._since is not None and when < self._since):
            return
        if action == "alert":
            rule, user = str(event.get("rule.name")), str(event.get("user.name"))
            stamp, message = str(event.get("@timestamp", "")), str(event.get("message", ""))
            seen = self.alerts.get((rule, user))
            if seen is None:
                self.alerts[rule, user] = Alerts(rule, user, 1, stamp, stamp, message)
            else:
                seen.count += 1
                seen.first, seen.last = min(seen.first, stamp), max(seen.last, stamp)
                seen.message = message if stamp >= seen.last else seen.message
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

    def buckets(self, unit: str = "hour") -> list[Bucket]:
        """The rows ``Engine.buckets`` returns for the same events (or those it was given)."""
        if unit in self.given:
            return sorted(self.given[unit])
        return sorted(
            Bucket(user, roles, start, len(subjects), rows, statements)
            for (kind, user, roles, start), (subjects, (rows, statements)) in self._cells.items()
            if kind == unit
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
