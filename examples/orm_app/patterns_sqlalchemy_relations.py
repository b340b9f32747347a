"""SQLAlchemy 2 patterns that reach a table through another one (issue 16).

Nested eager loads, IN and correlated subqueries, aliased joins, FOR UPDATE OF,
an UPDATE through a subquery: each binds a table through a relationship to a
table bound to the ticket's customer. Each runs for one Subject (see subject.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sa_models import Customer, Order, Payment
from sqlalchemy import func, select, update
from sqlalchemy.orm import aliased, joinedload
from subject import Subject, registry

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

PATTERNS, pattern = registry()


@pattern("joinedload-nested")
def joinedload_nested(session: Session, s: Subject) -> None:
    nested = joinedload(Customer.orders).joinedload(Order.payments, innerjoin=True)
    stmt = select(Customer).options(nested).where(Customer.id == s.customer)
    session.scalars(stmt).unique().all()


@pattern("in-subquery")
def in_subquery(session: Session, s: Subject) -> None:
    mine = select(Order.id).where(Order.customer_id == s.customer)
    session.scalars(select(Payment).where(Payment.order_id.in_(mine))).all()


@pattern("correlated-count")
def correlated_count(session: Session, s: Subject) -> None:
    n = select(func.count(Payment.id)).where(Payment.order_id == Order.id).scalar_subquery()
    session.execute(select(Order.id, n).where(Order.customer_id == s.customer)).all()


@pattern("aliased-join")
def aliased_join(session: Session, s: Subject) -> None:
    order = aliased(Order)
    stmt = select(Payment.id, order.status).join(order, Payment.order)
    session.execute(stmt.where(Payment.customer_id == s.customer)).all()


@pattern("for-update-of")
def for_update_of(session: Session, s: Subject) -> None:
    stmt = select(Order).join(Order.customer).where(Customer.id == s.customer)
    session.scalars(stmt.with_for_update(of=Order)).all()


@pattern("update-where-in")
def update_where_in(session: Session, s: Subject) -> None:
    paid = select(Payment.order_id).where(Payment.customer_id == s.customer)
    session.execute(update(Order).where(Order.id.in_(paid)).values(status="refunded"))
