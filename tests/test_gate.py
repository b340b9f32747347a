"""The one gate rows leave through: every row path, every adapter, against the cap and the ledger.

The cases are data (tests/cases/row-paths.yaml): one per way a guarded cursor
hands rows out, each run on every adapter that has the path. Whatever the
steps, the rows handed out are the case's count, no statement hands out more
than its cap, and the access ledger counts exactly the rows handed out.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
import yaml

from accessguard import AccessGuardError, Guard, scenario
from accessguard.adapters import gate
from accessguard.adapters.aio import AsyncGuardedConnection
from accessguard.adapters.dbapi import GuardedDbapiConnection
from accessguard.adapters.psycopg3 import GuardedConnection
from accessguard.guard import Session

if TYPE_CHECKING:
    from collections.abc import Iterator

    from _pytest.mark.structures import ParameterSet

    from accessguard.testing import MemoryAuditSink

pytestmark = [pytest.mark.anyio, pytest.mark.db]

CASES_FILE = Path(__file__).resolve().parent / "cases" / "row-paths.yaml"
ALICE = Session(user="alice", ticket="T-100")
CAP = 500
BULK = "INSERT INTO orders (id, customer_id, status, total_cents) VALUES (%s, 42, 'bulk', 1)"
ADAPTERS = frozenset({"sync", "client", "async", "dbapi"})
CASE_KEYS = frozenset({"id", "why", "adapters", "cursor", "steps", "rows", "unscoped", "refusals"})
STEPS = frozenset(
    {
        "execute",
        "fetchone",
        "fetchmany",
        "fetchall",
        "iterate",
        "scroll",
        "nextsets",
        "stream",
        "drain",
        "executemany",
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class RowCase:
    """One entry of row-paths.yaml."""

    id: str
    why: str
    adapters: tuple[str, ...]
    named: bool
    steps: tuple[tuple[str, Any], ...]
    rows: int
    #: of those, rows of unscoped tables (products), which the ledger does not count
    unscoped: int
    refusals: tuple[str, ...]


def load_row_cases(path: Path = CASES_FILE) -> tuple[dict[str, str], list[RowCase]]:
    """The file's queries and cases, checked strictly (a typo fails instead of testing less)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    queries: dict[str, str] = data["queries"]
    cases = []
    for entry in data["cases"]:
        unknown = set(entry) - CASE_KEYS
        assert not unknown, f"{entry.get('id')}: unknown keys {unknown}"
        assert set(entry["adapters"]) <= ADAPTERS, entry["id"]
        steps = []
        for step in entry["steps"]:
            ((verb, arg),) = step.items()
            assert verb in STEPS, f"{entry['id']}: unknown step {verb}"
            steps.append((verb, arg))
        cases.append(
            RowCase(
                id=entry["id"],
                why=entry["why"],
                adapters=tuple(entry["adapters"]),
                named=entry.get("cursor") == "named",
                steps=tuple(steps),
                rows=int(entry["rows"]),
                unscoped=int(entry.get("unscoped", 0)),
                refusals=tuple(entry["refusals"]),
            )
        )
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    return queries, cases


QUERIES, CASES = load_row_cases()


def _params(adapter: str) -> list[ParameterSet]:
    return [
        pytest.param(case, id=f"{case.id}-{adapter}") for case in CASES if adapter in case.adapters
    ]


@dataclass(slots=True)
class Run:
    """What one case handed out and what was refused along the way."""

    handed: int = 0
    refusals: list[str] = field(default_factory=list)

    def refused(self, exc: AccessGuardError) -> None:
        self.refusals.append(str(exc.reason))


# ---------------------------------------------------------------------- drivers


