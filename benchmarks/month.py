"""A month of one support desk, driven through the real guard, with planted insiders (issue 20).

Every statement goes through ``accessguard.adapters.psycopg3.authorize_statement``
on the employee's lane, the path a guarded psycopg connection takes: the real
policy files (the scenario's, plus the generated employees), the real ticket
store (tickets opened, assigned and closed as the month goes), the real volume
limits on a simulated clock, the real ledger and the real sinks (a JSON-lines
trail and, with ``--dsn``, the PostgreSQL sink). Only the database is left
out: the rows a statement returns are drawn by the generator and handed to the
ledger (``tally.add``) as a cursor would, and a result over the row cap is
refused through ``guard.over_row_cap`` as the adapter does.

The clock is simulated: statements run in time order across employees, the
ledger is flushed at every second boundary (its one-second interval), and
the sinks receive the events in batches (same events, same chain).

Planted insiders (names in the ground truth): a bulk reader (hundreds of
rows per read, some over the cap), a heavy reader (four times the statements
of their peers), a canary toucher (reads the canary customer under tickets
they assign themselves) and a churner (hundreds of self-assigned tickets,
each open about 11 minutes, reading contact details).

    python -m benchmarks.month --out /tmp/month --statements 2100000 \\
        --dsn postgresql://postgres@127.0.0.1:5432/ag_month

writes OUT/trail.jsonl, OUT/ground_truth.json and OUT/policies/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import heapq
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accessguard import AccessGuardError, Guard, scenario
from accessguard.adapters.psycopg3 import authorize_statement
from accessguard.audit.sinks import AuditSink, Event, JsonlSink
from accessguard.engine.lane import Session
from accessguard.tickets.stores import MemoryTicketStore, Ticket

START = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
CANARY = 150  # the scenario's canary customer (policies/watchlist.toml)
CUSTOMERS = range(1000, 21000)
PRODUCTS = range(1, 2001)
#: (sql, tables, columns, rows range) per ticket kind; %s is the ticket's subject
TEMPLATES: dict[str, list[tuple[str, tuple[str, ...], tuple[str, ...], tuple[int, int]]]] = {
    "order_issue": [
        (
            "SELECT id, name, email FROM customers WHERE id = %s",
            ("customers",),
            ("customers.email", "customers.id", "customers.name"),
            (1, 1),
        ),
        (
            "SELECT id, status, total_cents FROM orders WHERE customer_id = %s",
            ("orders",),
            ("orders.customer_id", "orders.id", "orders.status", "orders.total_cents"),
            (1, 12),
        ),
        (
            "SELECT id, amount_cents, card_last4 FROM payments WHERE customer_id = %s",
            ("payments",),
            ("payments.amount_cents", "payments.card_last4", "payments.customer_id", "payments.id"),
            (1, 8),
        ),
    ],
    "review_abuse": [
        (
            "SELECT id, rating, body FROM reviews WHERE product_id = %s",
            ("reviews",),
            ("reviews.body", "reviews.id", "reviews.product_id", "reviews.rating"),
            (1, 40),
        ),
    ],
    "account_recovery": [
        (
            "SELECT customer_id, banned, reason FROM account_flags WHERE customer_id = %s",
            ("account_flags",),
            ("account_flags.banned", "account_flags.customer_id", "account_flags.reason"),
            (1, 1),
        ),
        (
            "SELECT id, name FROM customers WHERE id = %s",
            ("customers",),
            ("customers.id", "customers.name"),
            (1, 1),
        ),
    ],
}
CONTACT = (
    "SELECT id, name, email, phone FROM customers WHERE id = %s",
    ("customers",),
    ("customers.email", "customers.id", "customers.name", "customers.phone"),
    (1, 1),
)
BULK = (*TEMPLATES["order_issue"][1][:3], (150, 490))
REFUSED = ("SELECT card_token FROM payments WHERE customer_id = %s", "SELECT name FROM customers")
UNSCOPED = (
    "SELECT product_id, units FROM sales_metrics WHERE day = %s",
    "SELECT title, price_cents FROM products WHERE id = %s",
)
ROLE_KIND = {
    "support_agent": "order_issue",
    "trust_safety": "review_abuse",
    "account_specialist": "account_recovery",
}
INSIDERS = {
    "bulk_reader": "agent02",
    "heavy_reader": "agent03",
    "canary_toucher": "agent04",
    "ticket_churner": "agent05",
}


@dataclass(slots=True)
class Clock:
    now: float = START.timestamp()

    def utc(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.now, dt.UTC)


class Batches:
    """A sink that hands events on in large batches (the same events, chained by each sink)."""

    def __init__(self, sinks: list[AuditSink], size: int = 5000) -> None:
        self.sinks, self.size, self.count = sinks, size, 0
        self.held: list[Event] = []

    def write(self, events: list[Event]) -> None:
        self.held.extend(events)
        if len(self.held) >= self.size:
            self.drain()

    def drain(self) -> None:
        batch, self.held = self.held, []
        self.count += len(batch)
        for sink in self.sinks:
            sink.write([dict(e) for e in batch])


def employees(n: int) -> dict[str, str]:
    """Employee name -> role: mostly support agents, the insiders among them."""
    roles = {}
    for i in range(n):
        share = i / n
        if share < 0.7:
            roles[f"agent{i + 1:02d}"] = "support_agent"
        elif share < 0.82:
            roles[f"tns{i + 1:02d}"] = "trust_safety"
        elif share < 0.93:
            roles[f"acct{i + 1:02d}"] = "account_specialist"
        else:
            roles[f"analyst{i + 1:02d}"] = "analyst"
    return roles


def policy_dir(out: Path, roles: dict[str, str]) -> Path:
    target = out / "policies"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(scenario.policies_dir(), target)
    with (target / "policy.csv").open("a", encoding="utf-8") as fh:
        fh.write("\n# generated employees (benchmarks/month.py)\n")
        fh.writelines(f"g, {name}, {role}\n" for name, role in roles.items())
    return target


@dataclass(slots=True)
class Plan:
    """The month's shape: statement rate and the insiders' doses."""

    days: int
    gap: float  # mean seconds between one employee's statements
    churn: int  # the churner's self-assigned tickets
    canary: int  # the canary toucher's reads of the canary, about
    refuse_every: int = 1500
    seed: int = 7


def timeline(i: int, name: str, role: str, plan: Plan) -> Iterator[tuple[Any, ...]]:
    """One employee's month as (time, employee index, n, action, ...), in time order."""
    rng = random.Random(plan.seed * 1000 + i)
    gap = plan.gap / (4 if name == INSIDERS["heavy_reader"] else 1)
    n = 0
    for day in range(plan.days):
        t = (START + dt.timedelta(days=day, hours=8)).timestamp() + rng.uniform(0, 1800)
        end = (START + dt.timedelta(days=day, hours=18)).timestamp()
        if role == "analyst":
            while t < end:
                t += rng.expovariate(1 / gap)
                n += 1
                yield (t, i, n, "free", f"2026-11-{1 + rng.randrange(28):02d}")
            continue
        kind = ROLE_KIND[role]
        own = _own_tickets(name, day, plan)
        while t < end:
            if own:
                subject, minutes = own.pop()
                template, duration, step = CONTACT, minutes * 60.0, 60.0
            else:
                space = PRODUCTS if kind == "review_abuse" else CUSTOMERS
                subject = space[rng.randrange(len(space))]
                template, duration, step = None, rng.uniform(2, 8) * 3600, gap
            ticket = f"T-{i + 1:02d}-{n:06d}"
            n += 1
            yield (t, i, n, "open", ticket, kind, subject, template is not None)
            stop = min(t + duration, end)
            while (t := t + rng.expovariate(1 / step)) < stop:
                n += 1
                yield (t, i, n, "read", ticket, template, subject)
            n += 1
            yield (stop, i, n, "close", ticket)
            if rng.random() < 0.5:  # a stale tab reads once more after the ticket closed
                n += 1
                yield (stop + 5, i, n, "read", ticket, template, subject)
            t += rng.uniform(60, 900)


