"""Per-employee volume, peers and outliers over the audit trail, for the HTML report.

Outliers (``OUTLIER_RULE``): an employee is flagged "far above peers" when her
distinct customers exceed ``max(3 x baseline, baseline + 10)``, or her rows
exceed ``max(3 x baseline, baseline + 1000)``, where the baseline is the median
of the *other* employees of the same role (or of every other employee when she
has no peer in the period). Leaving her out keeps one heavy reader from
raising her own bar: with alice at 1 customer, mallory at 20 is flagged.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from accessguard.investigate.sums import (
    BUCKETS,
    MAX_BUCKETS,
    Event,
    Subject,
    Sums,
    as_int,
    as_opt,
    as_strs,
    aware,
    event_subject,
    event_time,
    subject_key,
    within,
)

OUTLIER_RULE = (
    "distinct customers > max(3 x baseline, baseline + 10), or rows > max(3 x baseline, "
    "baseline + 1000); baseline = median of the other employees of the same role "
    "(of every other employee when the role has no one else in the period)"
)


Counts = tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Employee:
    """One employee's volume in the period, against the baseline of her peers."""

    user: str
    role: str
    customers: int
    products: int
    tickets: int
    statements: int
    rows: int
    refusals: int
    refusals_by_reason: Counts
    throttles: int
    watch: int
    baseline_customers: float | None
    baseline_rows: float | None
    outlier: bool
    why: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Role:
    """The medians of one role (a peer group) in the period."""

    role: str
    employees: int
    median_customers: float
    median_rows: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Incident:
    """A throttle or a watch-list touch, as one line of the report."""

    time: dt.datetime | None
    user: str
    ticket: str | None
    outcome: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Readers:
    """A customer, and the employees who read it."""

    customer: Subject
    readers: tuple[str, ...]
    statements: int
    rows: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Bucket:
    """What one employee read in one time bucket."""

    user: str
    start: dt.datetime
    customers: int
    rows: int
    statements: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    """Everything ``accessguard.investigate.report`` draws, computed from the events."""

    since: dt.datetime | None
    start: dt.datetime | None
    end: dt.datetime | None
    statements: int
    rows: int
    customers: int
    refusals: int
    throttles: int
    employees: tuple[Employee, ...]
    roles: tuple[Role, ...]
    outliers: tuple[str, ...]
    refusals_by_reason: Counts
    refusals_by_employee: Counts
    throttles_by_reason: Counts
    throttle_events: tuple[Incident, ...]
    watch: tuple[Incident, ...]
    top_customers: tuple[Readers, ...]
    bucket: dt.timedelta
    buckets: tuple[dt.datetime, ...]
    timeline: tuple[Bucket, ...]
    rule: str = OUTLIER_RULE


def role_of(roles: Iterable[str]) -> str:
    """An employee's peer group: her roles other than 'everyone', joined with '+'."""
    return "+".join(sorted(r for r in roles if r != "everyone")) or "everyone"


