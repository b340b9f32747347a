"""SQLAlchemy 2 ORM patterns of the support desk, each run for one Subject (see subject.py).

Every function is what a support-desk view would do for the ticket's customer;
record_corpus.py records the SQL each one sends. Writes touch orders.status only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sa_models import Customer, Order, Payment
from sqlalchemy import (
    Numeric,
    and_,
    case,
    cast,
    exists,
    extract,
    func,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import (
    contains_eager,
    defer,
    joinedload,
    load_only,
    selectinload,
    subqueryload,
    with_parent,
)
from subject import Subject, registry

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

PATTERNS, pattern = registry()


# ---------------------------------------------------------------- lookups


@pattern("get-customer")
def get_customer(session: Session, s: Subject) -> None:
    session.get(Customer, s.customer)


@pattern("get-order-by-pk")
def get_order(session: Session, s: Subject) -> None:
    session.get(Order, s.order)


@pattern("get-payment-by-pk")
def get_payment(session: Session, s: Subject) -> None:
    session.get(Payment, s.order)


@pattern("refresh-order")
def refresh_order(session: Session, s: Subject) -> None:
    order = session.scalars(select(Order).where(Order.customer_id == s.customer)).first()
    session.refresh(order)


@pattern("select-customer")
def select_customer(session: Session, s: Subject) -> None:
    session.scalars(select(Customer).where(Customer.id == s.customer)).one()


@pattern("filter-by")
def filter_by(session: Session, s: Subject) -> None:
    session.scalars(select(Order).filter_by(customer_id=s.customer)).all()


@pattern("filter-status")
def filter_status(session: Session, s: Subject) -> None:
    stmt = select(Order).where(Order.customer_id == s.customer, Order.status != "cancelled")
    session.scalars(stmt.order_by(Order.id)).all()


@pattern("filter-or")
def filter_or(session: Session, s: Subject) -> None:
    either = or_(Order.status == "pending", Order.status == "shipped")
    session.scalars(select(Order).where(Order.customer_id == s.customer, either)).all()


@pattern("filter-in")
def filter_in(session: Session, s: Subject) -> None:
    stmt = select(Order).where(Order.customer_id == s.customer, Order.id.in_(s.orders[:2]))
    session.scalars(stmt).all()


@pattern("columns")
def columns(session: Session, s: Subject) -> None:
    session.execute(select(Order.id, Order.status).where(Order.customer_id == s.customer)).all()


@pattern("mappings")
def mappings(session: Session, s: Subject) -> None:
    stmt = select(Customer.name, Customer.email).where(Customer.id == s.customer)
    session.execute(stmt).mappings().all()


@pattern("payments-of-customer")
def payments_of_customer(session: Session, s: Subject) -> None:
    session.scalars(select(Payment).where(Payment.customer_id == s.customer)).all()


@pattern("ilike")
def ilike(session: Session, s: Subject) -> None:
    stmt = select(Customer).where(Customer.id == s.customer, Customer.email.ilike("%@mail.example"))
    session.scalars(stmt).all()


@pattern("date-range")
def date_range(session: Session, s: Subject) -> None:
    stmt = select(Order).where(Order.customer_id == s.customer, Order.created_at >= s.since)
    session.scalars(stmt).all()


@pattern("load-only")
def load_only_status(session: Session, s: Subject) -> None:
    stmt = select(Order).options(load_only(Order.status)).where(Order.customer_id == s.customer)
    session.scalars(stmt).all()


@pattern("defer")
def defer_created(session: Session, s: Subject) -> None:
    stmt = select(Order).options(defer(Order.created_at)).where(Order.customer_id == s.customer)
    session.scalars(stmt).all()


# ---------------------------------------------------------------- relationships


@pattern("lazy-customer-orders")
def lazy_customer_orders(session: Session, s: Subject) -> None:
    customer = session.scalars(select(Customer).where(Customer.id == s.customer)).one()
    _ = customer.orders


@pattern("lazy-order-payments")
def lazy_order_payments(session: Session, s: Subject) -> None:
    order = session.scalars(
        select(Order).where(Order.customer_id == s.customer, Order.id == s.order)
    ).one()
    _ = order.payments


@pattern("lazy-payment-order")
def lazy_payment_order(session: Session, s: Subject) -> None:
    payment = session.scalars(
        select(Payment).where(Payment.customer_id == s.customer, Payment.id == s.order)
    ).one()
    _ = payment.order


@pattern("joinedload-orders")
def joinedload_orders(session: Session, s: Subject) -> None:
    stmt = select(Customer).options(joinedload(Customer.orders)).where(Customer.id == s.customer)
    session.scalars(stmt).unique().all()


@pattern("joinedload-customer")
def joinedload_customer(session: Session, s: Subject) -> None:
    stmt = select(Order).options(joinedload(Order.customer)).where(Order.customer_id == s.customer)
    session.scalars(stmt).all()


@pattern("joinedload-innerjoin")
def joinedload_innerjoin(session: Session, s: Subject) -> None:
    stmt = select(Order).options(joinedload(Order.customer, innerjoin=True))
    session.scalars(stmt.where(Order.customer_id == s.customer)).all()


@pattern("joinedload-payments")
def joinedload_payments(session: Session, s: Subject) -> None:
    stmt = select(Order).options(joinedload(Order.payments)).where(Order.customer_id == s.customer)
    session.scalars(stmt).unique().all()


@pattern("selectinload-orders")
def selectinload_orders(session: Session, s: Subject) -> None:
    stmt = select(Customer).options(selectinload(Customer.orders)).where(Customer.id == s.customer)
    session.scalars(stmt).all()


@pattern("selectinload-payments")
def selectinload_payments(session: Session, s: Subject) -> None:
    stmt = select(Order).options(selectinload(Order.payments))
    session.scalars(stmt.where(Order.customer_id == s.customer)).all()


@pattern("subqueryload-orders")
def subqueryload_orders(session: Session, s: Subject) -> None:
    stmt = select(Customer).options(subqueryload(Customer.orders)).where(Customer.id == s.customer)
    session.scalars(stmt).all()


@pattern("subqueryload-payments")
def subqueryload_payments(session: Session, s: Subject) -> None:
    stmt = select(Order).options(subqueryload(Order.payments))
    session.scalars(stmt.where(Order.customer_id == s.customer)).all()


@pattern("contains-eager")
def contains_eager_customer(session: Session, s: Subject) -> None:
    stmt = select(Order).join(Order.customer).options(contains_eager(Order.customer))
    session.scalars(stmt.where(Customer.id == s.customer)).all()


@pattern("outerjoin")
def outerjoin(session: Session, s: Subject) -> None:
    stmt = select(Customer.name, Order.id).outerjoin(Order, Order.customer_id == Customer.id)
    session.execute(stmt.where(Customer.id == s.customer)).all()


@pattern("outerjoin-scope-in-on")
def outerjoin_scoped(session: Session, s: Subject) -> None:
    on = and_(Order.customer_id == Customer.id, Order.customer_id == s.customer)
    stmt = select(Customer.name, Order.id).outerjoin(Order, on).where(Customer.id == s.customer)
    session.execute(stmt).all()


@pattern("outerjoin-payments")
def outerjoin_payments(session: Session, s: Subject) -> None:
    stmt = select(Order.id, Payment.amount_cents).outerjoin(Order.payments)
    session.execute(stmt.where(Order.customer_id == s.customer)).all()


@pattern("join-parent-bound")
def join_parent_bound(session: Session, s: Subject) -> None:
    stmt = select(Order.id, Payment.card_last4).join(Payment, Payment.order_id == Order.id)
    session.execute(stmt.where(Order.customer_id == s.customer)).all()


@pattern("join-both-bound")
def join_both_bound(session: Session, s: Subject) -> None:
    stmt = select(Order.id, Payment.card_last4).join(Order.payments)
    stmt = stmt.where(Order.customer_id == s.customer, Payment.customer_id == s.customer)
    session.execute(stmt).all()


@pattern("join-relationship")
def join_relationship(session: Session, s: Subject) -> None:
    stmt = select(Payment).join(Payment.order).where(Order.customer_id == s.customer)
    session.scalars(stmt).all()


@pattern("any")
def any_order(session: Session, s: Subject) -> None:
    stmt = select(Customer).where(
        Customer.id == s.customer, Customer.orders.any(Order.status == "pending")
    )
    session.scalars(stmt).all()


@pattern("has")
def has_order(session: Session, s: Subject) -> None:
    stmt = select(Payment).where(
        Payment.customer_id == s.customer, Payment.order.has(Order.status == "shipped")
    )
    session.scalars(stmt).all()


# ---------------------------------------------------------------- aggregates and shapes


@pattern("count")
def count(session: Session, s: Subject) -> None:
    session.scalar(select(func.count()).select_from(Order).where(Order.customer_id == s.customer))


@pattern("count-subquery")
def count_subquery(session: Session, s: Subject) -> None:
    inner = select(Order).where(Order.customer_id == s.customer).subquery()
    session.scalar(select(func.count()).select_from(inner))


@pattern("legacy-query-count")
def legacy_count(session: Session, s: Subject) -> None:
    session.query(Order).filter(Order.customer_id == s.customer).count()


@pattern("legacy-query-first")
def legacy_first(session: Session, s: Subject) -> None:
    session.query(Order).filter(Order.customer_id == s.customer).order_by(Order.id).first()


@pattern("sum")
def total(session: Session, s: Subject) -> None:
    session.scalar(select(func.sum(Order.total_cents)).where(Order.customer_id == s.customer))


@pattern("group-by")
def group_by(session: Session, s: Subject) -> None:
    stmt = select(Order.status, func.count(Order.id)).where(Order.customer_id == s.customer)
    session.execute(stmt.group_by(Order.status).having(func.count(Order.id) > 0)).all()


@pattern("exists")
def exists_pending(session: Session, s: Subject) -> None:
    cond = exists().where(Order.customer_id == s.customer, Order.status == "pending")
    session.scalar(select(cond))


@pattern("scalar-subquery")
def scalar_subquery(session: Session, s: Subject) -> None:
    n = select(func.count(Order.id)).where(Order.customer_id == Customer.id).scalar_subquery()
    session.execute(select(Customer.name, n).where(Customer.id == s.customer)).all()


@pattern("order-limit-offset")
def order_limit_offset(session: Session, s: Subject) -> None:
    stmt = select(Order).where(Order.customer_id == s.customer)
    session.scalars(stmt.order_by(Order.created_at.desc()).limit(2).offset(1)).all()


@pattern("distinct")
def distinct(session: Session, s: Subject) -> None:
    stmt = select(Order.status).distinct().where(Order.customer_id == s.customer)
    session.scalars(stmt).all()


@pattern("union")
def union(session: Session, s: Subject) -> None:
    mine = select(Order.id).where(Order.customer_id == s.customer)
    stmt = mine.where(Order.status == "pending").union(mine.where(Order.status == "shipped"))
    session.execute(stmt).all()


@pattern("cte")
def cte(session: Session, s: Subject) -> None:
    recent = select(Order.id, Order.status).where(Order.customer_id == s.customer).cte("recent")
    session.execute(select(recent.c.id).where(recent.c.status != "cancelled")).all()


@pattern("window")
def window(session: Session, s: Subject) -> None:
    rank = func.row_number().over(order_by=Order.created_at)
    session.execute(select(Order.id, rank).where(Order.customer_id == s.customer)).all()


@pattern("case")
def case_when(session: Session, s: Subject) -> None:
    open_ = case((Order.status.in_(["pending", "shipped"]), 1), else_=0)
    session.execute(select(Order.id, open_).where(Order.customer_id == s.customer)).all()


@pattern("functions-math")
def functions_math(session: Session, s: Subject) -> None:
    cents = Order.total_cents
    cols = (func.power(cents, 2), func.sqrt(cents), func.round(cast(cents, Numeric) / 100, 2))
    session.execute(select(Order.id, *cols).where(Order.customer_id == s.customer)).all()


@pattern("functions-text")
def functions_text(session: Session, s: Subject) -> None:
    cols = (
        func.format("%s <%s>", Customer.name, Customer.email),
        func.lower(Customer.email),
        func.coalesce(Customer.phone, "n/a"),
        func.concat(Customer.name, " ", Customer.address),
    )
    session.execute(select(*cols).where(Customer.id == s.customer)).all()


@pattern("functions-date")
def functions_date(session: Session, s: Subject) -> None:
    cols = (func.date_trunc("day", Order.created_at), extract("year", Order.created_at))
    session.execute(select(Order.id, *cols).where(Order.customer_id == s.customer)).all()


@pattern("json-arrow")
def json_arrow(session: Session, s: Subject) -> None:
    doc = cast(func.json_build_object("status", Order.status), JSONB)
    stmt = select(Order.id, doc["status"].astext).where(Order.customer_id == s.customer)
    session.execute(stmt).all()


@pattern("relationship-compare")
def relationship_compare(session: Session, s: Subject) -> None:
    customer = session.get(Customer, s.customer)
    session.scalars(select(Order).where(Order.customer == customer)).all()


@pattern("with-parent")
def with_parent_orders(session: Session, s: Subject) -> None:
    customer = session.get(Customer, s.customer)
    session.scalars(select(Order).where(with_parent(customer, Customer.orders))).all()


@pattern("get-with-options")
def get_with_options(session: Session, s: Subject) -> None:
    session.get(Customer, s.customer, options=[selectinload(Customer.orders)])


@pattern("for-update")
def for_update(session: Session, s: Subject) -> None:
    stmt = select(Order).where(Order.customer_id == s.customer, Order.id == s.order)
    session.scalars(stmt.with_for_update()).one()
