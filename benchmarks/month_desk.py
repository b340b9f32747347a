"""The month's desk: runs the plan through the guard and keeps the ground truth."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from typing import Any

from accessguard import AccessGuardError, Guard
from accessguard.adapters.psycopg3 import authorize_statement
from accessguard.audit.sinks import AuditSink, Event
from accessguard.engine.lane import Session
from accessguard.tickets.stores import MemoryTicketStore, Ticket
from benchmarks.month_plan import (
    BULK,
    INSIDERS,
    PRODUCTS,
    REFUSED,
    START,
    TEMPLATES,
    UNSCOPED,
    Plan,
)


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


class Truth:
    """What the month really was: every (employee, ticket, subject) read, refusals, tickets."""

    def __init__(self) -> None:
        self.reads: dict[tuple[str, str, str, str, int], dict[str, Any]] = {}
        self.refused: dict[str, int] = {}
        self.tickets: dict[str, dict[str, Any]] = {}
        self.allowed = self.scoped = self.statements = 0
        #: insider -> when they first acted as one
        self.acted: dict[str, float] = {}

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

    def act(self, name: str, when: float) -> None:
        """An insider did what makes them one (the first time is kept)."""
        self.acted.setdefault(name, when)

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
            "acted": {n: iso(t) for n, t in sorted(self.acted.items())},
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
                ),
                by=name if own else "dispatch",
                at=action[0],
            )
            if own:
                self.truth.act(name, action[0])
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
                ),
                by=name,
                at=action[0],
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
            if bulk or name == INSIDERS["heavy_reader"]:
                self.truth.act(name, action[0])
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
