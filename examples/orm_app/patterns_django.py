"""Django 5 ORM patterns of the support desk (USE_TZ=True), each run for one Subject.

Import after settings.configure(): the models need the app registry.
"""

from __future__ import annotations

from typing import Any

from desk.models import Customer, Order, Payment
from django.db.models import (
    Avg,
    Case,
    Count,
    Exists,
    F,
    Max,
    OuterRef,
    Prefetch,
    Q,
    Subquery,
    Sum,
    TextField,
    Value,
    When,
    Window,
)
from django.db.models.functions import (
    Coalesce,
    Concat,
    ExtractYear,
    Length,
    Lower,
    Power,
    RowNumber,
    Sqrt,
    TruncDate,
    Upper,
)
from subject import Subject, registry

PATTERNS, pattern = registry()


def mine(s: Subject) -> Any:
    """The ticket customer's orders."""
    return Order.objects.filter(customer_id=s.customer)


# ---------------------------------------------------------------- lookups


@pattern("get-customer-pk")
def get_customer(_db: object, s: Subject) -> None:
    Customer.objects.get(pk=s.customer)


@pattern("get-order-pk")
def get_order(_db: object, s: Subject) -> None:
    Order.objects.get(pk=s.order)


@pattern("get-order-scoped")
def get_order_scoped(_db: object, s: Subject) -> None:
    Order.objects.get(pk=s.order, customer_id=s.customer)


@pattern("refresh-from-db")
def refresh(_db: object, s: Subject) -> None:
    order = mine(s).order_by("id").first()
    order.refresh_from_db()


@pattern("filter")
def filter_(_db: object, s: Subject) -> None:
    list(mine(s))


@pattern("filter-fk-object")
def filter_fk_object(_db: object, s: Subject) -> None:
    list(Order.objects.filter(customer=Customer(id=s.customer)))


@pattern("filter-span")
def filter_span(_db: object, s: Subject) -> None:
    list(Payment.objects.filter(order__customer_id=s.customer))


@pattern("exclude")
def exclude(_db: object, s: Subject) -> None:
    list(mine(s).exclude(status="cancelled"))


@pattern("q-or")
def q_or(_db: object, s: Subject) -> None:
    list(Order.objects.filter(Q(status="pending") | Q(status="shipped"), customer_id=s.customer))


@pattern("q-and-not")
def q_and_not(_db: object, s: Subject) -> None:
    list(Order.objects.filter(Q(customer_id=s.customer) & ~Q(status="cancelled")))


@pattern("f-compare")
def f_compare(_db: object, s: Subject) -> None:
    list(Payment.objects.filter(customer_id=s.customer, amount_cents__gte=F("order__total_cents")))


@pattern("in-list")
def in_list(_db: object, s: Subject) -> None:
    list(mine(s).filter(id__in=s.orders[:2]))


@pattern("in-bulk")
def in_bulk(_db: object, s: Subject) -> None:
    mine(s).in_bulk(list(s.orders))


@pattern("icontains")
def icontains(_db: object, s: Subject) -> None:
    list(Customer.objects.filter(pk=s.customer, email__icontains="@mail"))


@pattern("isnull")
def isnull(_db: object, s: Subject) -> None:
    list(Customer.objects.filter(pk=s.customer, phone__isnull=False))


@pattern("values")
def values(_db: object, s: Subject) -> None:
    list(Customer.objects.filter(pk=s.customer).values("name", "email", "phone"))


@pattern("values-list-flat")
def values_list_flat(_db: object, s: Subject) -> None:
    list(mine(s).values_list("id", flat=True))


@pattern("values-list")
def values_list(_db: object, s: Subject) -> None:
    list(Payment.objects.filter(customer_id=s.customer).values_list("id", "card_last4"))


@pattern("first-last")
def first_last(_db: object, s: Subject) -> None:
    mine(s).first()
    mine(s).last()


@pattern("order-slice")
def order_slice(_db: object, s: Subject) -> None:
    list(mine(s).order_by("-created_at")[1:3])


@pattern("exists")
def exists(_db: object, s: Subject) -> None:
    mine(s).filter(status="pending").exists()


@pattern("count")
def count(_db: object, s: Subject) -> None:
    mine(s).count()


@pattern("distinct")
def distinct(_db: object, s: Subject) -> None:
    list(mine(s).values_list("status", flat=True).distinct())


@pattern("union")
def union(_db: object, s: Subject) -> None:
    list(mine(s).filter(status="pending").union(mine(s).filter(status="shipped")))


@pattern("only")
def only(_db: object, s: Subject) -> None:
    list(mine(s).only("status"))


@pattern("defer")
def defer(_db: object, s: Subject) -> None:
    list(mine(s).defer("created_at"))


@pattern("first-by-pk")
def first_by_pk(_db: object, s: Subject) -> None:
    mine(s).filter(pk=s.order).first()


@pattern("exists-by-pk")
def exists_by_pk(_db: object, s: Subject) -> None:
    Order.objects.filter(pk=s.order).exists()


@pattern("count-distinct")
def count_distinct(_db: object, s: Subject) -> None:
    mine(s).aggregate(n=Count("status", distinct=True))


@pattern("select-for-update")
def select_for_update(_db: object, s: Subject) -> None:
    list(mine(s).filter(pk=s.order).select_for_update())


@pattern("filter-span-parent")
def filter_span_parent(_db: object, s: Subject) -> None:
    list(Order.objects.filter(customer__id=s.customer, customer__name__startswith="Name"))


