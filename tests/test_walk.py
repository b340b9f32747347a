"""No raw driver object is reachable from a guarded one through public attributes.

The walk starts at every guarded object an application gets (connections,
cursors, named cursors, transaction blocks and what they yield, streams, pool
checkouts, the DB-API wrapper), reads every public attribute and property,
and follows what it finds: our objects, the driver's, containers, and the
generators and frames a ``@contextmanager`` or a generator would expose.
"""

from __future__ import annotations

import sqlite3
import types
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg_pool
import pytest

from accessguard import AccessDenied, Guard
from accessguard.adapters.aio import AsyncGuardedConnection
from accessguard.adapters.dbapi import GuardedDbapiConnection
from accessguard.adapters.pool import GuardedAsyncPool, GuardedPool
from accessguard.adapters.psycopg3 import GuardedConnection
from accessguard.guard import Session

if TYPE_CHECKING:
    from collections.abc import Iterator

    from accessguard.testing import MemoryAuditSink

pytestmark = [pytest.mark.anyio, pytest.mark.db]

ALICE = Session(user="alice", ticket="T-100")
ORDERS = "SELECT id FROM orders WHERE customer_id = 42 ORDER BY id"
_PGCONN = type(psycopg.pq.PGconn.connect(b"host=/nonexistent"))

RAW: tuple[type, ...] = (
    psycopg.Connection,
    psycopg.AsyncConnection,
    psycopg.Cursor,
    psycopg.AsyncCursor,
    psycopg.ServerCursor,
    psycopg.AsyncServerCursor,
    psycopg.Transaction,
    psycopg.AsyncTransaction,
    _PGCONN,
    sqlite3.Connection,
    sqlite3.Cursor,
    psycopg_pool.ConnectionPool,
    psycopg_pool.AsyncConnectionPool,
)
FOLLOWED_MODULES = ("accessguard", "psycopg", "psycopg_pool", "sqlite3", "contextlib")
FOLLOWED_TYPES = (
    types.GeneratorType,
    types.AsyncGeneratorType,
    types.CoroutineType,
    types.FrameType,
)
#: frame attributes that lead to whole modules or the caller, not to what the object holds
SKIPPED = frozenset({"f_globals", "f_builtins", "f_back", "f_code", "gi_code", "ag_code"})