def _own_tickets(name: str, day: int, plan: Plan) -> list[tuple[int, int]]:
    """(subject, minutes open) of the tickets an insider assigns themselves on ``day``."""

    def share(total: int) -> int:
        return total // plan.days + (1 if day < total % plan.days else 0)

    if name == INSIDERS["ticket_churner"]:
        rng = random.Random(plan.seed * 7919 + day)
        return [(CUSTOMERS[rng.randrange(len(CUSTOMERS))], 11) for _ in range(share(plan.churn))]
    if name == INSIDERS["canary_toucher"] and share(plan.canary):
        return [(CANARY, share(plan.canary))]  # about one read a minute
    return []


class Truth:
    """What the month really was: every (employee, ticket, subject) read, refusals, tickets."""

    def __init__(self) -> None:
        self.reads: dict[tuple[str, str, str, str, int], dict[str, Any]] = {}
        self.refused: dict[str, int] = {}
        self.tickets: dict[str, dict[str, Any]] = {}
        self.allowed = self.scoped = self.statements = 0

    def read(
        self, key: tuple[str, str, str, str, int], template: tuple[Any, ...], rows: int, when: float
    ) -> None:
        entry = self.reads.get(key)
        if entry is None:
            entry = self.reads[key] = {
                "statements": 0,
                "rows": 0,
                "columns": set(),
                "tables": set(),
                "first": when,
                "last": when,
            }
        entry["statements"] += 1
        entry["rows"] += rows
        entry["columns"].update(template[2])
        entry["tables"].update(template[1])
        entry["first"], entry["last"] = min(entry["first"], when), max(entry["last"], when)

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def as_json(self, roles: dict[str, str]) -> dict[str, Any]:
        def iso(ts: float) -> str:
            return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()

        reads = [
            {
                "user": u,
                "roles": sorted({roles[u], "everyone"}),
                "ticket": t,
                "ticket_kind": k,
                "scope": s,
                "subject": i,
                "statements": e["statements"],
                "rows": e["rows"],
                "columns": sorted(e["columns"]),
                "tables": sorted(e["tables"]),
                "first": iso(e["first"]),
                "last": iso(e["last"]),
            }
            for (u, t, k, s, i), e in sorted(self.reads.items())
        ]
        return {
            "statements": self.statements,
            "allowed": self.allowed,
            "allowed_on_customer_data": self.scoped,
            "refused": dict(sorted(self.refused.items())),
            "insiders": INSIDERS,
            "employees": roles,
            "tickets": list(self.tickets.values()),
            "reads": reads,
        }


