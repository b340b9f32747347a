"""guard.instrument(engine): SQLAlchemy 2 Core and ORM statements decided with their real values."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
import pytest
import sqlalchemy.exc
from casefiles import PgServerLike, RedteamCase, database_copy, load_redteam_cases
from sqlalchemy import BigInteger, ForeignKey, Text, create_engine, insert, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from test_redteam import ALLOWED_EQUIVALENT, TIMEOUT, redteam_params, reference_result

from accessguard import (
    AccessDenied,
    AccessGuardError,
    ConfigurationError,
    Guard,
    Throttled,
    scenario,
)
from accessguard.adapters.sqlalchemy import instrument
from accessguard.testing import MemoryAuditSink

if TYPE_CHECKING:
    from collections.abc import Iterator

    from _pytest.mark.structures import ParameterSet
    from sqlalchemy.engine import Connection, Engine

db = pytest.mark.db
CASES = load_redteam_cases()
Rows = list[tuple[Any, ...]]


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


def url(dsn: str) -> str:
    """The SQLAlchemy URL of a libpq URL, on the psycopg 3 dialect."""
    return dsn.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture
def engine(guard: Guard, scenario_dsn: str) -> Iterator[Engine]:
    engine = create_engine(url(scenario_dsn))
    guard.instrument(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def alice(guard: Guard) -> Iterator[None]:
    with guard.acting_as(user="alice", ticket="T-100"):
        yield


@db
@pytest.mark.usefixtures("alice")
class TestCore:
    def test_text_with_named_parameters(self, engine: Engine) -> None:
        """text() with :name parameters runs with the real bound value."""
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT name FROM customers WHERE id = :c"), {"c": 42})
            assert rows.all() == [("Name-0042",)]

    def test_select_construct_and_percent_literal(self, engine: Engine) -> None:
        """A select() with a LIKE pattern is checked as psycopg sends it (%% escapes)."""
        orders = Order.__table__
        stmt = select(orders.c.id).where(orders.c.customer_id == 42, orders.c.status.like("p%"))
        with engine.connect() as conn:
            assert conn.execute(stmt).all() == [(422,)]
            literal = text("SELECT id FROM orders WHERE customer_id = 42 AND status LIKE 'p%'")
            assert conn.execute(literal).all() == [(422,)]

    def test_driver_sql_positional(self, engine: Engine) -> None:
        """exec_driver_sql with %s placeholders is guarded too."""
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT id FROM orders WHERE customer_id = %s", (42,))
            assert sorted(rows.all()) == [(421,), (422,), (423,)]

    def test_refusal_surfaces_as_accessguarderror(self, engine: Engine) -> None:
        """A refusal reaches the caller as AccessDenied itself, and the connection goes on."""
        with engine.connect() as conn:
            with pytest.raises(AccessDenied) as info:
                conn.execute(text("SELECT email FROM customers"))
            assert not isinstance(info.value, sqlalchemy.exc.SQLAlchemyError)
            assert info.value.reason == "row_scope.unbound"
            rows = conn.execute(text("SELECT name FROM customers WHERE id = 42"))
            assert rows.all() == [("Name-0042",)]

    def test_other_customer_bound_value_is_refused(self, engine: Engine) -> None:
        """The real bound value is checked: customer 7 is refused."""
        with engine.connect() as conn, pytest.raises(AccessDenied) as info:
            conn.execute(text("SELECT name FROM customers WHERE id = :c"), {"c": 7})
        assert info.value.reason == "row_scope.other_subject"

    def test_executemany_checks_every_parameter_set(self, engine: Engine) -> None:
        """One out-of-scope set in executemany refuses the whole batch before sending."""
        stmt = text("UPDATE orders SET status = :s WHERE customer_id = :c AND id = :i")
        with engine.connect() as conn:
            with pytest.raises(AccessDenied):
                conn.execute(stmt, [{"s": "x", "c": 42, "i": 421}, {"s": "x", "c": 7, "i": 71}])
            conn.execute(stmt, [{"s": "y", "c": 42, "i": 421}, {"s": "y", "c": 42, "i": 422}])
            rows = conn.execute(text("SELECT id, status FROM orders WHERE customer_id = 42"))
            assert sorted(rows.all()) == [(421, "y"), (422, "y"), (423, "shipped")]

    def test_insertmanyvalues_batch_is_decided_as_one_statement(
        self, engine: Engine, sink: MemoryAuditSink
    ) -> None:
        """A multi-row INSERT ... RETURNING batch is decided on its real statement."""
        rows = [
            {"id": 9001, "customer_id": 42, "status": "x"},
            {"id": 9002, "customer_id": 42, "status": "y"},
        ]
        with engine.connect() as conn, pytest.raises(AccessDenied) as info:
            conn.execute(insert(Order).returning(Order.id), rows)
        assert info.value.reason == "statement.forbidden"  # no rule lets alice insert
        assert sink.events[-1]["db.operation.name"] == "INSERT"

    def test_client_side_binding_is_analyzed_on_merged_text(
        self, guard: Guard, scenario_dsn: str
    ) -> None:
        """With psycopg's ClientCursor the merged text is decided; executemany is refused."""
        engine = create_engine(
            url(scenario_dsn), connect_args={"cursor_factory": psycopg.ClientCursor}
        )
        guard.instrument(engine)
        try:
            with engine.connect() as conn:
                query = text("SELECT id FROM orders WHERE customer_id = :c AND status LIKE 'p%'")
                assert conn.execute(query, {"c": 42}).all() == [(422,)]
                with pytest.raises(AccessDenied):
                    conn.exec_driver_sql(
                        "SELECT id, name, email FROM customers WHERE id = 42 -- %s",
                        ("\nOR true --",),
                    )
                stmt = text("UPDATE orders SET status = :s WHERE customer_id = 42 AND id = :i")
                with pytest.raises(AccessDenied) as info:
                    conn.execute(stmt, [{"s": "x", "i": 421}, {"s": "x", "i": 422}])
                assert info.value.reason == "path.forbidden"
        finally:
            engine.dispose()

    def test_nested_transaction_savepoints_pass(self, engine: Engine) -> None:
        """SQLAlchemy's own SAVEPOINT statements (begin_nested) are let through."""
        with engine.connect() as conn, conn.begin():
            with conn.begin_nested() as nested:
                conn.execute(text("UPDATE orders SET status = 'x' WHERE customer_id = 42"))
                nested.rollback()
            rows = conn.execute(text("SELECT status FROM orders WHERE customer_id = 42"))
            assert "x" not in {r[0] for r in rows}

    def test_savepoint_text_is_not_a_pass(self, engine: Engine) -> None:
        """A SAVEPOINT written by the application is decided like any statement."""
        with engine.connect() as conn, pytest.raises(AccessDenied):
            conn.exec_driver_sql("SAVEPOINT sa_savepoint_1")

    def test_server_side_cursors_are_refused(self, engine: Engine) -> None:
        """stream_results (a named cursor) is refused: its rows could not be counted."""
        with engine.connect() as conn, pytest.raises(AccessDenied) as info:
            conn.execution_options(stream_results=True).execute(
                text("SELECT id FROM orders WHERE customer_id = 42")
            )
        assert info.value.reason == "path.forbidden"

    def test_ledger_counts_the_rows_returned(
        self, engine: Engine, guard: Guard, sink: MemoryAuditSink
    ) -> None:
        """The ledger gets one statement and the rows the result held."""
        with engine.connect() as conn:
            conn.execute(text("SELECT id FROM orders WHERE customer_id = 42")).all()
        guard.close()
        ledger = [e for e in sink.events if e["event.action"] == "ledger"]
        assert sum(e["accessguard.rows"] for e in ledger) == 3
        assert sum(e["accessguard.statements"] for e in ledger) == 1

    def test_ledger_counts_the_rows_an_executemany_changed(
        self, engine: Engine, guard: Guard, sink: MemoryAuditSink
    ) -> None:
        """A list of parameter sets (the DB-API's executemany): the rows changed are ledgered,
        as a single UPDATE's are (they were not: red team)."""
        stmt = text("UPDATE orders SET status = :s WHERE customer_id = 42 AND id = :i")
        with engine.connect() as conn:
            sets = [{"s": "x", "i": 421}, {"s": "y", "i": 422}, {"s": "z", "i": 423}]
            assert conn.execute(stmt, sets).rowcount == 3
            conn.rollback()
        guard.close()
        ledger = [e for e in sink.events if e["event.action"] == "ledger"]
        assert sum(e["accessguard.rows"] for e in ledger) == 3

    def test_row_cap(self, engine: Engine, scenario_dsn: str, sink: MemoryAuditSink) -> None:
        """A result over the row cap is refused before a Result is built."""
        with psycopg.connect(scenario_dsn, autocommit=True) as admin:
            admin.execute(
                "INSERT INTO orders (id, customer_id, status, total_cents) "
                "SELECT 100000 + g, 42, 'bulk', 1 FROM generate_series(1, 498) g"
            )
        with engine.connect() as conn, pytest.raises(Throttled) as info:
            conn.execute(text("SELECT id FROM orders WHERE customer_id = 42"))
        assert info.value.reason == "throttle.rows"
        assert sink.reasons() == ["throttle.rows"]

    def test_raw_connection_is_wrapped_by_hand(self, engine: Engine, guard: Guard) -> None:
        """engine.raw_connection() skips engine events: guard.wrap() its driver connection."""
        raw = engine.raw_connection()
        try:
            conn = guard.wrap(raw.driver_connection, user="alice", ticket="T-100")
            with pytest.raises(AccessDenied):
                conn.execute("SELECT email FROM customers")
        finally:
            raw.close()