def _children(obj: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        yield from ((f"[{k!r}]", v) for k, v in obj.items())
        return
    if isinstance(obj, list | tuple | set | frozenset):
        yield from ((f"[{i}]", v) for i, v in enumerate(obj))
        return
    for name in dir(obj):
        if name.startswith("_") or name in SKIPPED:
            continue
        try:
            value = getattr(obj, name)
        except Exception:  # noqa: BLE001, S112 - a property that refuses leads nowhere
            continue
        if isinstance(value, types.MethodType | types.BuiltinMethodType):
            continue
        yield f".{name}", value


def _followed(obj: Any) -> bool:
    if isinstance(obj, (dict, list, tuple, set, frozenset, *FOLLOWED_TYPES)):
        return True
    return type(obj).__module__.startswith(FOLLOWED_MODULES)


def reachable_raw(root: Any, label: str, depth: int = 8) -> list[str]:
    """Paths from ``root`` to a raw driver object through public attributes."""
    found: list[str] = []
    seen: set[int] = set()
    frontier = [(label, root)]
    for _ in range(depth):
        following: list[tuple[str, Any]] = []
        for path, obj in frontier:
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if isinstance(obj, RAW):
                found.append(f"{path}: {type(obj).__name__}")
                continue
            if _followed(obj):
                following.extend((path + step, value) for step, value in _children(obj))
        frontier = following
    return found


@pytest.fixture
def unlimited_guard(unlimited: Guard) -> Guard:
    return unlimited


class TestNoRawObjectReachable:
    def test_walk_finds_a_raw_object_where_there_is_one(self, scenario_dsn: str) -> None:
        """The walk itself works: psycopg's own transaction block leads to the raw connection."""
        with psycopg.connect(scenario_dsn) as raw, raw.transaction() as tx:
            assert reachable_raw(tx, "tx")
            assert reachable_raw([{"x": raw}], "nested")

    def test_psycopg_sync(self, unlimited: Guard, scenario_dsn: str) -> None:
        """Connection, cursors, named cursors, transaction blocks and streams (sync)."""
        with GuardedConnection.connect(unlimited, scenario_dsn, ALICE) as conn:
            roots: dict[str, Any] = {"conn": conn, "executed": conn.execute(ORDERS)}
            roots["cursor"] = conn.cursor()
            named = roots["named"] = conn.cursor("walked")
            named.execute(ORDERS)
            named.fetchone()
            stream = conn.cursor().stream(ORDERS)
            next(stream)
            found = reachable_raw(stream, "stream")  # while it runs (it holds the connection)
            stream.close()
            block = roots["block"] = conn.transaction()
            with block as tx:
                roots["tx"] = tx
                with conn.transaction("inner") as inner:
                    roots["inner"] = inner
                    found += [p for k, v in roots.items() for p in reachable_raw(v, k)]
            named.close()
        assert found == []

    async def test_psycopg_async(self, unlimited: Guard, scenario_dsn: str) -> None:
        """Connection, cursors, named cursors, transaction blocks and streams (async)."""
        async with await AsyncGuardedConnection.connect(unlimited, scenario_dsn, ALICE) as conn:
            roots: dict[str, Any] = {"conn": conn, "executed": await conn.execute(ORDERS)}
            roots["cursor"] = conn.cursor()
            named = roots["named"] = conn.cursor("walked")
            await named.execute(ORDERS)
            await named.fetchone()
            stream = conn.cursor().stream(ORDERS)
            await anext(stream)
            found = reachable_raw(stream, "stream")  # while it runs (it holds the connection)
            await stream.aclose()
            block = roots["block"] = conn.transaction()
            async with block as tx:
                roots["tx"] = tx
                async with conn.transaction("inner") as inner:
                    roots["inner"] = inner
                    found += [p for k, v in roots.items() for p in reachable_raw(v, k)]
            await named.close()
        assert found == []

    def test_pool_checkouts(self, unlimited: Guard, scenario_dsn: str) -> None:
        """The pool, a checkout and its cursors, during the checkout and after it."""
        with GuardedPool(unlimited, scenario_dsn, min_size=1, max_size=1) as pool:
            checkout = pool.connection(user="alice", ticket="T-100")
            roots: dict[str, Any] = {"pool": pool, "checkout_block": checkout}
            with checkout as conn:
                roots |= {"checkout": conn, "executed": conn.execute(ORDERS)}
                named = roots["named"] = conn.cursor("walked")
                named.execute(ORDERS)
                with conn.transaction() as tx:
                    roots["tx"] = tx
                    during = [p for k, v in roots.items() for p in reachable_raw(v, k)]
            after = [p for k, v in roots.items() for p in reachable_raw(v, k)]
        assert (during, after) == ([], [])

    async def test_async_pool_checkouts(self, unlimited: Guard, scenario_dsn: str) -> None:
        """The async pool, a checkout and its cursors, during the checkout and after it."""
        async with GuardedAsyncPool(unlimited, scenario_dsn, min_size=1, max_size=1) as pool:
            checkout = pool.connection(user="alice", ticket="T-100")
            roots: dict[str, Any] = {"pool": pool, "checkout_block": checkout}
            async with checkout as conn:
                roots |= {"checkout": conn, "executed": await conn.execute(ORDERS)}
                named = roots["named"] = conn.cursor("walked")
                await named.execute(ORDERS)
                async with conn.transaction() as tx:
                    roots["tx"] = tx
                    during = [p for k, v in roots.items() for p in reachable_raw(v, k)]
            after = [p for k, v in roots.items() for p in reachable_raw(v, k)]
        assert (during, after) == ([], [])

    def test_dbapi_sqlite(self, unlimited: Guard) -> None:
        """The DB-API wrapper over sqlite3 and its cursors."""
        raw = sqlite3.connect(":memory:")
        conn = GuardedDbapiConnection(unlimited, raw, ALICE, dialect="sqlite")
        roots = {"conn": conn, "cursor": conn.cursor()}
        try:
            assert [p for k, v in roots.items() for p in reachable_raw(v, k)] == []
        finally:
            raw.close()


class TestNoHookReceivesARawObject:
    """psycopg hands its raw cursor to row factories, its raw connection to cursor factories."""

    @staticmethod
    def leaky(seen: list[Any]) -> Any:
        def factory(cursor: Any) -> Any:
            seen.append(cursor)
            return psycopg.rows.tuple_row(cursor)

        return factory

    def test_custom_row_factory_refused(
        self, guard: Guard, sink: MemoryAuditSink, scenario_dsn: str
    ) -> None:
        """cursor(row_factory=<own function>) is refused, audited; psycopg's own are allowed."""
        seen: list[Any] = []
        with GuardedConnection.connect(guard, scenario_dsn, ALICE) as conn:
            with pytest.raises(AccessDenied):
                conn.cursor(row_factory=self.leaky(seen))
            with pytest.raises(AccessDenied):
                conn.cursor("named", row_factory=self.leaky(seen))
            for factory in (
                psycopg.rows.dict_row,
                psycopg.rows.namedtuple_row,
                psycopg.rows.class_row(dict),
                psycopg.rows.kwargs_row(dict),
            ):
                cur = conn.cursor(row_factory=factory)
                cur.execute("SELECT id FROM products WHERE id = %s", [1])
                assert cur.fetchone() is not None
        assert seen == []
        assert sink.reasons() == ["path.forbidden", "path.forbidden"]

    def test_forged_row_factory_refused(self, guard: Guard, scenario_dsn: str) -> None:
        """A function built from psycopg's code with other globals is not psycopg's."""
        seen: list[Any] = []
        genuine = psycopg.rows.class_row(dict)
        forged = types.FunctionType(
            genuine.__code__,  # type: ignore[attr-defined]
            {"_get_names": self.leaky(seen), "no_result": None},
            "forged",
            None,
            genuine.__closure__,  # type: ignore[attr-defined]
        )
        with (
            GuardedConnection.connect(guard, scenario_dsn, ALICE) as conn,
            pytest.raises(AccessDenied),
        ):
            conn.cursor(row_factory=forged)
        assert seen == []

    def test_connect_options_refused(self, guard: Guard, scenario_dsn: str) -> None:
        """guard.connect refuses a custom row factory, cursor factory or adaptation context."""

        class Spy(psycopg.Cursor[Any]):
            pass

        for options in (
            {"row_factory": self.leaky([])},
            {"cursor_factory": Spy},
            {"context": psycopg.adapt.AdaptersMap(psycopg.adapters)},
        ):
            with pytest.raises(AccessDenied):
                guard.connect(scenario_dsn, user="alice", ticket="T-100", **options)
        with guard.connect(
            scenario_dsn, user="alice", ticket="T-100", cursor_factory=psycopg.ClientCursor
        ) as conn:
            assert conn.execute("SELECT id FROM products WHERE id = 1").fetchall() == [(1,)]

    async def test_async_row_factory_and_connect_refused(
        self, guard: Guard, scenario_dsn: str
    ) -> None:
        """The async adapter refuses the same hooks."""
        seen: list[Any] = []
        with pytest.raises(AccessDenied):
            await guard.connect_async(
                scenario_dsn, user="alice", ticket="T-100", row_factory=self.leaky(seen)
            )
        async with await guard.connect_async(scenario_dsn, user="alice", ticket="T-100") as conn:
            with pytest.raises(AccessDenied):
                conn.cursor(row_factory=self.leaky(seen))
        assert seen == []