class SyncDriver:
    """Plays steps on a sync guarded cursor (psycopg, or DB-API over sqlite3)."""

    def __init__(self, conn: Any, *, named: bool, qmark: bool) -> None:
        self.cur = conn.cursor("rows") if named else conn.cursor()
        self.qmark = qmark
        self.streams: dict[str, Any] = {}

    def sql(self, name: str) -> str:
        text = QUERIES[name]
        return text.replace("%s", "?") if self.qmark else text

    def play(self, run: Run, verb: str, arg: Any) -> None:
        cur = self.cur
        if verb == "execute":
            cur.execute(self.sql(arg))
        elif verb == "fetchone":
            for _ in range(int(arg)):
                if cur.fetchone() is not None:
                    run.handed += 1
        elif verb == "fetchmany":
            run.handed += len(cur.fetchmany(int(arg)))
        elif verb == "fetchall":
            run.handed += len(cur.fetchall())
        elif verb == "iterate":
            for _ in cur:
                run.handed += 1
        elif verb == "scroll":
            cur.scroll(int(arg))
        elif verb == "stream":
            self.streams[arg["as"]] = cur.stream(self.sql(arg["query"]))
        elif verb == "drain":
            for _ in self.streams[arg]:
                run.handed += 1
        elif verb == "executemany":
            cur.executemany(self.sql(arg["query"]), arg["params"], returning=arg["returning"])
        elif verb == "nextsets":
            while True:
                try:
                    run.handed += len(cur.fetchall())
                except AccessGuardError as exc:
                    run.refused(exc)
                try:
                    if not cur.nextset():
                        break
                except AccessGuardError as exc:
                    run.refused(exc)


class AsyncDriver:
    """Plays steps on a psycopg async guarded cursor."""

    def __init__(self, conn: AsyncGuardedConnection, *, named: bool) -> None:
        self.cur = conn.cursor("rows") if named else conn.cursor()
        self.streams: dict[str, Any] = {}

    async def play(self, run: Run, verb: str, arg: Any) -> None:
        cur = self.cur
        if verb == "execute":
            await cur.execute(QUERIES[arg])
        elif verb == "fetchone":
            for _ in range(int(arg)):
                if await cur.fetchone() is not None:
                    run.handed += 1
        elif verb == "fetchmany":
            run.handed += len(await cur.fetchmany(int(arg)))
        elif verb == "fetchall":
            run.handed += len(await cur.fetchall())
        elif verb == "iterate":
            async for _ in cur:
                run.handed += 1
        elif verb == "scroll":
            await cur.scroll(int(arg))
        elif verb == "stream":
            self.streams[arg["as"]] = cur.stream(QUERIES[arg["query"]])
        elif verb == "drain":
            async for _ in self.streams[arg]:
                run.handed += 1
        elif verb == "executemany":
            await cur.executemany(QUERIES[arg["query"]], arg["params"], returning=arg["returning"])
        elif verb == "nextsets":
            while True:
                try:
                    run.handed += len(await cur.fetchall())
                except AccessGuardError as exc:
                    run.refused(exc)
                try:
                    if not cur.nextset():
                        break
                except AccessGuardError as exc:
                    run.refused(exc)


# ---------------------------------------------------------------------- checks


def refusals(sink: MemoryAuditSink) -> list[str]:
    """The reasons of the audited refusals (the ledger's entries left out)."""
    return [str(e["event.reason"]) for e in sink.events if e["event.action"] != "ledger"]


def check(case: RowCase, run: Run, guard: Guard, sink: MemoryAuditSink) -> None:
    """The case's rows and refusals; the ledger (flushed by closing the guard) counts them all."""
    assert (run.handed, run.refusals) == (case.rows, list(case.refusals))
    guard.close()
    ledger = [e for e in sink.events if e["event.action"] == "ledger"]
    assert sum(int(e["accessguard.rows"]) for e in ledger) == run.handed - case.unscoped
    shapes: dict[str, list[int]] = {}  # no statement over its cap
    for entry in ledger:  # (entries of one shape add up across flush windows)
        counts = shapes.setdefault(str(entry["accessguard.fingerprint"]), [0, 0])
        counts[0] += int(entry["accessguard.rows"])
        counts[1] += int(entry["accessguard.statements"])
    assert all(rows <= CAP * statements for rows, statements in shapes.values())
    throttled = [e for e in sink.events if e.get("event.reason") == "throttle.rows"]
    assert len(throttled) == case.refusals.count("throttle.rows")


