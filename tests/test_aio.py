"""The guard on psycopg's AsyncConnection: the same paths and refusals as the sync adapter."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from casefiles import PgServerLike, RedteamCase, database_copy, load_redteam_cases
from test_redteam import ALLOWED_EQUIVALENT, TIMEOUT, redteam_params, reference_result

from accessguard import AccessDenied, AccessGuardError, Guard, Throttled, scenario
from accessguard.adapters.aio import AsyncGuardedConnection, wrap_async
from accessguard.guard import Session
from accessguard.testing import MemoryAuditSink
from accessguard.tickets.stores import MemoryTicketStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from _pytest.mark.structures import ParameterSet

pytestmark = pytest.mark.anyio
db = pytest.mark.db

ALICE = Session(user="alice", ticket="T-100")
CASES = load_redteam_cases()
Rows = list[tuple[Any, ...]]


@pytest.fixture
async def alice(guard: Guard, scenario_dsn: str) -> AsyncIterator[AsyncGuardedConnection]:
    async with await AsyncGuardedConnection.connect(guard, scenario_dsn, ALICE) as aconn:
        yield aconn


@db
class TestAsyncPaths:
    async def test_connect_async_is_the_contract_entry_point(
        self, guard: Guard, scenario_dsn: str
    ) -> None:
        """`async with await guard.connect_async(...)` yields a guarded connection."""
        async with await guard.connect_async(scenario_dsn, user="alice", ticket="T-100") as aconn:
            cur = await aconn.execute("SELECT name, email FROM customers WHERE id = %s", [42])
            assert await cur.fetchall() == [("Name-0042", "c0042@mail.example")]
            with pytest.raises(AccessDenied):
                await aconn.execute("SELECT email FROM customers")

    async def test_named_parameters_and_escaped_percent(
        self, alice: AsyncGuardedConnection
    ) -> None:
        """%(name)s placeholders and %% escapes are analyzed as psycopg sends them."""
        cur = await alice.execute(
            "SELECT id FROM orders WHERE customer_id = %(c)s AND status LIKE 'p%%'", {"c": 42}
        )
        assert await cur.fetchall() == [(422,)]

    async def test_cursor_fetch_paths(self, alice: AsyncGuardedConnection) -> None:
        """fetchone, fetchmany, fetchall and async iteration all work."""
        cur = alice.cursor()
        await cur.execute("SELECT id FROM orders WHERE customer_id = 42 ORDER BY id")
        assert await cur.fetchone() == (421,)
        assert await cur.fetchmany(1) == [(422,)]
        assert await cur.fetchall() == [(423,)]
        await cur.execute("SELECT id FROM orders WHERE customer_id = 42 ORDER BY id")
        assert [row[0] async for row in cur] == [421, 422, 423]

    async def test_named_server_side_cursor(self, alice: AsyncGuardedConnection) -> None:
        """A named (server-side) async cursor is guarded too."""
        async with alice.cursor(name="browse") as cur:
            await cur.execute("SELECT id FROM orders WHERE customer_id = 42 ORDER BY id")
            assert await cur.fetchall() == [(421,), (422,), (423,)]
        async with alice.cursor(name="leak") as cur:
            with pytest.raises(AccessDenied):
                await cur.execute("SELECT email FROM customers")

    async def test_a_named_cursor_stops_when_its_ticket_closes(
        self, scenario_dsn: str, sink: MemoryAuditSink
    ) -> None:
        """An async server-side cursor's next fetch is refused once its ticket closed."""
        store = MemoryTicketStore(scenario.tickets())
        guard = Guard.from_directory(scenario.policies_dir(), tickets=store, audit=sink)
        try:
            async with (
                await AsyncGuardedConnection.connect(guard, scenario_dsn, ALICE) as aconn,
                aconn.transaction(),
                aconn.cursor(name="browse") as cur,
            ):
                await cur.execute("SELECT id FROM orders WHERE customer_id = 42 ORDER BY id")
                assert await cur.fetchone() == (421,)
                t100 = store.get("T-100")
                assert t100 is not None
                store.put(replace(t100, status="closed"))
                with pytest.raises(AccessDenied) as info:
                    await cur.fetchmany(5)
                assert info.value.reason == "ticket.not_open"
                assert await cur.fetchall() == []
        finally:
            guard.close()

    async def test_stream_is_checked_when_called(self, alice: AsyncGuardedConnection) -> None:
        """cursor.stream() is decided before anything is sent, at the call itself."""
        cur = alice.cursor()
        stream = cur.stream("SELECT id FROM orders WHERE customer_id = 42 ORDER BY id")
        assert [row[0] async for row in stream] == [421, 422, 423]
        with pytest.raises(AccessDenied):
            cur.stream("SELECT email FROM customers")

    async def test_copy_and_pipeline_are_refused(
        self, alice: AsyncGuardedConnection, sink: MemoryAuditSink
    ) -> None:
        """COPY and pipeline mode are refused outright, and audited."""
        with pytest.raises(AccessDenied):
            alice.cursor().copy("COPY customers TO STDOUT")
        with pytest.raises(AccessDenied):
            alice.pipeline()
        assert sink.reasons() == ["statement.forbidden", "path.forbidden"]

    async def test_executemany_checks_every_parameter_set(
        self, alice: AsyncGuardedConnection
    ) -> None:
        """One out-of-scope row in executemany refuses the whole batch before sending."""
        cur = alice.cursor()
        stmt = "UPDATE orders SET status = %s WHERE customer_id = %s AND id = %s"
        with pytest.raises(AccessDenied):
            await cur.executemany(stmt, [("refunded", 42, 421), ("refunded", 7, 71)])
        await cur.executemany(stmt, [("refunded", 42, 421), ("refunded", 42, 422)])
        await cur.execute("SELECT id, status FROM orders WHERE customer_id = 42 ORDER BY id")
        assert (await cur.fetchall())[:2] == [(421, "refunded"), (422, "refunded")]

    async def test_wrapped_client_cursor_is_analyzed_on_merged_text(
        self, guard: Guard, scenario_dsn: str
    ) -> None:
        """wrap_async on an AsyncClientCursor connection decides on the merged text."""
        raw = await psycopg.AsyncConnection.connect(
            scenario_dsn, cursor_factory=psycopg.AsyncClientCursor
        )
        try:
            conn = wrap_async(guard, raw, ALICE)
            with pytest.raises(AccessDenied):
                await conn.execute(
                    "SELECT id, name, email FROM customers WHERE id = 42 -- %s", ["\nOR true --"]
                )
            cur = await conn.execute("SELECT name FROM customers WHERE id = %s", [42])
            assert await cur.fetchall() == [("Name-0042",)]
        finally:
            await raw.close()

    async def test_refusal_is_a_permission_error(self, alice: AsyncGuardedConnection) -> None:
        """A refusal is an AccessGuardError and psycopg's InsufficientPrivilege."""
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            await alice.execute("SELECT card_token FROM payments WHERE customer_id = 42")
        assert isinstance(info.value, AccessGuardError)

    async def test_ledger_counts_rows_handed_over(self, scenario_dsn: str) -> None:
        """The access ledger counts the statement and exactly the rows fetched."""
        sink = MemoryAuditSink()
        guard = Guard.from_directory(
            scenario.policies_dir(), tickets=scenario.tickets(), audit=sink
        )
        async with await AsyncGuardedConnection.connect(guard, scenario_dsn, ALICE) as aconn:
            cur = await aconn.execute("SELECT id FROM orders WHERE customer_id = 42")
            assert len(await cur.fetchall()) == 3
        guard.close()
        ledger = [e for e in sink.events if e["event.action"] == "ledger"]
        assert sum(e["accessguard.rows"] for e in ledger) == 3
        assert sum(e["accessguard.statements"] for e in ledger) == 1

    async def test_row_cap_refuses_before_rows_are_handed_over(
        self, alice: AsyncGuardedConnection, scenario_dsn: str, sink: MemoryAuditSink
    ) -> None:
        """Past 500 rows of a scoped table: refused at execute, or at the fetch that passes it."""
        async with await psycopg.AsyncConnection.connect(scenario_dsn, autocommit=True) as admin:
            await admin.execute(
                "INSERT INTO orders (id, customer_id, status, total_cents) "
                "SELECT 100000 + g, 42, 'bulk', 1 FROM generate_series(1, 498) g"
            )
        cur = alice.cursor()
        with pytest.raises(Throttled) as info:
            await cur.execute("SELECT id FROM orders WHERE customer_id = 42")
        assert info.value.reason == "throttle.rows"
        assert await cur.fetchall() == []
        async with alice.cursor(name="big") as named:
            await named.execute("SELECT id FROM orders WHERE customer_id = 42")
            assert len(await named.fetchmany(500)) == 500
            with pytest.raises(Throttled):
                await named.fetchone()
        assert sink.reasons() == ["throttle.rows", "throttle.rows"]


