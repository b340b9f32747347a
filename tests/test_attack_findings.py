"""Findings of the 2026-12-06 attacker pass that do not fit the YAML corpus.

Each test is xfail(strict=True): it fails today because the guard has the
hole it describes, and starts passing (then must lose its mark) once fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql as pgsql
from psycopg.types.string import TextLoader

from accessguard import AccessGuardError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from accessguard import Guard
    from accessguard.testing import MemoryAuditSink

pytestmark = pytest.mark.db

ORDERS = "SELECT id FROM orders WHERE customer_id = 42 ORDER BY id"


class Spy(pgsql.Composable):
    """A query object that keeps whatever psycopg context it is rendered with."""

    def __init__(self) -> None:
        super().__init__(ORDERS)
        self.contexts: list[Any] = []

    def as_string(self, context: Any = None, *_args: Any, **_kwargs: Any) -> str:
        self.contexts.append(context)
        return ORDERS

    def as_bytes(self, context: Any = None, *_args: Any, **_kwargs: Any) -> bytes:
        return self.as_string(context).encode()


def _raw(objects: list[Any]) -> list[str]:
    kinds = (psycopg.Connection, psycopg.AsyncConnection, psycopg.Cursor, psycopg.AsyncCursor)
    found = [type(o).__name__ for o in objects if isinstance(o, kinds)]
    found += [
        type(o.connection).__name__
        for o in objects
        if isinstance(getattr(o, "connection", None), kinds)
    ]
    return found


class TestComposableQuery:
    def test_custom_composable_never_sees_the_raw_connection(
        self, guard: Guard, scenario_dsn: str
    ) -> None:
        """A query object of the caller's own class is never handed the driver's connection."""
        spy = Spy()
        with (
            guard.connect(scenario_dsn, user="alice", ticket="T-100") as conn,
            contextlib.suppress(AccessGuardError),  # refusing it is one fix
        ):
            conn.execute(spy)
        assert _raw(spy.contexts) == []

    def test_custom_composable_async(self, guard: Guard, scenario_dsn: str) -> None:
        """The async connection does not hand its driver connection to a query object either."""
        spy = Spy()

        async def run() -> None:
            aconn = await guard.connect_async(scenario_dsn, user="alice", ticket="T-100")
            try:
                with contextlib.suppress(AccessGuardError):  # refusing it is one fix
                    await aconn.execute(spy)
            finally:
                await aconn.close()

        asyncio.run(run())
        assert _raw(spy.contexts) == []


class _SpyLoader(TextLoader):
    seen: list[Any] = []  # noqa: RUF012 - a test double's shared record

    def __init__(self, oid: int, context: Any = None) -> None:
        super().__init__(oid, context)
        self.seen.append(context)


@pytest.fixture
def global_loader() -> Iterator[list[Any]]:
    """A text loader registered on psycopg's global adapters, removed afterwards."""
    saved = psycopg.adapters.get_loader(25, psycopg.pq.Format.TEXT)
    _SpyLoader.seen = []
    psycopg.adapters.register_loader("text", _SpyLoader)
    try:
        yield _SpyLoader.seen
    finally:
        assert saved is not None
        psycopg.adapters.register_loader("text", saved)


class TestGlobalAdapters:
    @pytest.mark.xfail(
        strict=True,
        reason="known limit: a loader registered process-wide is in-process code (like gc)",
    )
    def test_global_loader_never_sees_the_raw_connection(
        self, guard: Guard, scenario_dsn: str, global_loader: list[Any]
    ) -> None:
        """A loader registered process-wide is refused, or never handed the driver's objects."""
        try:
            with guard.connect(scenario_dsn, user="alice", ticket="T-100") as conn:
                conn.execute("SELECT name FROM customers WHERE id = 42").fetchall()
        except AccessGuardError:
            return
        assert _raw(global_loader) == []


class TestAuditCarriesNoLiteral:
    def test_a_refusal_names_the_subject_as_the_ledger_keeps_it(
        self, sink: MemoryAuditSink
    ) -> None:
        """The customer id a refused statement named is a subject id: pseudonymised with the
        ledger's key, so a deployment that must not store ids stores none, refusals included.
        """
        from accessguard import Guard, scenario

        secret = 4111111111111111
        with Guard.from_directory(
            scenario.policies_dir(),
            tickets=scenario.tickets(),
            audit=sink,
            ledger_pseudonym_key=b"k" * 32,
        ) as guard:
            decision = guard.check(
                "SELECT name FROM customers WHERE id = %s", [secret], user="alice", ticket="T-100"
            )
        assert not decision.allowed
        assert str(secret) not in repr(sink.events)
        (named,) = sink.events[0]["accessguard.subjects"]
        assert named["kind"] == "customer"
        assert len(named["id"]) == 64  # the keyed hash


def _ledgered(sink: MemoryAuditSink) -> list[Any]:
    return [e.get("accessguard.rows") for e in sink.events if e.get("event.action") == "ledger"]


class TestLedgerCountsWrites:
    def test_executemany_returning_update_is_ledgered(
        self, guard: Guard, sink: MemoryAuditSink, scenario_dsn: str
    ) -> None:
        """An UPDATE batch run with returning=True (no RETURNING clause) ledgers its rows."""
        with guard.connect(scenario_dsn, user="alice", ticket="T-100") as conn:
            conn.cursor().executemany(
                "UPDATE orders SET status = status WHERE customer_id = %s",
                [[42], [42]],
                returning=True,
            )
            conn.rollback()
        guard.close()
        assert sum(r or 0 for r in _ledgered(sink)) == 6

    def test_sqlalchemy_update_is_ledgered(
        self, guard: Guard, sink: MemoryAuditSink, scenario_dsn: str
    ) -> None:
        """An UPDATE through an instrumented engine ledgers the rows it changed."""
        import sqlalchemy as sa

        engine = sa.create_engine(scenario_dsn.replace("postgresql://", "postgresql+psycopg://"))
        guard.instrument(engine)
        try:
            with guard.acting_as(user="alice", ticket="T-100"), engine.connect() as conn:
                conn.execute(sa.text("UPDATE orders SET status = status WHERE customer_id = 42"))
                conn.rollback()
        finally:
            engine.dispose()
        guard.close()
        assert sum(r or 0 for r in _ledgered(sink)) == 3


def _raw_in_traceback(exc: BaseException) -> list[str]:
    """Raw driver objects the frames of ``exc``'s traceback (and its causes) hold as locals."""
    found: list[str] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        tb = current.__traceback__
        while tb is not None:
            found += _raw(list(tb.tb_frame.f_locals.values()))
            tb = tb.tb_next
        todo += [current.__cause__, current.__context__]
    return found


class TestDriverErrors:
    @pytest.mark.xfail(
        strict=True, reason="known limit: traceback frame locals are in-process introspection"
    )
    def test_driver_error_traceback_holds_no_raw_cursor(
        self, guard: Guard, scenario_dsn: str
    ) -> None:
        """A database error raised through a guarded cursor leads to no raw driver object."""
        with guard.connect(scenario_dsn, user="alice", ticket="T-100") as conn:
            with pytest.raises(psycopg.Error) as info:
                conn.execute("SELECT id / 0 FROM orders WHERE customer_id = 42")
            conn.rollback()
        assert _raw_in_traceback(info.value) == []
