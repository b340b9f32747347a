"""The guarded psycopg_pool: one employee per checkout, nothing carried to the next one."""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import anyio
import psycopg
import pytest
from casefiles import PgServerLike, RedteamCase, database_copy, load_redteam_cases
from test_redteam import ALLOWED_EQUIVALENT, TIMEOUT, redteam_params, run_case

from accessguard import AccessDenied, AccessGuardError, ConfigurationError, Guard, scenario
from accessguard.adapters.pool import GuardedAsyncPool, GuardedPool
from accessguard.testing import MemoryAuditSink

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from _pytest.mark.structures import ParameterSet

db = pytest.mark.db
CASES = load_redteam_cases()
Rows = list[tuple[Any, ...]]
QUERY = "SELECT name FROM customers WHERE id = %s"


@pytest.fixture
def guard() -> Iterator[Guard]:
    with Guard.from_directory(
        scenario.policies_dir(), tickets=scenario.tickets(), audit=MemoryAuditSink()
    ) as guard:
        yield guard


@pytest.fixture
def pool(guard: Guard, scenario_dsn: str) -> Iterator[GuardedPool]:
    """A pool of one physical connection, so consecutive checkouts share it."""
    with GuardedPool(guard, scenario_dsn, min_size=1, max_size=1) as pool:
        yield pool


@db
class TestCheckout:
    def test_contract_entry_point(self, guard: Guard, scenario_dsn: str) -> None:
        """guard.pool(dsn) hands out guarded connections per checkout."""
        pool = guard.pool(scenario_dsn, min_size=1, max_size=1)
        try:
            with pool.connection(user="alice", ticket="T-100") as conn:
                assert conn.execute(QUERY, [42]).fetchall() == [("Name-0042",)]
                with pytest.raises(AccessDenied):
                    conn.execute("SELECT email FROM customers")
        finally:
            pool.close()

    def test_next_employee_gets_nothing_of_the_previous_one(self, pool: GuardedPool) -> None:
        """Checkout as alice, return, checkout as bob: bob is refused alice's customer."""
        with pool.connection(user="alice", ticket="T-100") as conn:
            pid = conn._raw.info.backend_pid
            assert conn.execute(QUERY, [42]).fetchall() == [("Name-0042",)]
        with pool.connection(user="bob") as conn:
            assert conn._raw.info.backend_pid == pid  # the same physical connection
            assert conn.user == "bob"
            with pytest.raises(AccessDenied) as info:
                conn.execute(QUERY, [42])
            assert info.value.reason != "session.unbound"
        with pool.connection(user="bob", ticket="T-100") as conn, pytest.raises(AccessDenied):
            conn.execute(QUERY, [42])

    def test_session_state_is_discarded_on_return(self, pool: GuardedPool) -> None:
        """Settings, temporary tables and prepared statements do not outlive a checkout."""
        with pool.connection(user="alice", ticket="T-100") as conn:
            raw = conn._raw
            pid = raw.info.backend_pid
            raw.execute("SET application_name = 'alice-T-100'")
            raw.execute("CREATE TEMP TABLE alice_scratch (id int)")
            raw.execute("PREPARE alice_stmt AS SELECT 1")
        with pool.connection(user="bob") as conn:
            raw = conn._raw
            assert raw.info.backend_pid == pid
            row = raw.execute(
                "SELECT current_setting('application_name'), "
                "to_regclass('pg_temp.alice_scratch') IS NULL, "
                "(SELECT count(*) FROM pg_prepared_statements WHERE name = 'alice_stmt')"
            ).fetchone()
            assert row == ("", True, 0)

    def test_a_kept_reference_dies_with_its_checkout(self, pool: GuardedPool) -> None:
        """A connection or cursor kept past its checkout cannot reach the next one."""
        with pool.connection(user="alice", ticket="T-100") as conn:
            cur = conn.cursor()
            cur.execute(QUERY, [42])
        assert conn.closed
        with pool.connection(user="bob"):
            with pytest.raises(AccessDenied, match="returned to the pool") as info:
                cur.execute(QUERY, [42])
            assert info.value.reason == "session.returned"
            with pytest.raises(Exception, match="returned to the pool"):
                conn.execute(QUERY, [42])

    def test_employee_from_acting_as(self, guard: Guard, pool: GuardedPool) -> None:
        """Without user=, the checkout takes the employee bound by guard.acting_as."""
        with guard.acting_as(user="alice", ticket="T-100"), pool.connection() as conn:
            assert conn.user == "alice"
            assert conn.execute(QUERY, [42]).fetchall() == [("Name-0042",)]

    def test_concurrent_checkouts_stay_apart(self, guard: Guard, scenario_dsn: str) -> None:
        """Threads acting as alice and bob at once each get their own rights."""
        barrier = threading.Barrier(2)

        def work(shared: GuardedPool, user: str, ticket: str | None) -> str:
            with guard.acting_as(user=user, ticket=ticket), shared.connection() as conn:
                barrier.wait(timeout=10)  # both checked out at the same time
                try:
                    conn.execute(QUERY, [42])
                except AccessDenied as exc:
                    return str(exc.reason)
                finally:
                    barrier.wait(timeout=10)
                return "allowed"

        with (
            GuardedPool(guard, scenario_dsn, min_size=2, max_size=2) as pool,
            ThreadPoolExecutor(max_workers=2) as executor,
        ):
            alice = executor.submit(work, pool, "alice", "T-100")
            bob = executor.submit(work, pool, "bob", None)
            assert (alice.result(timeout=30), bob.result(timeout=30)) == (
                "allowed",
                "ticket.required",
            )

    def test_nobody_bound_is_refused(self, pool: GuardedPool) -> None:
        """A checkout with no employee named or bound is a ConfigurationError."""
        with pytest.raises(ConfigurationError), pool.connection():
            pass
        with pytest.raises(ConfigurationError), pool.connection(ticket="T-100"):
            pass

    def test_commit_on_success(self, pool: GuardedPool) -> None:
        """An allowed write is committed when the checkout ends without error."""
        stmt = "UPDATE orders SET status = %s WHERE customer_id = 42 AND id = %s"
        with pool.connection(user="alice", ticket="T-100") as conn:
            conn.execute(stmt, ["refunded", 421])
        with pool.connection(user="alice", ticket="T-100") as conn:
            rows = conn.execute("SELECT status FROM orders WHERE customer_id = 42 AND id = 421")
            assert rows.fetchall() == [("refunded",)]