BULK = (
    "INSERT INTO orders (id, customer_id, status, total_cents) "
    "SELECT 100000 + g, 42, 'bulk', 1 FROM generate_series(1, 2000) g"
)
UPDATE_ALL = "UPDATE orders SET status = 'x' WHERE customer_id = 42 RETURNING id, status"


def statuses(dsn: str) -> Rows:
    """Customer 42's order statuses and their counts, read past the guard."""
    with psycopg.connect(dsn) as admin:
        return admin.execute(
            "SELECT status, count(*) FROM orders WHERE customer_id = 42 GROUP BY 1 ORDER BY 1"
        ).fetchall()


def ledger_rows(guard: Guard, sink: MemoryAuditSink) -> int:
    guard.close()
    return sum(e["accessguard.rows"] for e in sink.events if e["event.action"] == "ledger")


@db
@pytest.mark.usefixtures("alice")
class TestReturning:
    @pytest.fixture(autouse=True)
    def _bulk(self, scenario_dsn: str) -> None:
        """Customer 42 gets 2,003 orders (the issue's numbers)."""
        with psycopg.connect(scenario_dsn, autocommit=True) as admin:
            admin.execute(BULK)

    def test_update_returning_over_the_cap_is_refused_and_undone(
        self, engine: Engine, guard: Guard, sink: MemoryAuditSink, scenario_dsn: str
    ) -> None:
        """UPDATE ... RETURNING of 2,003 rows is throttled, hands nothing over, changes nothing."""
        with engine.connect() as conn:
            with pytest.raises(Throttled) as info:
                conn.execute(text(UPDATE_ALL))
            assert info.value.reason == "throttle.rows"
            small = (
                "UPDATE orders SET status = 'y' WHERE customer_id = 42 AND id < 500 RETURNING id"
            )
            assert len(conn.execute(text(small)).all()) == 3
            conn.commit()
        assert statuses(scenario_dsn) == [("bulk", 2000), ("y", 3)]
        assert sink.reasons() == ["throttle.rows"]
        assert ledger_rows(guard, sink) == 3

    def test_autocommit_update_returning_is_undone(self, engine: Engine, scenario_dsn: str) -> None:
        """On an AUTOCOMMIT connection the over-cap write is rolled back too."""
        with engine.connect() as conn:
            auto = conn.execution_options(isolation_level="AUTOCOMMIT")
            with pytest.raises(Throttled):
                auto.execute(text(UPDATE_ALL))
            small = (
                "UPDATE orders SET status = 'y' WHERE customer_id = 42 AND id = 421 RETURNING id"
            )
            assert auto.execute(text(small)).all() == [(421,)]
        assert statuses(scenario_dsn) == [("bulk", 2000), ("pending", 1), ("shipped", 1), ("y", 1)]

    def test_orm_update_returning_is_capped(self, engine: Engine, scenario_dsn: str) -> None:
        """The ORM's update().returning() is capped like a SELECT."""
        from sqlalchemy import update

        stmt = update(Order).where(Order.customer_id == 42).values(status="z").returning(Order.id)
        with Session(engine) as session:
            with pytest.raises(Throttled):
                session.execute(stmt)
            session.commit()
        assert ("z", 2003) not in statuses(scenario_dsn)

    def test_failed_write_leaves_the_connection_usable(self, engine: Engine) -> None:
        """A capped write that fails in the database (autocommit) leaves no transaction open."""
        bad = "UPDATE orders SET status = 'x' WHERE customer_id = 42 AND id = 1 / 0 RETURNING id"
        query = text("SELECT id FROM orders WHERE id = 421 AND customer_id = 42")
        with engine.connect() as conn:
            auto = conn.execution_options(isolation_level="AUTOCOMMIT")
            with pytest.raises(sqlalchemy.exc.DataError):
                auto.execute(text(bad))
            assert auto.execute(query).all() == [(421,)]


