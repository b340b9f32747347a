"""SQLAlchemy 2 ORM: guard.instrument(engine); each request binds its employee with acting_as.

Needs a PostgreSQL server; the scenario's tables are (re)created in the
database named by ACCESSGUARD_DSN (created if missing):

    ACCESSGUARD_DSN=postgresql://postgres@127.0.0.1:5432/accessguard_example \\
        python examples/sqlalchemy_orm.py
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy import BigInteger, ForeignKey, Text, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from accessguard import AccessGuardError, Guard, scenario

DSN = os.environ.get("ACCESSGUARD_DSN", "postgresql://postgres@127.0.0.1:5432/accessguard_example")
AUDIT = Path(tempfile.gettempdir()) / "accessguard-example-audit.jsonl"


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str | None] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(Text)
    orders: Mapped[list[Order]] = relationship(back_populates="customer", order_by="Order.id")


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    status: Mapped[str | None] = mapped_column(Text)
    customer: Mapped[Customer] = relationship(back_populates="orders")


def prepare(dsn: str) -> None:
    """Create the database if missing and load the reference scenario into it."""
    name = str(conninfo_to_dict(dsn)["dbname"])
    with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(dsn) as conn:
        scenario.load_postgres(conn)


def main() -> None:
    prepare(DSN)
    engine = create_engine(DSN.replace("postgresql://", "postgresql+psycopg://", 1))
    with Guard.from_directory(
        scenario.policies_dir(), tickets=scenario.tickets(), audit=AUDIT
    ) as guard:
        guard.instrument(engine)
        with guard.acting_as(user="alice", ticket="T-100"), Session(engine) as session:
            customer = session.scalars(select(Customer).where(Customer.id == 42)).one()
            print("allowed:", customer.name, [(o.id, o.status) for o in customer.orders])
            try:
                session.scalars(select(Customer).where(Customer.id == 7)).all()
            except AccessGuardError as exc:
                print("refused:", exc)
        try:
            with Session(engine) as session:  # nobody bound: never let through
                session.get(Customer, 42)
        except AccessGuardError as exc:
            print("refused:", exc)
    engine.dispose()
    print("audit trail:", AUDIT)


if __name__ == "__main__":
    main()
