"""SQLAlchemy 2 writes of the support desk: orders.status only (flush, update(), bulk by key).

Each runs for one Subject (see subject.py) in a transaction record_corpus.py rolls back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sa_models import Order
from sqlalchemy import select, update
from subject import Subject, registry

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

PATTERNS, pattern = registry()


@pattern("flush-update-status")
def flush_update(session: Session, s: Subject) -> None:
    order = session.scalars(
        select(Order).where(Order.customer_id == s.customer, Order.id == s.order)
    ).one()
    order.status = "refunded"
    session.flush()


@pattern("flush-update-two")
def flush_update_two(session: Session, s: Subject) -> None:
    orders = session.scalars(
        select(Order).where(Order.customer_id == s.customer).order_by(Order.id)
    ).all()
    orders[0].status = "refunded"
    orders[1].status = "refunded"
    session.flush()


@pattern("update-where-scoped")
def update_scoped(session: Session, s: Subject) -> None:
    stmt = update(Order).where(Order.id == s.order, Order.customer_id == s.customer)
    session.execute(stmt.values(status="refunded"))


@pattern("update-customer-orders")
def update_customer_orders(session: Session, s: Subject) -> None:
    stmt = update(Order).where(Order.customer_id == s.customer, Order.status == "pending")
    session.execute(stmt.values(status="on_hold"))


@pattern("update-synchronize-fetch")
def update_fetch(session: Session, s: Subject) -> None:
    stmt = update(Order).where(Order.customer_id == s.customer).values(status="on_hold")
    session.execute(stmt.execution_options(synchronize_session="fetch"))


@pattern("update-returning")
def update_returning(session: Session, s: Subject) -> None:
    stmt = update(Order).where(Order.id == s.order, Order.customer_id == s.customer)
    session.execute(stmt.values(status="refunded").returning(Order.id, Order.status)).all()


@pattern("bulk-update-by-pk")
def bulk_update_by_pk(session: Session, s: Subject) -> None:
    rows = [{"id": s.orders[0], "status": "refunded"}, {"id": s.orders[1], "status": "refunded"}]
    session.execute(update(Order), rows)
