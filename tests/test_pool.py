"""The guarded psycopg_pool: one employee per checkout, nothing carried to the next one."""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest
from casefiles import PgServerLike, RedteamCase, database_copy, load_redteam_cases
from test_redteam import ALLOWED_EQUIVALENT, TIMEOUT, redteam_params, run_case

from accessguard import AccessDenied, AccessGuardError, ConfigurationError, Guard, scenario
from accessguard.adapters.pool import GuardedPool
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
