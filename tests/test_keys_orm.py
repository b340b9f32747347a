"""Key-bound statements through the ORMs (issue 16): SQLAlchemy and Django, unmodified.

``Session.get``, the ORM flush, selectinload; Django ``get(pk=)``,
``save(update_fields=)``, ``prefetch_related``: allowed for alice's customer
(42), refused ``row_scope.other_subject`` for another one, nothing written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import django
import psycopg
import pytest
from django.conf import settings
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import BigInteger, ForeignKey, Text, create_engine, update
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
)

from accessguard import AccessDenied, Guard

if not settings.configured:
    settings.configure(
        DATABASES={
            "default": {"ENGINE": "django.db.backends.postgresql", "NAME": "unset", "OPTIONS": {}}
        },
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
        USE_TZ=True,
        ACCESSGUARD={},
    )
    django.setup()

from django.db import connection, models

from accessguard.adapters.django import guarded

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.engine import Engine

db = pytest.mark.db


def status_of(dsn: str, order: int) -> str:
    """The status of ``order``, read on an unguarded connection."""
    with psycopg.connect(dsn) as raw:
        row = raw.execute("SELECT status FROM orders WHERE id = %s", [order]).fetchone()
    assert row is not None
    return str(row[0])


# ---------------------------------------------------------------------- SQLAlchemy


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    customer_id: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str | None] = mapped_column(Text)
    payments: Mapped[list[Payment]] = relationship(order_by="Payment.id")


class Payment(Base):
    __tablename__ = "payments"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    amount_cents: Mapped[int] = mapped_column(BigInteger)


@pytest.fixture
def engine(guard: Guard, scenario_dsn: str) -> Iterator[Engine]:
    """An instrumented engine on a fresh scenario database, alice on T-100 bound."""
    engine = create_engine(scenario_dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    guard.instrument(engine)
    with guard.acting_as(user="alice", ticket="T-100"):
        yield engine
    engine.dispose()


@db
class TestSQLAlchemy:
    def test_session_get_own_order(self, engine: Engine) -> None:
        """``Session.get(Order, 421)`` returns alice's order."""
        with Session(engine) as session:
            order = session.get(Order, 421)
            assert order is not None
            assert (order.customer_id, order.status) == (42, "cancelled")

    @pytest.mark.parametrize("other", [71, 431])
    def test_session_get_other_customers_order_refused(self, engine: Engine, other: int) -> None:
        """``Session.get`` of another customer's order is refused other_subject."""
        with Session(engine) as session, pytest.raises(AccessDenied) as info:
            session.get(Order, other)
        assert info.value.reason == "row_scope.other_subject"

    def test_flush_writes_own_order(self, engine: Engine, scenario_dsn: str) -> None:
        """The ORM flush ``UPDATE orders SET status WHERE orders.id`` writes alice's order."""
        with Session(engine) as session:
            order = session.get(Order, 421)
            assert order is not None
            order.status = "refunded"
            session.commit()
        assert status_of(scenario_dsn, 421) == "refunded"

    def test_update_by_key_of_another_customer_writes_nothing(
        self, engine: Engine, scenario_dsn: str
    ) -> None:
        """An UPDATE by another customer's order id is refused; the order keeps its status."""
        with Session(engine) as session:
            with pytest.raises(AccessDenied) as info:
                session.execute(update(Order).where(Order.id == 71).values(status="refunded"))
            session.rollback()
        assert info.value.reason == "row_scope.other_subject"
        assert status_of(scenario_dsn, 71) == "pending"

    def test_selectinload_children(self, engine: Engine) -> None:
        """selectinload's ``payments WHERE order_id IN (...)`` loads alice's payments."""
        with Session(engine) as session:
            orders = (
                session.query(Order)
                .options(selectinload(Order.payments))
                .filter(Order.customer_id == 42)
                .order_by(Order.id)
                .all()
            )
            assert [[p.id for p in o.payments] for o in orders] == [[421], [422], [423]]


@pytest.fixture
def anyio_backend() -> str:
    """psycopg's async connections run on asyncio."""
    return "asyncio"


@db
@pytest.mark.anyio
async def test_async_engine_probes(guard: Guard, scenario_dsn: str) -> None:
    """An AsyncEngine runs the probe on its async driver connection: 421 loads, 71 is refused."""
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine(scenario_dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    guard.instrument(engine)
    try:
        with guard.acting_as(user="alice", ticket="T-100"):
            async with AsyncSession(engine) as session:
                order = await session.get(Order, 421)
                assert order is not None
                assert order.customer_id == 42
                with pytest.raises(AccessDenied) as info:
                    await session.get(Order, 71)
        assert info.value.reason == "row_scope.other_subject"
    finally:
        await engine.dispose()


# ---------------------------------------------------------------------- Django


class DjangoOrder(models.Model):
    id: models.BigIntegerField[int, int] = models.BigIntegerField(primary_key=True)
    customer_id: models.BigIntegerField[int, int] = models.BigIntegerField()
    status: models.TextField[str, str] = models.TextField()

    class Meta:
        app_label = "contenttypes"
        db_table = "orders"
        managed = False

    def __str__(self) -> str:
        return f"order {self.id}"


@pytest.fixture
def django_db(guard: Guard, scenario_dsn: str) -> Iterator[None]:
    """Django's default alias on a fresh scenario database, guarded for alice on T-100."""
    connection.close()
    info = conninfo_to_dict(scenario_dsn)
    connection.settings_dict.update(
        NAME=info["dbname"],
        USER=info.get("user", ""),
        HOST=info.get("host", ""),
        PORT=str(info.get("port", "")),
        OPTIONS={},
    )
    with guarded(connection, guard=guard, user="alice", ticket="T-100"):
        yield
    connection.close()


@db
@pytest.mark.usefixtures("django_db")
class TestDjango:
    def test_get_by_pk(self) -> None:
        """``Order.objects.get(pk=421)`` returns alice's order."""
        assert DjangoOrder.objects.get(pk=421).status == "cancelled"

    def test_get_by_pk_of_another_customer_refused(self) -> None:
        """``get(pk=71)`` (customer 7's order) is refused other_subject."""
        with pytest.raises(AccessDenied) as info:
            DjangoOrder.objects.get(pk=71)
        assert info.value.reason == "row_scope.other_subject"

    def test_exists_and_refresh_by_pk(self) -> None:
        """``filter(pk=).exists()`` and ``refresh_from_db`` work for alice's order."""
        assert DjangoOrder.objects.filter(pk=422).exists()
        order = DjangoOrder.objects.get(pk=422)
        order.refresh_from_db()
        assert order.status == "pending"

    def test_save_update_fields_writes(self, scenario_dsn: str) -> None:
        """``save(update_fields=["status"])`` writes alice's order."""
        order = DjangoOrder.objects.get(pk=421)
        order.status = "refunded"
        order.save(update_fields=["status"])
        assert status_of(scenario_dsn, 421) == "refunded"

    def test_save_of_another_customers_order_writes_nothing(self, scenario_dsn: str) -> None:
        """A save() aimed at customer 7's order id is refused and writes nothing."""
        forged = DjangoOrder(id=71, customer_id=42, status="refunded")
        with pytest.raises(AccessDenied) as info:
            forged.save(update_fields=["status"])
        assert info.value.reason == "row_scope.other_subject"
        assert status_of(scenario_dsn, 71) == "pending"
