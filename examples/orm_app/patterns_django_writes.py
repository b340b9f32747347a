"""Django 5 writes of the support desk: orders.status only (save, update(), bulk_update).

Import after settings.configure(): the models need the app registry.
"""

from __future__ import annotations

from desk.models import Order
from django.db.models import Case, F, TextField, Value, When
from django.db.models.functions import Upper
from patterns_django import mine
from subject import Subject, registry

PATTERNS, pattern = registry()


@pattern("save-update-fields")
def save_update_fields(_db: object, s: Subject) -> None:
    order = Order.objects.get(pk=s.order, customer_id=s.customer)
    order.status = "refunded"
    order.save(update_fields=["status"])


@pattern("queryset-update-pk")
def queryset_update_pk(_db: object, s: Subject) -> None:
    Order.objects.filter(pk=s.order, customer_id=s.customer).update(status="refunded")


@pattern("queryset-update-customer")
def queryset_update_customer(_db: object, s: Subject) -> None:
    mine(s).filter(status="pending").update(status="on_hold")


@pattern("queryset-update-f")
def queryset_update_f(_db: object, s: Subject) -> None:
    mine(s).filter(pk=s.order).update(status=Upper(F("status")))


@pattern("bulk-update")
def bulk_update(_db: object, s: Subject) -> None:
    orders = list(mine(s).order_by("id")[:2])
    for order in orders:
        order.status = "refunded"
    Order.objects.bulk_update(orders, ["status"])


@pattern("update-case")
def update_case(_db: object, s: Subject) -> None:
    done = Case(
        When(status="shipped", then=Value("delivered")),
        default=F("status"),
        output_field=TextField(),
    )
    mine(s).update(status=done)