@db
class TestBinding:
    def test_nobody_bound_is_refused(self, engine: Engine, sink: MemoryAuditSink) -> None:
        """With no employee bound, a statement is refused (session.unbound) and audited."""
        with engine.connect() as conn, pytest.raises(ConfigurationError) as info:
            conn.execute(text("SELECT title FROM products WHERE id = 1"))
        assert info.value.reason == "session.unbound"
        assert sink.reasons() == ["session.unbound"]
        assert sink.events[0]["accessguard.integration"] == "sqlalchemy"

    def test_binding_follows_the_context(self, engine: Engine, guard: Guard) -> None:
        """One engine serves alice and bob, each with their own rights."""
        query = text("SELECT name FROM customers WHERE id = 42")
        with engine.connect() as conn:
            with guard.acting_as(user="alice", ticket="T-100"):
                assert conn.execute(query).all() == [("Name-0042",)]
            with guard.acting_as(user="bob"), pytest.raises(AccessDenied):
                conn.execute(query)

    def test_instrument_is_idempotent_and_single_guard(self, engine: Engine, guard: Guard) -> None:
        """Instrumenting twice is harmless; a second guard on one engine is refused."""
        assert instrument(guard, engine) is engine
        other = Guard.from_directory(
            scenario.policies_dir(), tickets=scenario.tickets(), audit=MemoryAuditSink()
        )
        with pytest.raises(ConfigurationError):
            other.instrument(engine)

    def test_other_dialects_are_refused(self, guard: Guard) -> None:
        """Only the psycopg 3 dialect is supported: anything else fails loudly."""
        with pytest.raises(ConfigurationError):
            guard.instrument(create_engine("sqlite://"))