# ---------------------------------------------------------------- relationships


@pattern("select-related")
def select_related(_db: object, s: Subject) -> None:
    list(mine(s).select_related("customer"))


@pattern("select-related-chain")
def select_related_chain(_db: object, s: Subject) -> None:
    list(Payment.objects.filter(customer_id=s.customer).select_related("order__customer"))


@pattern("prefetch-orders")
def prefetch_orders(_db: object, s: Subject) -> None:
    list(Customer.objects.filter(pk=s.customer).prefetch_related("orders"))


@pattern("prefetch-payments")
def prefetch_payments(_db: object, s: Subject) -> None:
    list(mine(s).prefetch_related("payments"))


@pattern("prefetch-nested")
def prefetch_nested(_db: object, s: Subject) -> None:
    list(Customer.objects.filter(pk=s.customer).prefetch_related("orders__payments"))


@pattern("prefetch-object")
def prefetch_object(_db: object, s: Subject) -> None:
    open_orders = Order.objects.exclude(status="cancelled")
    qs = Customer.objects.filter(pk=s.customer)
    list(qs.prefetch_related(Prefetch("orders", queryset=open_orders)))


@pattern("lazy-fk")
def lazy_fk(_db: object, s: Subject) -> None:
    _ = mine(s).order_by("id").first().customer


@pattern("reverse-manager")
def reverse_manager(_db: object, s: Subject) -> None:
    list(Customer.objects.get(pk=s.customer).orders.all())


@pattern("child-manager")
def child_manager(_db: object, s: Subject) -> None:
    list(mine(s).order_by("id").first().payments.all())


# ---------------------------------------------------------------- annotate / aggregate


@pattern("aggregate")
def aggregate(_db: object, s: Subject) -> None:
    mine(s).aggregate(total=Sum("total_cents"), avg=Avg("total_cents"), last=Max("created_at"))


@pattern("annotate-count-orders")
def annotate_count_orders(_db: object, s: Subject) -> None:
    list(Customer.objects.filter(pk=s.customer).annotate(n=Count("orders")))


@pattern("annotate-count-payments")
def annotate_count_payments(_db: object, s: Subject) -> None:
    list(mine(s).annotate(n=Count("payments")))


@pattern("values-annotate")
def values_annotate(_db: object, s: Subject) -> None:
    list(mine(s).values("status").annotate(n=Count("id")).order_by("status"))


@pattern("annotate-f")
def annotate_f(_db: object, s: Subject) -> None:
    list(mine(s).annotate(euros=F("total_cents") / 100).values_list("id", "euros"))


@pattern("subquery-outerref")
def subquery_outerref(_db: object, s: Subject) -> None:
    latest = Order.objects.filter(customer=OuterRef("pk")).order_by("-created_at")
    qs = Customer.objects.filter(pk=s.customer)
    list(qs.annotate(latest=Subquery(latest.values("status")[:1])))


@pattern("exists-outerref")
def exists_outerref(_db: object, s: Subject) -> None:
    pending = Order.objects.filter(customer=OuterRef("pk"), status="pending")
    list(Customer.objects.filter(pk=s.customer).annotate(has_pending=Exists(pending)))


@pattern("case-when")
def case_when(_db: object, s: Subject) -> None:
    is_open = Case(When(status__in=["pending", "shipped"], then=Value(1)), default=Value(0))
    list(mine(s).annotate(open=is_open).values_list("id", "open"))


@pattern("window")
def window(_db: object, s: Subject) -> None:
    rank = Window(RowNumber(), order_by=F("created_at").asc())
    list(mine(s).annotate(rank=rank).values_list("id", "rank"))


@pattern("functions-math")
def functions_math(_db: object, s: Subject) -> None:
    list(
        mine(s).annotate(sq=Power("total_cents", 2), root=Sqrt("total_cents")).values("sq", "root")
    )


@pattern("functions-text")
def functions_text(_db: object, s: Subject) -> None:
    label = Concat("name", Value(" <"), "email", Value(">"), output_field=TextField())
    fns = {"label": label, "low": Lower("email"), "up": Upper("name"), "n": Length("address")}
    list(Customer.objects.filter(pk=s.customer).annotate(**fns).values(*fns))


@pattern("coalesce")
def coalesce(_db: object, s: Subject) -> None:
    phone = Coalesce("phone", Value("n/a"), output_field=TextField())
    list(Customer.objects.filter(pk=s.customer).annotate(p=phone).values_list("p", flat=True))


# ---------------------------------------------------------------- dates with USE_TZ=True


@pattern("tz-date")
def tz_date(_db: object, s: Subject) -> None:
    list(mine(s).filter(created_at__date=s.first_day))


@pattern("tz-year")
def tz_year(_db: object, s: Subject) -> None:
    list(mine(s).filter(created_at__year=s.first_day.year))


@pattern("tz-month-day")
def tz_month_day(_db: object, s: Subject) -> None:
    list(mine(s).filter(created_at__month=s.first_day.month, created_at__day__gte=1))


@pattern("tz-gte")
def tz_gte(_db: object, s: Subject) -> None:
    list(mine(s).filter(created_at__gte=s.since))


@pattern("tz-truncdate")
def tz_truncdate(_db: object, s: Subject) -> None:
    qs = mine(s).annotate(day=TruncDate("created_at"), year=ExtractYear("created_at"))
    list(qs.values_list("id", "day", "year"))


@pattern("tz-dates")
def tz_dates(_db: object, s: Subject) -> None:
    list(mine(s).dates("created_at", "day"))