@db
class TestAsyncTransaction:
    async def test_block_yields_only_the_guarded_connection(
        self, alice: AsyncGuardedConnection
    ) -> None:
        """`async with aconn.transaction() as tx`: tx leads back to the guarded connection only."""
        async with alice.transaction() as tx:
            assert tx.connection is alice
            assert not hasattr(tx, "pgconn")
            assert not isinstance(tx.connection, psycopg.AsyncConnection)
            with pytest.raises(AccessDenied):
                await tx.connection.execute("SELECT email FROM customers")

    async def test_commits_and_rolls_back_like_psycopg(self, alice: AsyncGuardedConnection) -> None:
        """The block commits on success, rolls back on error, and nests as a savepoint."""
        stmt = "UPDATE orders SET status = %s WHERE customer_id = 42 AND id = %s"
        async with alice.transaction():
            await alice.execute(stmt, ["refunded", 421])
        try:
            async with alice.transaction():
                await alice.execute(stmt, ["lost", 422])
                raise ZeroDivisionError  # noqa: TRY301 - the error that rolls the block back
        except ZeroDivisionError:
            pass
        async with alice.transaction(), alice.transaction("inner") as inner:
            assert inner.savepoint_name == "inner"
            await alice.execute(stmt, ["shipped", 423])
        cur = await alice.execute(
            "SELECT id, status FROM orders WHERE customer_id = 42 ORDER BY id"
        )
        assert [row[1] for row in await cur.fetchall()] == ["refunded", "pending", "shipped"]