@pytest.fixture
def bulk_dsn(scenario_dsn: str) -> str:
    """The scenario with 2,003 orders for customer 42."""
    with psycopg.connect(scenario_dsn, autocommit=True) as admin, admin.cursor() as cur:
        cur.executemany(BULK, [(100_000 + i,) for i in range(1, 2001)])
    return scenario_dsn


@pytest.fixture
def bulk_sqlite() -> Iterator[sqlite3.Connection]:
    """The scenario in sqlite3, with 2,003 orders for customer 42."""
    conn = sqlite3.connect(":memory:")
    scenario.load_sqlite(conn)
    conn.executemany(BULK.replace("%s", "?"), [(100_000 + i,) for i in range(1, 2001)])
    conn.commit()
    yield conn
    conn.close()


class TestRowPaths:
    @pytest.mark.parametrize("case", _params("sync"))
    def test_sync(self, case: RowCase, guard: Guard, sink: MemoryAuditSink, bulk_dsn: str) -> None:
        """psycopg sync: rows handed out are the case's, within the cap, and all in the ledger."""
        run = Run()
        with GuardedConnection.connect(guard, bulk_dsn, ALICE) as conn:
            driver = SyncDriver(conn, named=case.named, qmark=False)
            for verb, arg in case.steps:
                try:
                    driver.play(run, verb, arg)
                except AccessGuardError as exc:
                    run.refused(exc)
            driver.cur.close()
        check(case, run, guard, sink)

    @pytest.mark.parametrize("case", _params("client"))
    def test_client_cursor(
        self, case: RowCase, guard: Guard, sink: MemoryAuditSink, bulk_dsn: str
    ) -> None:
        """psycopg with ClientCursor (merged text): the same rows, cap and ledger."""
        run = Run()
        factory = psycopg.ClientCursor
        with GuardedConnection.connect(guard, bulk_dsn, ALICE, cursor_factory=factory) as conn:
            driver = SyncDriver(conn, named=case.named, qmark=False)
            for verb, arg in case.steps:
                try:
                    driver.play(run, verb, arg)
                except AccessGuardError as exc:
                    run.refused(exc)
            driver.cur.close()
        check(case, run, guard, sink)

    @pytest.mark.parametrize("case", _params("async"))
    async def test_async(
        self, case: RowCase, guard: Guard, sink: MemoryAuditSink, bulk_dsn: str
    ) -> None:
        """psycopg async: rows handed out are the case's, within the cap, and all in the ledger."""
        run = Run()
        async with await AsyncGuardedConnection.connect(guard, bulk_dsn, ALICE) as conn:
            driver = AsyncDriver(conn, named=case.named)
            for verb, arg in case.steps:
                try:
                    await driver.play(run, verb, arg)
                except AccessGuardError as exc:
                    run.refused(exc)
            await driver.cur.close()
        check(case, run, guard, sink)

    @pytest.mark.parametrize("case", _params("dbapi"))
    def test_dbapi(
        self, case: RowCase, guard: Guard, sink: MemoryAuditSink, bulk_sqlite: sqlite3.Connection
    ) -> None:
        """DB-API over sqlite3: rows handed out are the case's, within the cap, in the ledger."""
        run = Run()
        conn = GuardedDbapiConnection(guard, bulk_sqlite, ALICE, dialect="sqlite")
        driver = SyncDriver(conn, named=False, qmark=True)
        for verb, arg in case.steps:
            try:
                driver.play(run, verb, arg)
            except AccessGuardError as exc:
                run.refused(exc)
        check(case, run, guard, sink)


