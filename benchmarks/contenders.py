"""The side-by-side contenders: one way each of reading customer 42's data as alice on T-100.

Every contender has its own connection, so its own server backend: the RLS
ones log in as the roles of ``benchmarks.rls`` on the RLS copy, the others as
the superuser on the plain scenario database. A contender turns a workload
into a ``Step`` (or None when it has nothing to offer for it).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import psycopg

from accessguard import Guard
from benchmarks import rls
from benchmarks.environment import Bench
from benchmarks.statements import JOIN, POINT, VARYING_SQL
from benchmarks.timing import Step
from benchmarks.workloads import _sent, _sent_varying

USER, TICKET, CUSTOMER = "alice", "T-100", 42


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """A statement every contender sends: fixed text with bound parameters, or a new literal."""

    name: str
    label: str
    sql: str
    params: tuple[int, ...] | None
    count: int  #: iterations per round in a default run
    varying: bool = False

    def text(self, i: int) -> str:
        return self.sql.format(n=1_000_000 + i) if self.varying else self.sql

    def literal(self, i: int) -> str:
        """The text with its (integer) parameters inlined: what a text-only checker sees."""
        text = self.text(i)
        for value in self.params or ():
            text = text.replace("%s", str(int(value)), 1)
        return text


WORKLOADS = (
    Workload(
        name="point_lookup_param",
        label="point lookup, bound parameter",
        sql=POINT,
        params=(CUSTOMER,),
        count=2000,
    ),
    Workload(
        name="point_lookup_literal",
        label="point lookup, new literal",
        sql=VARYING_SQL,
        params=None,
        count=1000,
        varying=True,
    ),
    Workload(
        name="three_table_join",
        label="three-table join",
        sql=JOIN,
        params=(CUSTOMER, CUSTOMER, CUSTOMER),
        count=1500,
    ),
)

#: sql-data-guard's configuration: support_agent's columns, every scoped table bound to 42
SDG_CONFIG: dict[str, Any] = {
    "tables": [
        {
            "table_name": table,
            "columns": list(columns),
            "restrictions": [{"column": column, "value": CUSTOMER}],
        }
        for table, column, columns in rls.SCOPED
    ]
}


def sql_data_guard() -> Callable[..., dict[str, Any]] | None:
    """sql-data-guard's ``verify_sql``, or None when it is not installed."""
    try:
        module = importlib.import_module("sql_data_guard")
    except ImportError:
        return None
    verify: Callable[..., dict[str, Any]] = module.verify_sql
    return verify


@dataclass(frozen=True, slots=True, kw_only=True)
class Contender:
    name: str
    label: str
    checks: str  #: what it enforces, for the README
    make: Callable[[Workload], Step | None]


def plain(conn: Any, w: Workload) -> Step:
    """Execute and fetch the workload's statement on ``conn``."""
    if w.varying:

        def varying(i: int) -> object:
            return conn.execute(w.text(i)).fetchall()

        return varying
    query, params = w.sql, list(w.params or ())

    def fixed(_i: int) -> object:
        return conn.execute(query, params).fetchall()

    return fixed


def per_request(conn: Any, setter: str, values: list[str], w: Workload) -> Step:
    """Set the request's context with ``setter`` (its own round trip), then run the statement."""
    inner = plain(conn, w)

    def step(i: int) -> object:
        conn.execute(setter, values)
        return inner(i)

    return step


def checked_by_sdg(conn: Any, verify: Callable[..., dict[str, Any]], w: Workload) -> Step:
    """sql-data-guard verifies the literal text (its repair if it offers one); that text runs."""

    def step(i: int) -> object:
        text = w.literal(i)
        verdict = verify(text, SDG_CONFIG, "postgres")
        if not verdict["allowed"]:
            if verdict["fixed"] is None:
                raise RuntimeError(f"sql-data-guard refuses {w.name}")
            text = verdict["fixed"]
        return conn.execute(text).fetchall()

    return step


