"""Django 5 patterns that reach a table through another one (issue 16).

Spans across relations, Exists / Subquery over OuterRef, ``__in`` querysets,
select_for_update(of=...), update() across a span. Import after
settings.configure(): the models need the app registry.
"""

from __future__ import annotations

from desk.models import Customer, Order, Payment
from django.db.models import Exists, OuterRef, Subquery, Sum
from patterns_django import mine
from subject import Subject, registry

PATTERNS, pattern = registry()


@pattern("in-queryset")
def in_queryset(_db: object, s: Subject) -> None:
    list(Payment.objects.filter(order__in=mine(s)))


@pattern("exists-child")
def exists_child(_db: object, s: Subject) -> None:
    list(mine(s).annotate(paid=Exists(Payment.objects.filter(order=OuterRef("pk")))))


@pattern("subquery-child")
def subquery_child(_db: object, s: Subject) -> None:
    first = Payment.objects.filter(order=OuterRef("pk")).order_by("id").values("amount_cents")
    list(mine(s).annotate(paid=Subquery(first[:1])))


@pattern("filter-child-field")
def filter_child_field(_db: object, s: Subject) -> None:
    list(mine(s).filter(payments__amount_cents__gt=0))


@pattern("customer-by-order")
def customer_by_order(_db: object, s: Subject) -> None:
    list(Customer.objects.filter(orders__id=s.order))


@pattern("sum-child")
def sum_child(_db: object, s: Subject) -> None:
    list(mine(s).annotate(paid=Sum("payments__amount_cents")))


@pattern("select-related-span")
def select_related_span(_db: object, s: Subject) -> None:
    list(Payment.objects.filter(order__customer_id=s.customer).select_related("order"))


@pattern("select-for-update-of")
def select_for_update_of(_db: object, s: Subject) -> None:
    list(mine(s).select_related("customer").select_for_update(of=("self",)))


@pattern("exclude-span")
def exclude_span(_db: object, s: Subject) -> None:
    list(mine(s).exclude(payments__amount_cents__lt=0))


@pattern("update-span")
def update_span(_db: object, s: Subject) -> None:
    Order.objects.filter(payments__customer_id=s.customer).update(status="refunded")
