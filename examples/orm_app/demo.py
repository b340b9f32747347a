"""The support desk through the guard: SQLAlchemy 2 and Django 5, alice on ticket T-100.

Needs a PostgreSQL server; the scenario's tables are (re)loaded into the
database named by ACCESSGUARD_DSN (created if missing):

    ACCESSGUARD_DSN=postgresql://postgres@127.0.0.1:5432/accessguard_example \\
        python examples/orm_app/demo.py
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sa_models import Customer, Order
from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import Session

from accessguard import AccessGuardError, Guard, scenario

DSN = os.environ.get("ACCESSGUARD_DSN", "postgresql://postgres@127.0.0.1:5432/accessguard_example")
AUDIT = Path(tempfile.gettempdir()) / "accessguard-orm-app-audit.jsonl"


def prepare(dsn: str) -> None:
    """Create the database if missing and (re)load the reference scenario into it."""
    name = str(conninfo_to_dict(dsn)["dbname"])
    with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(dsn) as conn:
        scenario.load_postgres(conn)


def with_sqlalchemy(guard: Guard) -> None:
    engine = create_engine(DSN.replace("postgresql://", "postgresql+psycopg://", 1))
    guard.instrument(engine)
    with guard.acting_as(user="alice", ticket="T-100"), Session(engine) as session:
        customer = session.get(Customer, 42)
        print("sqlalchemy allowed:", customer.name, [(o.id, o.status) for o in customer.orders])
        session.execute(
            update(Order).where(Order.customer_id == 42, Order.id == 422).values(status="on_hold")
        )
        try:
            session.scalars(select(Order).where(Order.customer_id == 43)).all()
        except AccessGuardError as exc:
            print("sqlalchemy refused:", exc.reason, "-", exc)
        session.rollback()
    engine.dispose()


def with_django(guard: Guard) -> None:
    import settings

    settings.configure(DSN)
    from desk.models import Customer, Order

    from accessguard.adapters.django import guarded

    with guarded(guard=guard, user="alice", ticket="T-100"):
        customer = Customer.objects.get(pk=42)
        statuses = list(Order.objects.filter(customer=customer).values_list("id", "status"))
        print("django allowed:", customer.name, statuses)
        try:
            Customer.objects.get(pk=43)
        except AccessGuardError as exc:
            print("django refused:", exc.reason, "-", exc)


def main() -> None:
    prepare(DSN)
    with Guard.from_directory(
        scenario.policies_dir(), tickets=scenario.tickets(), audit=AUDIT
    ) as guard:
        with_sqlalchemy(guard)
        with_django(guard)
    print("audit trail:", AUDIT)


if __name__ == "__main__":
    main()