class TestClosedGuard:
    def test_statements_refused_after_close(
        self, guard: Guard, sink: MemoryAuditSink, bulk_dsn: str
    ) -> None:
        """Once the guard is closed, a still-open connection refuses every statement, audited."""
        with GuardedConnection.connect(guard, bulk_dsn, ALICE) as conn:
            conn.execute("SELECT id FROM products WHERE id = 1").fetchall()
            guard.close()
            with pytest.raises(AccessGuardError) as info:
                conn.execute("SELECT id FROM products WHERE id = 1")
            assert info.value.reason == "guard.closed"
        assert refusals(sink) == ["guard.closed"]

    def test_rows_the_ledger_cannot_record_are_not_handed_over(
        self, guard: Guard, sink: MemoryAuditSink, bulk_dsn: str
    ) -> None:
        """A result of customer data fetched after close is refused: the ledger no longer counts."""
        with GuardedConnection.connect(guard, bulk_dsn, ALICE) as conn:
            cur = conn.cursor("open")
            cur.execute("SELECT id FROM orders WHERE customer_id = 42 ORDER BY id")
            assert len(cur.fetchmany(10)) == 10
            stream = conn.cursor().stream("SELECT id FROM orders WHERE customer_id = 42")
            guard.close()
            with pytest.raises(AccessGuardError) as info:
                cur.fetchmany(10)
            assert info.value.reason == "guard.closed"
            assert cur.fetchall() == []  # withheld from then on
            with pytest.raises(AccessGuardError):
                next(iter(stream))
            cur.close()
        assert refusals(sink) == ["guard.closed", "guard.closed"]
        ledger = [e for e in sink.events if e["event.action"] == "ledger"]
        assert sum(int(e["accessguard.rows"]) for e in ledger) == 10

    async def test_async_connection_refuses_after_close(
        self, guard: Guard, sink: MemoryAuditSink, bulk_dsn: str
    ) -> None:
        """The async adapter refuses after close too, statements and counted fetches."""
        async with await AsyncGuardedConnection.connect(guard, bulk_dsn, ALICE) as conn:
            cur = conn.cursor("open")
            await cur.execute("SELECT id FROM orders WHERE customer_id = 42 ORDER BY id")
            guard.close()
            with pytest.raises(AccessGuardError):
                await cur.fetchone()
            with pytest.raises(AccessGuardError):
                await conn.execute("SELECT id FROM products WHERE id = 1")
            await cur.close()
        assert refusals(sink) == ["guard.closed", "guard.closed"]

    def test_dbapi_refuses_after_close(self, guard: Guard, bulk_sqlite: sqlite3.Connection) -> None:
        """The DB-API wrapper refuses after close (statements and counted fetches)."""
        conn = GuardedDbapiConnection(guard, bulk_sqlite, ALICE, dialect="sqlite")
        cur = conn.execute("SELECT id FROM orders WHERE customer_id = 42 AND id < 1000")
        guard.close()
        with pytest.raises(AccessGuardError):
            cur.fetchall()
        with pytest.raises(AccessGuardError):
            conn.execute("SELECT id FROM products WHERE id = 1")


class TestExecutemany:
    STMT = "UPDATE orders SET status = ? WHERE customer_id = ? AND id = ?"

    def test_different_statements_refused_and_audited(
        self, guard: Guard, sink: MemoryAuditSink, bulk_dsn: str
    ) -> None:
        """A ClientCursor merges each set into its own text: the batch is refused, audited."""
        stmt = self.STMT.replace("?", "%s")
        factory = psycopg.ClientCursor
        with GuardedConnection.connect(guard, bulk_dsn, ALICE, cursor_factory=factory) as conn:
            with pytest.raises(AccessGuardError) as info:
                conn.cursor().executemany(stmt, [("lost", 42, 421), ("lost", 42, 422)])
            statuses = conn.execute("SELECT status FROM orders WHERE customer_id = 42 AND id < 500")
            assert "lost" not in {row[0] for row in statuses.fetchall()}
        assert info.value.reason == "internal.error"
        assert refusals(sink) == ["internal.error"]

    def test_one_parameter_set_out_of_scope_refuses_the_batch(
        self, guard: Guard, bulk_sqlite: sqlite3.Connection
    ) -> None:
        """Every parameter set is decided before anything is sent: one out of scope, none run."""
        conn = GuardedDbapiConnection(guard, bulk_sqlite, ALICE, dialect="sqlite")
        with pytest.raises(AccessGuardError) as info:
            conn.executemany(self.STMT, [("refunded", 42, 421), ("refunded", 7, 71)])
        assert info.value.reason == "row_scope.other_subject"
        statuses = bulk_sqlite.execute("SELECT status FROM orders WHERE id IN (421, 71)")
        assert "refunded" not in {row[0] for row in statuses}

    async def test_async_different_statements_refused_and_audited(
        self, guard: Guard, sink: MemoryAuditSink, bulk_dsn: str
    ) -> None:
        """The async cursor applies the same executemany rule (its refusal written off the loop)."""
        stmt = self.STMT.replace("?", "%s")
        factory = psycopg.AsyncClientCursor
        async with await AsyncGuardedConnection.connect(
            guard, bulk_dsn, ALICE, cursor_factory=factory
        ) as conn:
            with pytest.raises(AccessGuardError) as info:
                await conn.cursor().executemany(stmt, [("lost", 42, 421), ("lost", 42, 422)])
            cur = await conn.execute(
                "SELECT status FROM orders WHERE customer_id = 42 AND id < 500"
            )
            assert "lost" not in {row[0] for row in await cur.fetchall()}
        assert info.value.reason == "internal.error"
        assert refusals(sink) == ["internal.error"]