class Desk:
    """Runs the timeline through the guard and keeps the truth."""

    def __init__(self, guard: Guard, store: MemoryTicketStore, plan: Plan) -> None:
        self.guard, self.store, self.plan = guard, store, plan
        self.truth = Truth()
        self.rng = random.Random(plan.seed)

    def act(self, action: tuple[Any, ...], window: int, name: str) -> None:
        what = action[3]
        if what == "open":
            ticket_id, kind, subject, own = action[4:8]
            scope = "product" if kind == "review_abuse" else "customer"
            self.store.put(
                Ticket(
                    id=ticket_id,
                    assignee=name,
                    kind=kind,
                    status="open",
                    **{f"{scope}_id": subject},
                )
            )
            self.truth.tickets[ticket_id] = {
                "id": ticket_id,
                "assignee": name,
                "kind": kind,
                "scope": scope,
                "subject": subject,
                "self_assigned": own,
                "opened": action[0],
                "closed": None,
            }
        elif what == "close":
            old = self.store.get(action[4])
            assert old is not None  # noqa: S101 - opened above
            self.store.put(
                Ticket(
                    id=old.id,
                    assignee=old.assignee,
                    kind=old.kind,
                    status="closed",
                    customer_id=old.customer_id,
                    product_id=old.product_id,
                )
            )
            self.truth.tickets[old.id]["closed"] = action[0]
        elif what == "free":
            self.send(name, None, UNSCOPED[0], [action[4]])
        else:
            self.read(action, window, name)

    def read(self, action: tuple[Any, ...], window: int, name: str) -> None:
        ticket_id, template, subject = action[4:7]
        kind = self.truth.tickets[ticket_id]["kind"]
        roll = self.rng.random()
        if roll < 1 / self.plan.refuse_every:
            self.send(name, ticket_id, REFUSED[0], [subject])
            return
        if roll > 0.97:
            self.send(name, ticket_id, UNSCOPED[1], [self.rng.choice(PRODUCTS)])
            return
        if template is None:
            bulk = name == INSIDERS["bulk_reader"] and roll < 0.4
            template = BULK if bulk else self.rng.choice(TEMPLATES[kind])
        ok = self.send(name, ticket_id, template[0], [subject])
        if ok is None or ok.tally is None:
            return
        low, high = template[3]
        rows = self.rng.randint(low, high)
        if template is BULK and self.rng.random() < 0.03:
            rows = self.rng.randint(600, 900)
        self.truth.scoped += 1
        if ok.row_cap is not None and rows > ok.row_cap:
            self.truth.refuse(str(self.guard.over_row_cap(ok, rows).reason))
            rows = 0
        else:
            ok.tally.add(rows)
        scope = "product" if kind == "review_abuse" else "customer"
        self.truth.read((name, ticket_id, kind, scope, subject), template, rows, window + 1)

    def send(self, name: str, ticket: str | None, sql: str, params: list[Any]) -> Any:
        self.truth.statements += 1
        lane = self.guard.lane(Session(user=name, ticket=ticket), "postgres")
        try:
            ok = authorize_statement(lane, sql, params)
        except AccessGuardError as exc:
            self.truth.refuse(str(exc.reason))
            return None
        self.truth.allowed += 1
        return ok