def accessguard_sql(bench: Bench, w: Workload) -> Step | None:
    """Raw psycopg sending the SQL accessguard sends (its rewrite), on its own backend."""
    if w.varying:
        found = _sent_varying(bench)
    else:
        found = _sent(bench, w.sql, list(w.params or ()), USER, TICKET)
    return None if found is None else found[0]


CHECKS = {
    "raw": "nothing (superuser, no RLS)",
    "rls_session": "the row's customer against app.customer, set once when the connection "
    "opens; every RLS role also has column privileges on support_agent's columns only",
    "rls_request": "the same policy; app.customer set by its own statement before each request",
    "rls_ticket": "the row's customer against an open order_issue ticket held by app.employee "
    "(app.employee and app.ticket set once per connection; the ticket's state read "
    "by the policy on every statement)",
    "rls_ticket_request": "the ticket policy, with app.employee and app.ticket set before each "
    "request (its own statement)",
    "sql_data_guard": "tables, columns and a customer_id = 42 restriction on the literal text "
    "(parse + checks every statement, no cache); the text it approved is sent",
    "accessguard": "statement kind, tables, columns, functions against the Casbin policy and "
    "alice's open ticket T-100 (looked up per statement), row scope rewritten to "
    "customer 42, access ledger",
    "accessguard_sql": "nothing: raw psycopg sending accessguard's rewritten SQL (what the "
    "rewrite costs the server)",
}
LABELS = {
    "raw": "raw psycopg",
    "rls_session": "RLS, context per session",
    "rls_request": "RLS + set_config per request",
    "rls_ticket": "RLS bound to the open ticket",
    "rls_ticket_request": "RLS ticket + set_config per request",
    "sql_data_guard": "sql-data-guard",
    "accessguard": "accessguard",
    "accessguard_sql": "raw sending accessguard's SQL",
}
ORDER = tuple(LABELS)


@contextlib.contextmanager
def opened(
    *, dsn: str, db: rls.RlsDatabase, guard: Guard, tmp: Path, names: tuple[str, ...] = ORDER
) -> Iterator[list[Contender]]:
    """Open every contender's own connection; close them all on leaving. raw comes first."""
    verify = sql_data_guard()
    with contextlib.ExitStack() as stack:

        def own() -> psycopg.Connection[tuple[object, ...]]:
            return stack.enter_context(psycopg.connect(dsn, autocommit=True))

        def makes(name: str) -> Callable[[Workload], Step | None] | None:
            if name == "raw":
                return partial(plain, own())
            if name == "rls_session":
                return partial(plain, stack.enter_context(rls.connect_customer(db, CUSTOMER)))
            if name == "rls_request":
                conn = stack.enter_context(rls.connect_customer(db, None))
                return partial(per_request, conn, rls.SET_CUSTOMER, [str(CUSTOMER)])
            if name == "rls_ticket":
                return partial(plain, stack.enter_context(rls.connect_ticket(db, USER, TICKET)))
            if name == "rls_ticket_request":
                conn = stack.enter_context(rls.connect_ticket(db, None, None))
                return partial(per_request, conn, rls.SET_TICKET, [USER, TICKET])
            if name == "sql_data_guard":
                return None if verify is None else partial(checked_by_sdg, own(), verify)
            if name == "accessguard":
                return partial(plain, guard.wrap(own(), user=USER, ticket=TICKET))
            if name == "accessguard_sql":
                bench = Bench(dsn=dsn, guard=guard, raw=own(), tmp=tmp, quick=True, rounds=1)
                return partial(accessguard_sql, bench)
            raise ValueError(f"unknown contender {name!r}; known: {', '.join(ORDER)}")

        out = []
        for name in ("raw", *(n for n in names if n != "raw")):
            make = makes(name)
            if make is not None:
                out.append(Contender(name=name, label=LABELS[name], checks=CHECKS[name], make=make))
        yield out