def _ranked(counter: Counter[str]) -> Counts:
    return tuple(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def _median(values: Sequence[int]) -> float | None:
    return float(statistics.median(values)) if values else None


def _far_above(value: int, baseline: float | None, margin: int) -> bool:
    return baseline is not None and value > max(3 * baseline, baseline + margin)


def floor(when: dt.datetime, size: dt.timedelta) -> dt.datetime:
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return epoch + ((when - epoch) // size) * size


def _label(value: object) -> str:
    if value is True:
        return "watch-list"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def _incident(event: Event, reason: str, detail: str) -> Incident:
    return Incident(
        time=event_time(event),
        user=str(event.get("user.name")),
        ticket=as_opt(event.get("accessguard.ticket.id")),
        outcome=str(event.get("accessguard.outcome")),
        reason=reason,
        detail=detail,
    )


@dataclass(slots=True)
class Reads:
    """One employee's ledger in the period: distinct subjects and tickets, and sums."""

    customers: int = 0
    products: int = 0
    tickets: int = 0
    statements: int = 0
    rows: int = 0


@dataclass(slots=True)
class Tally:
    """What the report counts from events one by one: roles, times, refusals, throttles, watch.

    ``add`` takes any event; ledger entries are summed elsewhere (in Python by
    ``summarize``, or by an engine: accessguard.investigate.report_engine).
    """

    since: dt.datetime | None
    roles: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    refused: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    throttled: Counter[str] = field(default_factory=Counter)
    throttled_reason: Counter[str] = field(default_factory=Counter)
    throttle_events: list[Incident] = field(default_factory=list)
    watch: list[Incident] = field(default_factory=list)
    watched: Counter[str] = field(default_factory=Counter)
    start: dt.datetime | None = None
    end: dt.datetime | None = None

    def seen(self, when: dt.datetime | None) -> None:
        if when is not None:
            self.start = when if self.start is None else min(self.start, when)
            self.end = when if self.end is None else max(self.end, when)

    def add(self, event: Event) -> str | None:
        """Fold in one event; its employee if the report counts it (in the period), else None."""
        action, outcome = event.get("event.action"), event.get("accessguard.outcome")
        known = action in {"ledger", "query"} or event.get("accessguard.watch")
        if not known or event.get("user.name") is None or not within(event, self.since):
            return None
        user = str(event["user.name"])
        self.roles[user].update(as_strs(event.get("user.roles")))
        self.seen(event_time(event))
        if event.get("accessguard.watch"):
            self.watched[user] += 1
            what = f"{event.get('accessguard.subject.kind')} {event.get('accessguard.subject.id')}"
            reason = str(event.get("event.reason") or "read")
            detail = _label(event["accessguard.watch"]) + (
                f": {what}" if action == "ledger" else ""
            )
            self.watch.append(_incident(event, reason, detail))
        if action == "query" and outcome == "denied":
            self.refused[user][str(event.get("event.reason"))] += 1
        elif action == "query" and outcome == "throttled":
            reason = str(event.get("event.reason"))
            self.throttled[user] += 1
            self.throttled_reason[reason] += 1
            self.throttle_events.append(
                _incident(event, reason, str(event.get("accessguard.limit", "")))
            )
        return user


def bucket_size(start: dt.datetime | None, end: dt.datetime | None) -> dt.timedelta:
    """The timeline's period: the first of ``BUCKETS`` giving fewer than ``MAX_BUCKETS``."""
    if start is None or end is None:
        return BUCKETS[-1]
    span = end - start
    return next((b for b in BUCKETS if span / b < MAX_BUCKETS), BUCKETS[-1])


def summarize(events: Iterable[Event], *, since: dt.datetime | None, top: int = 20) -> Summary:
    """Per-employee volume, role medians, outliers, refusals, throttles and watch-list touches."""
    tally = Tally(aware(since))
    reads: dict[str, Sums] = defaultdict(Sums)
    subjects: dict[str, set[tuple[str, Subject]]] = defaultdict(set)
    tickets: dict[str, set[str]] = defaultdict(set)
    per_customer: dict[Subject, Sums] = defaultdict(Sums)
    customer_readers: dict[Subject, set[str]] = defaultdict(set)
    entries: list[tuple[str, dt.datetime, Event]] = []
    for event in events:
        user = tally.add(event)
        if user is None or event.get("event.action") != "ledger":
            continue
        if event.get("accessguard.subject.id") is not None:
            reads[user].add(event)
            subject = event_subject(event)
            scope = str(event.get("accessguard.subject.kind"))
            subjects[user].add((scope, subject))
            if event.get("accessguard.ticket.id") is not None:
                tickets[user].add(str(event["accessguard.ticket.id"]))
            if scope == "customer":
                per_customer[subject].add(event)
                customer_readers[subject].add(user)
            when = event_time(event)
            if when is not None:
                entries.append((user, when, event))

    size = bucket_size(tally.start, tally.end)
    cells: dict[tuple[str, dt.datetime], tuple[set[Subject], list[int]]] = {}
    for user, when, event in entries:
        seen, sums = cells.setdefault((user, floor(when, size)), (set(), [0, 0]))
        if event.get("accessguard.subject.kind") == "customer":
            seen.add(event_subject(event))
        sums[0] += as_int(event.get("accessguard.rows"))
        sums[1] += as_int(event.get("accessguard.statements"))
    per_user = {}
    for user, acc in reads.items():
        n_customers = sum(1 for scope, _ in subjects[user] if scope == "customer")
        per_user[user] = Reads(
            customers=n_customers,
            products=len(subjects[user]) - n_customers,
            tickets=len(tickets[user]),
            statements=acc.statements,
            rows=acc.rows,
        )
    ranked = sorted(
        per_customer.items(),
        key=lambda kv: (-len(customer_readers[kv[0]]), -kv[1].rows, subject_key(kv[0])),
    )
    return assemble(
        tally,
        per_user,
        customers=len(per_customer),
        top_customers=tuple(
            Readers(
                customer=c,
                readers=tuple(sorted(customer_readers[c])),
                statements=acc.statements,
                rows=acc.rows,
            )
            for c, acc in ranked[:top]
        ),
        size=size,
        timeline=tuple(
            Bucket(user=u, start=b, customers=len(seen), rows=sums[0], statements=sums[1])
            for (u, b), (seen, sums) in sorted(cells.items())
        ),
    )


def assemble(  # noqa: PLR0913 - the parts of a summary
    tally: Tally,
    reads: dict[str, Reads],
    *,
    customers: int,
    top_customers: tuple[Readers, ...],
    size: dt.timedelta,
    timeline: tuple[Bucket, ...],
) -> Summary:
    """The summary from the tallied events and each employee's ledger sums."""
    buckets: list[dt.datetime] = []
    if tally.start is not None and tally.end is not None:
        cursor, last = floor(tally.start, size), floor(tally.end, size)
        while cursor <= last:
            buckets.append(cursor)
            cursor += size
    users = sorted(tally.roles)
    group = {u: role_of(tally.roles[u]) for u in users}
    none = Reads()
    n_customers = {u: reads.get(u, none).customers for u in users}
    n_rows = {u: reads.get(u, none).rows for u in users}
    members: dict[str, list[str]] = defaultdict(list)
    for u in users:
        members[group[u]].append(u)
    employees: list[Employee] = []
    for u in users:
        peers = [p for p in members[group[u]] if p != u]
        whom = f"the other {group[u]} employees"
        if not peers:
            peers, whom = [p for p in users if p != u], "every other employee"
        base_c = _median([n_customers[p] for p in peers])
        base_r = _median([n_rows[p] for p in peers])
        why = []
        if _far_above(n_customers[u], base_c, 10):
            why.append(f"{n_customers[u]} distinct customers (median of {whom}: {base_c:g})")
        if _far_above(n_rows[u], base_r, 1000):
            why.append(f"{n_rows[u]:,} rows (median of {whom}: {base_r:g})")
        mine = reads.get(u, none)
        employees.append(
            Employee(
                user=u,
                role=group[u],
                customers=n_customers[u],
                products=mine.products,
                tickets=mine.tickets,
                statements=mine.statements,
                rows=n_rows[u],
                refusals=sum(tally.refused[u].values()),
                refusals_by_reason=_ranked(tally.refused[u]),
                throttles=tally.throttled[u],
                watch=tally.watched[u],
                baseline_customers=base_c,
                baseline_rows=base_r,
                outlier=bool(why),
                why="; ".join(why),
            )
        )
    role_rows = tuple(
        Role(
            role=name,
            employees=len(people),
            median_customers=_median([n_customers[p] for p in people]) or 0.0,
            median_rows=_median([n_rows[p] for p in people]) or 0.0,
        )
        for name, people in sorted(members.items())
    )
    all_refused: Counter[str] = Counter()
    for counter in tally.refused.values():
        all_refused.update(counter)
    return Summary(
        since=tally.since,
        start=tally.start,
        end=tally.end,
        statements=sum(r.statements for r in reads.values()),
        rows=sum(r.rows for r in reads.values()),
        customers=customers,
        refusals=sum(all_refused.values()),
        throttles=sum(tally.throttled.values()),
        employees=tuple(employees),
        roles=role_rows,
        outliers=tuple(e.user for e in employees if e.outlier),
        refusals_by_reason=_ranked(all_refused),
        refusals_by_employee=_ranked(+Counter({u: c.total() for u, c in tally.refused.items()})),
        throttles_by_reason=_ranked(tally.throttled_reason),
        throttle_events=tuple(tally.throttle_events),
        watch=tuple(tally.watch),
        top_customers=top_customers,
        bucket=size,
        buckets=tuple(buckets),
        timeline=timeline,
    )
