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
from dataclasses import dataclass

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


def _floor(when: dt.datetime, size: dt.timedelta) -> dt.datetime:
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


def summarize(  # noqa: PLR0915 - one pass over the events, then assembly
    events: Iterable[Event], *, since: dt.datetime | None, top: int = 20
) -> Summary:
    """Per-employee volume, role medians, outliers, refusals, throttles and watch-list touches."""
    since = aware(since)
    roles: dict[str, set[str]] = defaultdict(set)
    reads: dict[str, Sums] = defaultdict(Sums)
    subjects: dict[str, set[tuple[str, Subject]]] = defaultdict(set)
    tickets: dict[str, set[str]] = defaultdict(set)
    refused: dict[str, Counter[str]] = defaultdict(Counter)
    throttled: Counter[str] = Counter()
    throttled_reason: Counter[str] = Counter()
    throttle_events: list[Incident] = []
    watch: list[Incident] = []
    watched: Counter[str] = Counter()
    per_customer: dict[Subject, Sums] = defaultdict(Sums)
    customer_readers: dict[Subject, set[str]] = defaultdict(set)
    cells: dict[tuple[str, dt.datetime], tuple[set[Subject], list[int]]] = {}
    entries: list[tuple[str, dt.datetime, Event]] = []
    times: list[dt.datetime] = []
    for event in events:
        action, outcome = event.get("event.action"), event.get("accessguard.outcome")
        known = action in {"ledger", "query"} or event.get("accessguard.watch")
        if not known or event.get("user.name") is None or not within(event, since):
            continue
        user = str(event["user.name"])
        roles[user].update(as_strs(event.get("user.roles")))
        when = event_time(event)
        if when is not None:
            times.append(when)
        if event.get("accessguard.watch"):
            watched[user] += 1
            what = f"{event.get('accessguard.subject.kind')} {event.get('accessguard.subject.id')}"
            reason = str(event.get("event.reason") or "read")
            detail = _label(event["accessguard.watch"]) + (
                f": {what}" if action == "ledger" else ""
            )
            watch.append(_incident(event, reason, detail))
        if action == "ledger" and event.get("accessguard.subject.id") is not None:
            reads[user].add(event)
            subject = event_subject(event)
            scope = str(event.get("accessguard.subject.kind"))
            subjects[user].add((scope, subject))
            if event.get("accessguard.ticket.id") is not None:
                tickets[user].add(str(event["accessguard.ticket.id"]))
            if scope == "customer":
                per_customer[subject].add(event)
                customer_readers[subject].add(user)
            if when is not None:
                entries.append((user, when, event))
        elif action == "query" and outcome == "denied":
            refused[user][str(event.get("event.reason"))] += 1
        elif action == "query" and outcome == "throttled":
            reason = str(event.get("event.reason"))
            throttled[user] += 1
            throttled_reason[reason] += 1
            throttle_events.append(
                _incident(event, reason, str(event.get("accessguard.limit", "")))
            )

    start, end = (min(times), max(times)) if times else (None, None)
    size = BUCKETS[-1]
    if start is not None and end is not None:
        span = end - start
        size = next((b for b in BUCKETS if span / b < MAX_BUCKETS), BUCKETS[-1])
    for user, when, event in entries:
        seen, sums = cells.setdefault((user, _floor(when, size)), (set(), [0, 0]))
        if event.get("accessguard.subject.kind") == "customer":
            seen.add(event_subject(event))
        sums[0] += as_int(event.get("accessguard.rows"))
        sums[1] += as_int(event.get("accessguard.statements"))
    buckets: list[dt.datetime] = []
    if start is not None and end is not None:
        cursor, last = _floor(start, size), _floor(end, size)
        while cursor <= last:
            buckets.append(cursor)
            cursor += size

    users = sorted(roles)
    group = {u: role_of(roles[u]) for u in users}
    n_customers = {u: sum(1 for s, _ in subjects[u] if s == "customer") for u in users}
    n_rows = {u: reads[u].rows for u in users}
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
        employees.append(
            Employee(
                user=u,
                role=group[u],
                customers=n_customers[u],
                products=len(subjects[u]) - n_customers[u],
                tickets=len(tickets[u]),
                statements=reads[u].statements,
                rows=n_rows[u],
                refusals=sum(refused[u].values()),
                refusals_by_reason=_ranked(refused[u]),
                throttles=throttled[u],
                watch=watched[u],
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
    readers = sorted(
        per_customer.items(),
        key=lambda kv: (-len(customer_readers[kv[0]]), -kv[1].rows, subject_key(kv[0])),
    )
    all_refused: Counter[str] = Counter()
    for counter in refused.values():
        all_refused.update(counter)
    return Summary(
        since=since,
        start=start,
        end=end,
        statements=sum(a.statements for a in reads.values()),
        rows=sum(a.rows for a in reads.values()),
        customers=len(per_customer),
        refusals=sum(all_refused.values()),
        throttles=sum(throttled.values()),
        employees=tuple(employees),
        roles=role_rows,
        outliers=tuple(e.user for e in employees if e.outlier),
        refusals_by_reason=_ranked(all_refused),
        refusals_by_employee=_ranked(+Counter({u: c.total() for u, c in refused.items()})),
        throttles_by_reason=_ranked(throttled_reason),
        throttle_events=tuple(throttle_events),
        watch=tuple(watch),
        top_customers=tuple(
            Readers(
                customer=c,
                readers=tuple(sorted(customer_readers[c])),
                statements=acc.statements,
                rows=acc.rows,
            )
            for c, acc in readers[:top]
        ),
        bucket=size,
        buckets=tuple(buckets),
        timeline=tuple(
            Bucket(user=u, start=b, customers=len(seen), rows=sums[0], statements=sums[1])
            for (u, b), (seen, sums) in sorted(cells.items())
        ),
    )