@db
@pytest.mark.usefixtures("alice")
class TestOrm:
    def test_get_and_relationship_lazy_load(self, engine: Engine) -> None:
        """session.get and a lazy relationship load run as alice with their real values."""
        with Session(engine) as session:
            customer = session.get(Customer, 42)
            assert customer is not None
            assert customer.email == "c0042@mail.example"
            assert [o.id for o in customer.orders] == [421, 422, 423]
            assert customer.orders[0].customer is customer

    def test_select_other_customer_is_refused(self, engine: Engine) -> None:
        """ORM loads of another customer's rows (by scope or by key) are refused as AccessDenied."""
        with Session(engine) as session:
            with pytest.raises(AccessDenied):
                session.scalars(select(Customer).where(Customer.id == 7)).all()
            with pytest.raises(AccessDenied) as info:
                session.get(Order, 71)  # by order id: customer 7's, found by the probe
            assert info.value.reason == "row_scope.other_subject"

    def test_eager_join_load(self, engine: Engine) -> None:
        """A joined eager load of the relationship is checked as one statement."""
        from sqlalchemy.orm import selectinload

        with Session(engine) as session:
            stmt = select(Customer).where(Customer.id == 42).options(selectinload(Customer.orders))
            customer = session.scalars(stmt).one()
            assert [o.status for o in customer.orders] == ["cancelled", "pending", "shipped"]

    def test_flush_update_by_order_id_is_probed(self, engine: Engine) -> None:
        """A flush whose UPDATE is keyed by order id only runs once its probe finds 42's order."""
        with Session(engine) as session:
            customer = session.get(Customer, 42)
            assert customer is not None
            order = customer.orders[0]
            order.status = "refunded"
            session.flush()
            session.expire_all()
            assert session.get(Order, order.id).status == "refunded"  # type: ignore[union-attr]
            session.rollback()