class TestRules:
    """The gate's rules on their own: no connection, no I/O but the guard's audited refusal."""

    SQL = "SELECT id FROM orders WHERE customer_id = %s"

    def test_bind_positional_hands_the_conversion_to_the_lane(self, guard: Guard) -> None:
        """Positional values keep their order: converted only when a plan is made."""
        lane = guard.lane(ALICE, "postgres")
        assert gate.bind(lane, self.SQL, [42]) == (self.SQL, [42], gate.convert_query)
        assert gate.bind(lane, "SELECT 1", None) == ("SELECT 1", None, None)

    def test_bind_named_converts_now(self, guard: Guard) -> None:
        """Named values become $n in the text, in $n order, before the decision."""
        lane = guard.lane(ALICE, "postgres")
        sql = "SELECT id FROM orders WHERE customer_id = %(c)s AND id > %(i)s"
        bound = gate.bind(lane, sql, {"i": 400, "c": 42})
        assert bound == (
            "SELECT id FROM orders WHERE customer_id = $1 AND id > $2",
            [42, 400],
            None,
        )

    def test_bind_mismatch_is_refused_and_audited(
        self, guard: Guard, sink: MemoryAuditSink
    ) -> None:
        """Values that do not fit the placeholders: refused before psycopg, one event."""
        lane = guard.lane(ALICE, "postgres")
        with pytest.raises(AccessGuardError) as info:
            gate.bind(lane, "SELECT id FROM orders WHERE customer_id = %(c)s", {"x": 1})
        assert info.value.reason == "sql.params_mismatch"
        assert refusals(sink) == ["sql.params_mismatch"]

    def test_bind_client_side_merges(self, guard: Guard) -> None:
        """With client-side binding the merged text is what is decided and sent."""
        lane = guard.lane(ALICE, "postgres")
        merged = gate.bind(lane, self.SQL, [42], lambda text, values: text % tuple(values))
        assert merged == ("SELECT id FROM orders WHERE customer_id = 42", None, None)

    def test_over_cap_withholds(self, guard: Guard) -> None:
        """At the cap a result passes; one row over, it is withheld from then on."""
        ok = guard.lane(ALICE, "postgres").authorize(self.SQL, [42], gate.convert_query)
        assert ok.row_cap == CAP
        assert not gate.over_cap(ok, CAP)
        assert not ok.withheld
        assert gate.over_cap(ok, CAP + 1)
        assert ok.withheld

    def test_one_statement(self, guard: Guard) -> None:
        """A batch is one statement only if every parameter set made the same text."""
        lane = guard.lane(ALICE, "postgres")
        a = lane.authorize("SELECT id FROM orders WHERE customer_id = 42", None)
        b = lane.authorize("SELECT id FROM orders WHERE customer_id = 42 AND id = 421", None)
        assert gate.one_statement([a, a])
        assert not gate.one_statement([a, b])