def generate(  # noqa: PLR0913 - keyword-only sizes
    out: Path,
    *,
    statements: int,
    employees_n: int = 60,
    days: int = 30,
    seed: int = 7,
    dsn: str | None = None,
) -> dict[str, Any]:
    """Write OUT/trail.jsonl (and the PostgreSQL sink at ``dsn``); return the ground truth."""
    out.mkdir(parents=True, exist_ok=True)
    roles = employees(employees_n)
    policies = policy_dir(out, roles)
    working = [n for n, r in roles.items() if r != "analyst"]
    per_employee = statements / (len(roles) + 3)  # the heavy reader makes four shares
    scale = statements / 2_100_000
    plan = Plan(
        days=days,
        gap=days * 10 * 3600 * 0.93 / per_employee,
        churn=max(3, round(315 * scale)),
        canary=max(3, round(128 * scale)),
        seed=seed,
    )
    trail = out / "trail.jsonl"
    trail.unlink(missing_ok=True)
    sinks: list[Any] = [JsonlSink(trail, fsync=False)]
    if dsn is not None:
        from accessguard.audit.pgsink import PostgresSink

        pg = PostgresSink(dsn)
        pg.setup()
        sinks.append(pg)
    batches = Batches(sinks)
    clock, store = Clock(), MemoryTicketStore()
    guard = Guard.from_directory(
        policies,
        tickets=store,
        audit=batches,
        clock=clock.utc,
        throttle_clock=lambda: clock.now,
        ledger_interval=1e6,
    )
    desk = Desk(guard, store, plan)
    names = list(roles)
    window: int | None = None
    actions = heapq.merge(*(timeline(i, n, roles[n], plan) for i, n in enumerate(names)))
    for action in actions:
        second = math.floor(action[0])
        if window is not None and second != window:
            clock.now = window + 1  # the ledger's one-second flush, on the simulated clock
            guard.ledger.flush()
        window = second
        clock.now = action[0]
        desk.act(action, second, names[action[1]])
    if window is not None:
        clock.now = window + 1
    guard.close()
    batches.drain()
    for sink in sinks:
        close = getattr(sink, "close", None)
        if close is not None:
            close()
    truth = desk.truth.as_json(roles)
    truth["events"] = batches.count
    truth["params"] = {
        "statements": statements,
        "employees": employees_n,
        "days": days,
        "seed": seed,
        "working": len(working),
        "start": START.isoformat(),
    }
    (out / "ground_truth.json").write_text(json.dumps(truth, indent=1), encoding="utf-8")
    return truth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--statements", type=int, default=2_100_000)
    parser.add_argument("--employees", type=int, default=60)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dsn", help="also write the PostgreSQL sink there")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    truth = generate(
        args.out,
        statements=args.statements,
        employees_n=args.employees,
        days=args.days,
        seed=args.seed,
        dsn=args.dsn,
    )
    took = time.perf_counter() - started
    print(
        json.dumps(
            {
                k: truth[k]
                for k in ("statements", "allowed", "allowed_on_customer_data", "refused", "events")
            },
            indent=1,
        )
    )
    print(
        f"{len(truth['tickets'])} tickets, {len(truth['reads'])} (employee, ticket, subject)"
        f" groups, {took:.0f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