@pytest.fixture
def audited(scenario_dsn: str) -> Iterator[tuple[GuardedPool, MemoryAuditSink]]:
    """A one-connection pool whose guard audits to a sink the test reads."""
    sink = MemoryAuditSink()
    with (
        Guard.from_directory(scenario.policies_dir(), tickets=scenario.tickets(), audit=sink) as g,
        GuardedPool(g, scenario_dsn, min_size=1, max_size=1) as pool,
    ):
        yield pool, sink


@db
class TestCursorsBelongToTheirCheckout:
    def test_every_cursor_refuses_after_return(
        self, audited: tuple[GuardedPool, MemoryAuditSink]
    ) -> None:
        """Cursors from execute(), cursor() and named cursors all refuse (audited) once returned."""
        pool, sink = audited
        with pool.connection(user="alice", ticket="T-100") as conn:
            executed = conn.execute(QUERY, [42])
            plain = conn.cursor()
            named = conn.cursor("kept")
            named.execute("SELECT id FROM orders WHERE customer_id = 42 ORDER BY id")
            assert named.fetchone() == (421,)
            with conn.transaction() as tx:
                in_block = tx.connection.cursor()
            stream = conn.cursor().stream("SELECT id FROM orders WHERE customer_id = 42")
        with pool.connection(user="bob") as bobs:  # the same backend, now bob's
            with pytest.raises(psycopg.InterfaceError):  # its cursor was closed on return
                next(stream)
            for cur in (executed, plain, named, in_block):
                assert cur.closed
                with pytest.raises(AccessDenied) as info:
                    cur.execute(QUERY, [42])
                assert info.value.reason == "session.returned"
            assert executed.fetchall() == []
            with pytest.raises(AccessDenied):
                bobs.execute(QUERY, [42])  # bob himself still has no right to it
        assert sink.reasons() == ["session.returned"] * 4 + ["ticket.required"]

    def test_a_cursor_made_by_execute_is_closed_on_return(
        self, audited: tuple[GuardedPool, MemoryAuditSink]
    ) -> None:
        """conn.execute()'s cursor is closed with the checkout, like conn.cursor()'s."""
        pool, _sink = audited
        with pool.connection(user="alice", ticket="T-100") as conn:
            cur = conn.execute("SELECT id FROM orders WHERE customer_id = 42 ORDER BY id")
            assert cur.fetchone() == (421,)
        assert cur.closed
        assert cur.fetchall() == []  # the rest of alice's result is gone with her checkout

    def test_a_stream_kept_past_its_checkout_ends_with_it(self, pool: GuardedPool) -> None:
        """A stream started and not finished holds psycopg's connection lock: returning the
        connection waited for it forever. The stream now ends with its checkout."""
        query = "SELECT id FROM orders WHERE customer_id = 42 ORDER BY id"
        kept: list[Any] = []

        def checkout() -> None:
            with pool.connection(user="alice", ticket="T-100") as conn:
                stream = conn.cursor().stream(query)
                assert next(stream) == (421,)
                kept.append(stream)

        worker = threading.Thread(target=checkout, daemon=True)
        worker.start()
        worker.join(20)
        assert not worker.is_alive()  # returned (it hung here)
        (stream,) = kept
        with pytest.raises(psycopg.InterfaceError):  # closed with its cursor, on return
            next(stream)
        with pool.connection(user="bob") as bobs:
            assert bobs.execute("SELECT id FROM products WHERE id = 1").fetchall() == [(1,)]


