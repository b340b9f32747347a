"""What the alert rules remember between flushes, and the alert event they raise.

``Counters``: one ``peer_baseline`` rule's per-employee window (distinct
customers, rows or statements) and each role's closed windows, whose median
is the baseline. ``TicketBook``: when tickets opened, by whom, and when they
closed, for ``ticket_churn`` and ``closed_ticket``. Every map is bounded.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from accessguard.audit.sinks import Event
from accessguard.policy.alerts import Rule

#: at most this many subject and ticket ids in one alert's evidence
EVIDENCE_IDS = 20
#: closed windows a role needs before its median is a baseline
MIN_PEERS = 5
#: tickets remembered (opened, closed): the oldest are forgotten past it
MAX_TICKETS = 200_000
_LEVEL = {"low": "info", "medium": "warning", "high": "warning", "critical": "critical"}


@dataclass(slots=True, kw_only=True)
class Evidence:
    """Why one rule fired: the alert event is built from it, with no row data."""

    rule: Rule
    event: Event
    start: float
    end: float
    count: int
    message: str
    threshold: float | None = None
    baseline: float | None = None
    subjects: list[dict[str, Any]] = field(default_factory=list)
    tickets: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def alert(self) -> Event:
        rule, event = self.rule, self.event
        user = event.get("user.target.name") or event.get("user.name")
        tickets = self.tickets or [t for t in [event.get("accessguard.ticket.id")] if t]
        fields: Event = {
            "@timestamp": _iso(self.end),
            "event.kind": "alert",
            "event.category": ["iam"],
            "event.type": ["indicator"],
            "event.action": "alert",
            "event.outcome": "unknown",
            "log.level": _LEVEL[rule.severity],
            "message": f"{rule.name}: {self.message}",
            "rule.name": rule.name,
            "rule.category": rule.kind,
            "user.name": user,
            "user.roles": list(event.get("user.roles") or []),
            "accessguard.alert.severity": rule.severity,
            "accessguard.alert.window.start": _iso(self.start),
            "accessguard.alert.window.end": _iso(self.end),
            "accessguard.alert.count": self.count,
            "accessguard.alert.threshold": self.threshold,
            "accessguard.alert.baseline": self.baseline,
            "accessguard.subjects": self.subjects[:EVIDENCE_IDS],
            "accessguard.tickets": tickets[:EVIDENCE_IDS],
        }
        if rule.kind == "peer_baseline":
            fields["accessguard.alert.metric"] = rule.metric
        fields.update(self.extra)
        return fields


@dataclass(slots=True)
class _Window:
    bucket: int
    roles: tuple[str, ...]
    subjects: dict[tuple[object, object], None] = field(default_factory=dict)
    tickets: dict[str, None] = field(default_factory=dict)
    total: int = 0
    fired: bool = False


class Counters:
    """One peer_baseline rule: each employee's current window against their role's median."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self._current: dict[str, _Window] = {}
        #: role set -> (window index, value) of closed windows, oldest first
        self._peers: dict[tuple[str, ...], deque[tuple[int, int]]] = {}
        self._medians: dict[tuple[str, ...], float | None] = {}

    def value(self, window: _Window) -> int:
        return len(window.subjects) if self.rule.metric == "distinct_customers" else window.total

    def add(self, event: Event, when: float, found: list[Event]) -> None:
        rule = self.rule
        user = event.get("user.name")
        if not isinstance(user, str):
            return
        bucket = int(when // rule.window)
        window = self._current.get(user)
        if window is None or window.bucket != bucket:
            if window is not None:
                self._close(window)
            roles = tuple(sorted(event.get("user.roles") or ()))
            window = self._current[user] = _Window(bucket, roles)
        kind, subject = event.get("accessguard.subject.kind"), event.get("accessguard.subject.id")
        if rule.metric == "distinct_customers":
            if kind == "customer":
                window.subjects[kind, subject] = None
        elif rule.metric == "rows":
            window.total += int(event.get("accessguard.rows") or 0)
        else:
            window.total += int(event.get("accessguard.statements") or 0)
        ticket = event.get("accessguard.ticket.id")
        if isinstance(ticket, str) and len(window.tickets) < EVIDENCE_IDS:
            window.tickets[ticket] = None
        if window.fired:
            return
        value = self.value(window)
        if value < rule.minimum:
            return
        median = self.median(window.roles)
        if median is None or value <= rule.factor * median:
            return
        window.fired = True
        start = bucket * rule.window
        found.append(
            Evidence(
                rule=rule,
                event=event,
                start=start,
                end=when,
                count=value,
                threshold=max(float(rule.minimum), rule.factor * median),
                baseline=median,
                subjects=[{"kind": k, "id": i} for k, i in window.subjects],
                tickets=list(window.tickets),
                message=(
                    f"{value} {rule.metric.replace('_', ' ')} in a window, "
                    f"{rule.factor:g} x the role's median is {rule.factor * median:g}"
                ),
            ).alert()
        )

    def _close(self, window: _Window) -> None:
        peers = self._peers.setdefault(window.roles, deque())
        peers.append((window.bucket, self.value(window)))
        oldest = window.bucket - self.rule.baseline // self.rule.window
        while peers and peers[0][0] < oldest:
            peers.popleft()
        self._medians.pop(window.roles, None)

    def median(self, roles: tuple[str, ...]) -> float | None:
        """The median of the role's closed windows (None until it has enough of them)."""
        if roles in self._medians:
            return self._medians[roles]
        peers = self._peers.get(roles, ())
        found = statistics.median(v for _, v in peers) if len(peers) >= MIN_PEERS else None
        self._medians[roles] = found
        return found


@dataclass(slots=True)
class _Opened:
    when: float
    assignee: str | None
    self_assigned: bool
    subject: dict[str, Any] | None


class TicketBook:
    """Ticket lifecycles as the trail tells them: for churn and reads after close."""

    def __init__(self) -> None:
        self.opened: OrderedDict[str, _Opened] = OrderedDict()
        self.closed: OrderedDict[str, float] = OrderedDict()
        self.fired: OrderedDict[str, None] = OrderedDict()

    def change(
        self,
        event: Event,
        when: float,
        rules: list[Rule],
        state: dict[str, Any],
        found: list[Event],
    ) -> None:
        action, ticket = event.get("event.action"), event.get("accessguard.ticket.id")
        if not isinstance(ticket, str):
            return
        assignee, by = event.get("accessguard.ticket.assignee"), event.get("accessguard.ticket.by")
        mine = by is not None and by == assignee
        subjects = event.get("accessguard.subjects") or [None]
        if action == "ticket.opened":
            _put(self.opened, ticket, _Opened(when, assignee, mine, subjects[0]))
            self.closed.pop(ticket, None)
        elif action == "ticket.assigned":
            entry = self.opened.get(ticket)
            if entry is None:
                entry = _Opened(when, assignee, mine, subjects[0])
                _put(self.opened, ticket, entry)
            entry.assignee, entry.self_assigned = assignee, mine
        elif action == "ticket.reopened":
            self.closed.pop(ticket, None)
            _put(self.opened, ticket, _Opened(when, assignee, mine, subjects[0]))
        elif action == "ticket.closed":
            _put(self.closed, ticket, when)
            entry = self.opened.pop(ticket, None)
            if entry is not None:
                for rule in rules:
                    self._churn(rule, ticket, entry, event, when, state, found)

    @staticmethod
    def _churn(  # noqa: PLR0913, PLR0917 - one closed ticket against one rule
        rule: Rule,
        ticket: str,
        entry: _Opened,
        event: Event,
        when: float,
        state: dict[str, Any],
        found: list[Event],
    ) -> None:
        if when - entry.when > rule.open_at_most or (
            rule.self_assigned and not entry.self_assigned
        ):
            return
        per_user: dict[object, deque[tuple[float, str, Any]]] = state.setdefault(rule.name, {})
        fired: dict[object, float] = state.setdefault(f"{rule.name}.fired", {})
        recent = per_user.setdefault(entry.assignee, deque())
        recent.append((when, ticket, entry.subject))
        while recent and recent[0][0] <= when - rule.window:
            recent.popleft()
        if len(recent) < rule.count or fired.get(entry.assignee, -math.inf) > when - rule.window:
            return  # once per window while it goes on
        fired[entry.assignee] = when
        found.append(
            Evidence(
                rule=rule,
                event=event,
                start=recent[0][0],
                end=when,
                count=len(recent),
                threshold=rule.count,
                subjects=[s for _, _, s in recent if s],
                tickets=[t for _, t, _ in recent],
                message=(
                    f"{len(recent)} {'self-assigned ' if rule.self_assigned else ''}tickets "
                    f"closed within {rule.open_at_most // 60} minutes of opening"
                ),
            ).alert()
        )

    def after_close(self, rule: Rule, event: Event, when: float, found: list[Event]) -> None:
        ticket = event.get("accessguard.ticket.id")
        closed = self.closed.get(ticket) if isinstance(ticket, str) else None
        if closed is None or when <= closed + rule.grace or ticket in self.fired:
            return
        assert isinstance(ticket, str)  # noqa: S101 - closed is only found by a str
        _put(self.fired, ticket, None)
        found.append(
            Evidence(
                rule=rule,
                event=event,
                start=closed,
                end=when,
                count=int(event.get("accessguard.statements") or 0),
                subjects=[
                    {
                        "kind": event.get("accessguard.subject.kind"),
                        "id": event.get("accessguard.subject.id"),
                    }
                ],
                message=f"read {when - closed:.0f} s after its ticket closed",
                extra={"accessguard.rows": event.get("accessguard.rows")},
            ).alert()
        )


def _put(book: OrderedDict[str, Any], key: str, value: object) -> None:
    book[key] = value
    book.move_to_end(key)
    while len(book) > MAX_TICKETS:
        book.popitem(last=False)


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="microseconds")
