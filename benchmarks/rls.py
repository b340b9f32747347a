"""PostgreSQL row-level security for the side-by-side benchmark: the scenario, with policies.

The superuser bypasses RLS, so the RLS contenders log in as two roles made for
the run (trust auth on 127.0.0.1 lets a login role in without a password):

- ``<db>_customer``: policies ``USING (customer_id = current_setting('app.customer')::bigint)``
  (``id`` on customers): the application tells the database which customer the
  request is about, and nothing else is checked.
- ``<db>_ticket``: policies that join ``tickets``: a row is visible only while
  the employee in ``app.employee`` holds the ticket in ``app.ticket``, open,
  of kind ``order_issue``, for the row's customer (what accessguard checks for
  alice on T-100; customers may also be read on an ``account_recovery``
  ticket). The ticket role may read ``tickets`` (the policy's subquery runs
  with the caller's rights).

Both roles get column privileges matching support_agent's columns (so
``payments.card_token`` is refused by PostgreSQL, as accessguard refuses it).
The policies live in a copy of the scenario database (``<db>_rls``), so the
raw and accessguard contenders read tables without RLS enabled. Roles are
cluster-wide: their names carry the database name, and they are dropped with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

#: (table, the column that holds the customer, support_agent's readable columns)
SCOPED = (
    ("customers", "id", ("id", "name", "email", "phone", "address")),
    ("orders", "customer_id", ("id", "customer_id", "status", "total_cents", "created_at")),
    ("payments", "customer_id", ("id", "order_id", "customer_id", "amount_cents", "card_last4")),
)
#: ticket kinds that open a table's rows (shared/scenario.md)
KINDS = {"customers": ("order_issue", "account_recovery")}
DEFAULT_KINDS = ("order_issue",)

SET_CUSTOMER = "SELECT set_config('app.customer', %s, false)"
SET_TICKET = "SELECT set_config('app.employee', %s, false), set_config('app.ticket', %s, false)"


@dataclass(frozen=True, slots=True, kw_only=True)
class RlsDatabase:
    """Where the RLS contenders connect: the copy's DSN for each role."""

    dbname: str
    customer_dsn: str
    ticket_dsn: str
    customer_role: str
    ticket_role: str


def _policy_sql(
    table: str, column: str, *, customer_role: str, ticket_role: str
) -> list[sql.SQL | sql.Composed]:
    """ENABLE RLS on ``table`` and its two policies (one per role)."""
    t, c = sql.Identifier(table), sql.Identifier(column)
    kinds = sql.SQL(", ").join(sql.Literal(k) for k in KINDS.get(table, DEFAULT_KINDS))
    return [
        sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(t),
        sql.SQL(
            "CREATE POLICY by_customer ON {t} FOR SELECT TO {role} "
            "USING ({c} = current_setting('app.customer', true)::bigint)"
        ).format(t=t, c=c, role=sql.Identifier(customer_role)),
        sql.SQL(
            "CREATE POLICY by_ticket ON {t} FOR SELECT TO {role} USING (EXISTS ("
            "SELECT 1 FROM public.tickets AS tk "
            "WHERE tk.id = current_setting('app.ticket', true) "
            "AND tk.assignee = current_setting('app.employee', true) "
            "AND tk.status = 'open' AND tk.kind IN ({kinds}) AND tk.customer_id = {t}.{c}))"
        ).format(t=t, c=c, kinds=kinds, role=sql.Identifier(ticket_role)),
    ]


def _create_role(admin: psycopg.Connection[tuple[object, ...]], role: str) -> None:
    with contextlib.suppress(psycopg.errors.DuplicateObject):
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT").format(
                sql.Identifier(role)
            )
        )


def _drop(admin_dsn: str, dbname: str, roles: tuple[str, ...]) -> None:
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )
        for role in roles:
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@contextlib.contextmanager
def rls_database(admin_dsn: str, template: str, *, keep: bool = False) -> Iterator[RlsDatabase]:
    """Copy ``template`` (the loaded scenario) to ``<template>_rls``, add roles and policies."""
    dbname = f"{template}_rls"
    customer_role, ticket_role = f"{template}_customer", f"{template}_ticket"
    roles = (customer_role, ticket_role)
    _drop(admin_dsn, dbname, roles)
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(dbname), sql.Identifier(template)
            )
        )
        for role in roles:
            _create_role(admin, role)
    dsn = make_conninfo(admin_dsn, dbname=dbname)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for role in roles:
                r = sql.Identifier(role)
                conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(r))
                for table, _column, columns in SCOPED:
                    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
                    conn.execute(
                        sql.SQL("GRANT SELECT ({}) ON {} TO {}").format(
                            cols, sql.Identifier(table), r
                        )
                    )
            conn.execute(
                sql.SQL("GRANT SELECT ON public.tickets TO {}").format(sql.Identifier(ticket_role))
            )
            for table, column, _columns in SCOPED:
                for statement in _policy_sql(
                    table, column, customer_role=customer_role, ticket_role=ticket_role
                ):
                    conn.execute(statement)
            conn.execute("VACUUM (ANALYZE)")
        yield RlsDatabase(
            dbname=dbname,
            customer_dsn=make_conninfo(dsn, user=customer_role),
            ticket_dsn=make_conninfo(dsn, user=ticket_role),
            customer_role=customer_role,
            ticket_role=ticket_role,
        )
    finally:
        if not keep:
            _drop(admin_dsn, dbname, roles)


def connect_customer(
    db: RlsDatabase, customer: int | None
) -> psycopg.Connection[tuple[object, ...]]:
    """An autocommit connection as the customer role; ``customer`` set once if given."""
    conn = psycopg.connect(db.customer_dsn, autocommit=True)
    if customer is not None:
        conn.execute(SET_CUSTOMER, [str(customer)])
    return conn


def connect_ticket(
    db: RlsDatabase, employee: str | None, ticket: str | None
) -> psycopg.Connection[tuple[object, ...]]:
    """An autocommit connection as the ticket role; employee and ticket set once if given."""
    conn = psycopg.connect(db.ticket_dsn, autocommit=True)
    if employee is not None and ticket is not None:
        conn.execute(SET_TICKET, [employee, ticket])
    return conn