@db
class TestReset:
    def test_many_checkouts_keep_prepared_statements_working(self, pool: GuardedPool) -> None:
        """Past psycopg's prepare threshold (5), checkouts run and the reset never fails.

        A failing reset makes the pool replace the connection: one backend
        throughout shows that every reset succeeded.
        """
        backends = set()
        for _ in range(12):
            with pool.connection(user="alice", ticket="T-100") as conn:
                for _ in range(7):  # prepared from the 6th execution on
                    assert conn.execute(QUERY, [42]).fetchall() == [("Name-0042",)]
                conn.commit()  # no rollback on return (a rollback clears psycopg's record)
                backends.add(conn._raw.info.backend_pid)  # the test peeks at the raw connection
        assert len(backends) == 1

    def test_threads_checking_out_repeatedly(self, guard: Guard, scenario_dsn: str) -> None:
        """Four threads, two physical connections, five checkouts each: every statement runs."""

        def work(shared: GuardedPool) -> int:
            done = 0
            for _ in range(5):
                with shared.connection(user="dave") as conn:
                    for _ in range(5):
                        rows = conn.execute("SELECT id FROM products WHERE id = %s", [9])
                        done += len(rows.fetchall())
            return done

        with (
            GuardedPool(guard, scenario_dsn, min_size=2, max_size=2) as pool,
            ThreadPoolExecutor(max_workers=4) as executor,
        ):
            futures = [executor.submit(work, pool) for _ in range(4)]
            assert [f.result(timeout=60) for f in futures] == [25] * 4

    def test_session_state_and_prepared_statements_are_gone(self, pool: GuardedPool) -> None:
        """After a return, the server holds no prepared statement of the previous checkout."""
        with pool.connection(user="alice", ticket="T-100") as conn:
            for _ in range(7):
                conn.execute(QUERY, [42]).fetchall()
        with pool.connection(user="dave") as conn:  # the test peeks through the raw connection
            peek = conn._raw.execute("SELECT count(*) FROM pg_prepared_statements", prepare=False)
            assert peek.fetchone() == (0,)


