"""SQLAlchemy 2 with ``MetaData(schema="public")``: schema-qualified tables and columns.

The same support-desk reads and status update as patterns_sqlalchemy.py, on
models declared the way apps that name their schema declare them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, ForeignKey, MetaData, Text, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, joinedload, mapped_column, relationship
from subject import Subject, registry

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

PATTERNS, pattern = registry()


class PublicBase(DeclarativeBase):
    metadata = MetaData(schema="public")


class PublicCustomer(PublicBase):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str | None] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(Text)
    orders: Mapped[list[PublicOrder]] = relationship(order_by="PublicOrder.id")


class PublicOrder(PublicBase):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("public.customers.id"))
    status: Mapped[str | None] = mapped_column(Text)


@pattern("public-select")
def public_select(session: Session, s: Subject) -> None:
    stmt = select(PublicOrder).where(PublicOrder.customer_id == s.customer)
    session.scalars(stmt.order_by(PublicOrder.id)).all()


@pattern("public-get-customer")
def public_get_customer(session: Session, s: Subject) -> None:
    session.get(PublicCustomer, s.customer)


@pattern("public-joinedload")
def public_joinedload(session: Session, s: Subject) -> None:
    stmt = select(PublicCustomer).options(joinedload(PublicCustomer.orders))
    session.scalars(stmt.where(PublicCustomer.id == s.customer)).unique().all()


@pattern("public-count")
def public_count(session: Session, s: Subject) -> None:
    stmt = select(func.count(PublicOrder.id)).where(PublicOrder.customer_id == s.customer)
    session.scalar(stmt)


@pattern("public-flush-update")
def public_flush_update(session: Session, s: Subject) -> None:
    order = session.scalars(
        select(PublicOrder).where(PublicOrder.customer_id == s.customer, PublicOrder.id == s.order)
    ).one()
    order.status = "refunded"
    session.flush()