@db
@pytest.mark.anyio
class TestAsyncEngine:
    async def test_async_engine_is_guarded(
        self, guard: Guard, scenario_dsn: str, sink: MemoryAuditSink
    ) -> None:
        """An AsyncEngine (postgresql+psycopg) is guarded like a sync one, rows counted."""
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(url(scenario_dsn))
        assert guard.instrument(engine) is engine
        try:
            async with engine.connect() as conn:
                with pytest.raises(ConfigurationError):
                    await conn.execute(text("SELECT title FROM products WHERE id = 1"))
                with guard.acting_as(user="alice", ticket="T-100"):
                    query = text("SELECT id FROM orders WHERE customer_id = :c")
                    assert len((await conn.execute(query, {"c": 42})).all()) == 3
                    with pytest.raises(AccessDenied):
                        await conn.execute(text("SELECT email FROM customers"))
                    with pytest.raises(AccessDenied):
                        await conn.stream(query, {"c": 42})
        finally:
            await engine.dispose()
        guard.close()
        ledger = [e for e in sink.events if e["event.action"] == "ledger"]
        assert sum(e["accessguard.rows"] for e in ledger) == 3

    async def test_async_engine_refusals_and_caps(
        self, guard: Guard, scenario_dsn: str, sink: MemoryAuditSink
    ) -> None:
        """AsyncEngine: unbound reads are audited; over-cap reads and writes refused, undone."""
        from sqlalchemy.ext.asyncio import create_async_engine

        with psycopg.connect(scenario_dsn, autocommit=True) as admin:
            admin.execute(BULK)
        engine = create_async_engine(url(scenario_dsn))
        guard.instrument(engine)
        try:
            async with engine.connect() as conn:
                with pytest.raises(ConfigurationError):
                    await conn.execute(text("SELECT name FROM customers WHERE id = 42"))
                with guard.acting_as(user="alice", ticket="T-100"):
                    rows = await conn.execute(text("SELECT name FROM customers WHERE id = 42"))
                    assert rows.all() == [("Name-0042",)]
                    with pytest.raises(AccessDenied) as denied:
                        await conn.execute(text("SELECT name FROM customers WHERE id = 7"))
                    assert denied.value.reason == "row_scope.other_subject"
                    with pytest.raises(Throttled):
                        await conn.execute(text("SELECT id FROM orders WHERE customer_id = 42"))
                    with pytest.raises(Throttled):
                        await conn.execute(text(UPDATE_ALL))
                    await conn.commit()
        finally:
            await engine.dispose()
        assert statuses(scenario_dsn) == [
            ("bulk", 2000),
            ("cancelled", 1),
            ("pending", 1),
            ("shipped", 1),
        ]
        assert sink.reasons() == [
            "session.unbound",
            "row_scope.other_subject",
            "throttle.rows",
            "throttle.rows",
        ]
        assert ledger_rows(guard, sink) == 1


# ---------------------------------------------------------------------- red team


def _cases() -> list[ParameterSet]:
    return redteam_params("server")


@pytest.fixture(scope="module")
def redteam_engine(
    pg_server: PgServerLike, scenario_template: str, unlimited: Guard
) -> Iterator[tuple[Engine, str]]:
    """An instrumented engine on one scenario copy (each case rolled back), and its DSN."""
    with database_copy(pg_server, scenario_template, prefix="ag_sqla") as dsn:
        engine = create_engine(url(dsn), connect_args={"options": TIMEOUT})
        instrument(unlimited, engine)
        yield engine, dsn
        engine.dispose()


def _run(conn: Connection, case: RedteamCase) -> Rows | AccessGuardError:
    # exactly what SQLAlchemy sends: the text as given, parameters only when the case has some
    try:
        if case.params is None:
            result = conn.execution_options(no_parameters=True).exec_driver_sql(case.sql)
        else:
            params = tuple(case.params) if isinstance(case.params, list) else case.params
            result = conn.exec_driver_sql(case.sql, params)
        return [tuple(r) for r in result.all()] if result.returns_rows else []
    except AccessGuardError as exc:
        return exc
    finally:
        conn.rollback()


@db
class TestSqlalchemyRedteam:
    @pytest.mark.parametrize("case", _cases())
    def test_case(
        self, case: RedteamCase, unlimited: Guard, redteam_engine: tuple[Engine, str]
    ) -> None:
        """Attacks are refused; allowed cases return what the sync adapter returns."""
        engine, dsn = redteam_engine
        with unlimited.acting_as(user="alice", ticket="T-100"), engine.connect() as conn:
            rows = _run(conn, case)
        if not (case.allowed or case.id in ALLOWED_EQUIVALENT):
            assert isinstance(rows, AccessGuardError), "an attack was not refused"
            return
        assert not isinstance(rows, AccessGuardError), f"refused: {rows}"
        expected = reference_result(unlimited, dsn, case)
        assert not isinstance(expected, AccessGuardError)
        assert sorted(rows, key=repr) == sorted(expected, key=repr)
