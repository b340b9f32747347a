"""psycopg's class_row, args_row and kwargs_row call the application with each row's values.

The driver calls a cursor's row factory inside its own fetch. Had the guard
left these factories to the driver, the application's callable would have
received rows before the gate counted them: a named cursor's whole batch past
the row cap, and rows the ledger never counted when the callable raised (red
team). The guarded cursors let the driver make tuples and apply the factory
themselves, to rows already counted and allowed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import rows

from accessguard import Guard, Throttled
from accessguard.adapters.aio import AsyncGuardedConnection
from accessguard.guard import Session
from accessguard.testing import MemoryAuditSink

db = pytest.mark.db
ALICE = Session(user="alice", ticket="T-100")
#: customer 42's three orders: over a cap of two
ORDERS = "SELECT id, status FROM orders WHERE customer_id = 42 ORDER BY id"


@dataclass(frozen=True)
class Order:
    id: int
    status: str


class Boom(Exception):
    pass


def ledger_rows(sink: MemoryAuditSink) -> int:
    return sum(int(e["accessguard.rows"]) for e in sink.events if e["event.action"] == "ledger")


@db
class TestSync:
    def test_a_named_cursor_past_the_cap_hands_the_callable_nothing(
        self, capped: Guard, scenario_dsn: str
    ) -> None:
        """Cap 2, three rows: the refusal comes before the application's callable sees one."""
        seen: list[tuple[Any, ...]] = []
        with (
            capped.connect(scenario_dsn, user="alice", ticket="T-100") as conn,
            conn.cursor("big", row_factory=rows.args_row(lambda *v: seen.append(v))) as cur,
        ):
            cur.execute(ORDERS)
            with pytest.raises(Throttled):
                cur.fetchmany(100)
        assert seen == []

    def test_a_stream_past_the_cap_hands_the_callable_only_what_passed(
        self, capped: Guard, scenario_dsn: str
    ) -> None:
        seen: list[tuple[Any, ...]] = []
        with capped.connect(scenario_dsn, user="alice", ticket="T-100") as conn:
            cur = conn.cursor(row_factory=rows.args_row(lambda *v: seen.append(v)))
            with pytest.raises(Throttled):
                for _row in cur.stream(ORDERS):
                    pass
        assert len(seen) == 2

    def test_rows_a_raising_callable_received_are_counted(
        self, guard: Guard, sink: MemoryAuditSink, scenario_dsn: str
    ) -> None:
        """The callable raises on the third row: the ledger still counts the three it saw."""
        seen: list[tuple[Any, ...]] = []

        def spy(*values: Any) -> tuple[Any, ...]:
            seen.append(values)
            if len(seen) == 3:
                raise Boom
            return values

        with guard.connect(scenario_dsn, user="alice", ticket="T-100") as conn:
            cur = conn.cursor(row_factory=rows.args_row(spy))
            cur.execute(ORDERS)
            with pytest.raises(Boom):
                cur.fetchall()
        guard.ledger.flush()
        assert len(seen) == 3
        assert ledger_rows(sink) == 3

    def test_class_row_still_makes_the_applications_rows(
        self, guard: Guard, scenario_dsn: str
    ) -> None:
        """On the connection or the cursor, named or not, every fetch path."""
        factory = rows.class_row(Order)
        with guard.connect(scenario_dsn, user="alice", ticket="T-100", row_factory=factory) as conn:
            assert conn.execute(ORDERS).fetchone() == Order(421, "cancelled")
            assert conn.execute(ORDERS).fetchmany(2)[1] == Order(422, "pending")
            assert [o.id for o in conn.execute(ORDERS)] == [421, 422, 423]
            assert list(conn.cursor().stream(ORDERS))[2] == Order(423, "shipped")
            with conn.cursor("n", row_factory=rows.kwargs_row(dict)) as named:
                named.execute(ORDERS)
                assert named.fetchall()[0] == {"id": 421, "status": "cancelled"}

    def test_a_wrapped_connection_keeps_its_own_row_factory(
        self, guard: Guard, scenario_dsn: str
    ) -> None:
        with psycopg.connect(scenario_dsn, autocommit=True) as raw:
            cur = guard.wrap(raw, user="alice", ticket="T-100").cursor(
                row_factory=rows.class_row(Order)
            )
            cur.execute(ORDERS)
            assert raw.row_factory is rows.tuple_row
            assert cur.fetchone() == Order(421, "cancelled")


@pytest.fixture
async def capped_alice(capped: Guard, scenario_dsn: str) -> AsyncIterator[AsyncGuardedConnection]:
    async with await AsyncGuardedConnection.connect(capped, scenario_dsn, ALICE) as conn:
        yield conn


@db
@pytest.mark.anyio
class TestAsync:
    async def test_a_named_cursor_past_the_cap_hands_the_callable_nothing(
        self, capped_alice: AsyncGuardedConnection
    ) -> None:
        seen: list[tuple[Any, ...]] = []
        spy = rows.args_row(lambda *v: seen.append(v))
        async with capped_alice.cursor("big", row_factory=spy) as cur:
            await cur.execute(ORDERS)
            with pytest.raises(Throttled):
                await cur.fetchmany(100)
        assert seen == []

    async def test_class_row_still_makes_the_applications_rows(
        self, capped_alice: AsyncGuardedConnection
    ) -> None:
        cur = capped_alice.cursor(row_factory=rows.class_row(Order))
        await cur.execute("SELECT id, status FROM orders WHERE id = 421")
        assert await cur.fetchone() == Order(421, "cancelled")
        stream = cur.stream("SELECT id, status FROM orders WHERE id = 422")
        assert [o async for o in stream] == [Order(422, "pending")]