@db
@pytest.mark.anyio
class TestAsyncPool:
    async def test_contract_entry_point(self, guard: Guard, scenario_dsn: str) -> None:
        """guard.pool_async(dsn) hands out guarded async connections per checkout."""
        async with guard.pool_async(scenario_dsn, min_size=1, max_size=1) as pool:
            async with pool.connection(user="alice", ticket="T-100") as conn:
                cur = await conn.execute(QUERY, [42])
                assert await cur.fetchall() == [("Name-0042",)]
                with pytest.raises(AccessDenied):
                    await conn.execute("SELECT email FROM customers")
            async with pool.connection(user="bob") as conn:
                with pytest.raises(AccessDenied):
                    await conn.execute(QUERY, [42])

    async def test_kept_cursors_refuse_after_return(self, scenario_dsn: str) -> None:
        """Async cursors (execute(), cursor(), named) refuse, audited, once their checkout ends."""
        sink = MemoryAuditSink()
        with Guard.from_directory(
            scenario.policies_dir(), tickets=scenario.tickets(), audit=sink
        ) as guard:
            async with GuardedAsyncPool(guard, scenario_dsn, min_size=1, max_size=1) as pool:
                async with pool.connection(user="alice", ticket="T-100") as conn:
                    executed = await conn.execute(QUERY, [42])
                    plain = conn.cursor()
                    named = conn.cursor("kept")
                    await named.execute("SELECT id FROM orders WHERE customer_id = 42")
                async with pool.connection(user="bob") as bobs:
                    for cur in (executed, plain, named):
                        assert cur.closed
                        with pytest.raises(AccessDenied) as info:
                            await cur.execute(QUERY, [42])
                        assert info.value.reason == "session.returned"
                    assert await executed.fetchall() == []
                    assert conn.closed
                    with pytest.raises(AccessDenied):
                        conn.cursor()
                    assert not bobs.closed
        refusals = [e["event.reason"] for e in sink.events if e["event.action"] != "ledger"]
        assert refusals == ["session.returned"] * 4

    async def test_many_checkouts_and_tasks(self, guard: Guard, scenario_dsn: str) -> None:
        """Past the prepare threshold, over concurrent tasks, every reset and statement works."""
        backends: set[int] = set()
        results: list[int] = []

        async def work(shared: GuardedAsyncPool) -> None:
            done = 0
            for _ in range(5):
                async with shared.connection(user="dave") as conn:
                    for _ in range(5):
                        cur = await conn.execute("SELECT id FROM products WHERE id = %s", [9])
                        done += len(await cur.fetchall())
                    await conn.commit()
                    backends.add(conn._raw.info.backend_pid)  # the test peeks
            results.append(done)

        async with (
            GuardedAsyncPool(guard, scenario_dsn, min_size=2, max_size=2) as pool,
            anyio.create_task_group() as tasks,
        ):
            for _ in range(4):
                tasks.start_soon(work, pool)
        assert results == [25] * 4
        assert len(backends) <= 2  # no reset failed (a failed one replaces the connection)

    async def test_employee_bound_or_refused(self, guard: Guard, scenario_dsn: str) -> None:
        """Without user=, a checkout takes guard.acting_as's employee; with none bound, refused."""
        async with GuardedAsyncPool(guard, scenario_dsn, min_size=1, max_size=1) as pool:
            with pytest.raises(ConfigurationError):
                async with pool.connection():
                    pass
            checkout = pool.connection()  # the employee is the one bound when it is entered
            with guard.acting_as(user="alice", ticket="T-100"):
                async with checkout as conn:
                    assert conn.user == "alice"
            with guard.acting_as(user="alice", ticket="T-100"):
                async with pool.connection() as conn:
                    assert conn.user == "alice"


# ---------------------------------------------------------------------- red team


def _cases() -> list[ParameterSet]:
    return redteam_params("server")


@pytest.fixture(scope="module")
def redteam_pool(
    pg_server: PgServerLike, scenario_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GuardedPool]:
    """A pool on one scenario copy, guarded without limits.toml (90 statements in a minute)."""
    policies: Path = tmp_path_factory.mktemp("policies") / "policies"
    shutil.copytree(scenario.policies_dir(), policies)
    (policies / "limits.toml").unlink()
    with (
        database_copy(pg_server, scenario_template, prefix="ag_pool") as dsn,
        Guard.from_directory(
            policies, tickets=scenario.tickets(), audit=MemoryAuditSink()
        ) as guard,
        GuardedPool(guard, dsn, min_size=1, max_size=2, kwargs={"options": TIMEOUT}) as pool,
    ):
        yield pool


def _run(pool: GuardedPool, case: RedteamCase, *, user: str) -> Rows | AccessGuardError:
    with pool.connection(user=user, ticket="T-100") as conn:
        return run_case(conn, case)


@db
class TestPoolRedteam:
    @pytest.mark.parametrize("case", _cases())
    def test_case(self, case: RedteamCase, redteam_pool: GuardedPool) -> None:
        """Through a checkout, attacks are refused and allowed cases run (as alice)."""
        rows = _run(redteam_pool, case, user="alice")
        if case.allowed or case.id in ALLOWED_EQUIVALENT:
            assert not isinstance(rows, AccessGuardError), f"refused: {rows}"
        else:
            assert isinstance(rows, AccessGuardError), "an attack was not refused"