# ---------------------------------------------------------------------- red team


def _cases() -> list[ParameterSet]:
    return redteam_params("server")


@pytest.fixture(scope="module")
def redteam_db(pg_server: PgServerLike, scenario_template: str) -> Iterator[str]:
    """One scenario copy for the module's red-team cases (each rolled back)."""
    with database_copy(pg_server, scenario_template, prefix="ag_aio") as dsn:
        yield dsn


@db
class TestAsyncRedteam:
    @pytest.mark.parametrize("case", _cases())
    async def test_case(self, case: RedteamCase, unlimited: Guard, redteam_db: str) -> None:
        """Attacks are refused; allowed cases return what the sync adapter returns."""
        conn = await AsyncGuardedConnection.connect(unlimited, redteam_db, ALICE, options=TIMEOUT)
        try:
            cur = conn.cursor()
            await cur.execute(case.sql, case.params)
            rows: Rows | AccessGuardError = (
                await cur.fetchall() if cur.description is not None else []
            )
        except AccessGuardError as exc:
            rows = exc
        finally:
            await conn.rollback()
            await conn.close()
        if not (case.allowed or case.id in ALLOWED_EQUIVALENT):
            assert isinstance(rows, AccessGuardError), "an attack was not refused"
            return
        assert not isinstance(rows, AccessGuardError), f"refused: {rows}"
        expected = reference_result(unlimited, redteam_db, case)
        assert not isinstance(expected, AccessGuardError)
        assert sorted(rows, key=repr) == sorted(expected, key=repr)
