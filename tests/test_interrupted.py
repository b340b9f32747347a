"""An execute interrupted after the server answered: its result is read through no gate.

psycopg, interrupted while it waits (KeyboardInterrupt from a signal handler,
asyncio's CancelledError from a timeout), cancels the query, drives it to its
end and keeps the result on the cursor before it re-raises. The guarded cursor
bound a statement's gate only after the driver returned, so the previous
statement's gate (no row cap, no ledger tally) read the new result: a
customer's 53 orders came out under a cap of 5 (red team). The cursor now
holds no statement's gate while the driver runs. The interruption is played
here by the driver's own execute raising once it has its result, as psycopg
does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest

from accessguard import Guard
from accessguard.adapters.aio import AsyncGuardedConnection
from accessguard.guard import Session
from accessguard.testing import MemoryAuditSink

db = pytest.mark.db
#: an unscoped table: no row cap, no ledger tally
PRODUCT = "SELECT id, title FROM products WHERE id = 1"
#: customer 42's three orders: over the cap of two (the ``capped`` guard)
ORDERS = "SELECT id, status FROM orders WHERE customer_id = 42"


class Interrupted(BaseException):
    """What a signal handler or a timeout raises into the waiting driver."""


def ledger_rows(sink: MemoryAuditSink) -> int:
    return sum(int(e["accessguard.rows"]) for e in sink.events if e["event.action"] == "ledger")


@db
def test_a_sync_execute_interrupted_after_the_answer_hands_over_nothing(
    capped: Guard, sink: MemoryAuditSink, scenario_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real: Callable[..., Any] = psycopg.Cursor.execute

    def answered_then_interrupted(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        real(self, query, *args, **kwargs)
        if "orders" in str(query):
            raise Interrupted
        return self

    with capped.connect(scenario_dsn, user="alice", ticket="T-100") as conn:
        cur = conn.cursor()
        cur.execute(PRODUCT)
        monkeypatch.setattr(psycopg.Cursor, "execute", answered_then_interrupted)
        with pytest.raises(Interrupted):
            cur.execute(ORDERS)
        monkeypatch.undo()
        assert cur.fetchall() == []  # the driver holds the three orders: none handed over
        assert cur.fetchone() is None
    capped.ledger.flush()
    assert ledger_rows(sink) == 0


@db
@pytest.mark.anyio
async def test_an_async_execute_cancelled_after_the_answer_hands_over_nothing(
    capped: Guard, scenario_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real: Callable[..., Awaitable[Any]] = psycopg.AsyncCursor.execute

    async def answered_then_cancelled(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        await real(self, query, *args, **kwargs)
        if "orders" in str(query):
            raise asyncio.CancelledError
        return self

    conn = await AsyncGuardedConnection.connect(
        capped, scenario_dsn, Session(user="alice", ticket="T-100")
    )
    async with conn:
        cur = conn.cursor()
        await cur.execute(PRODUCT)
        monkeypatch.setattr(psycopg.AsyncCursor, "execute", answered_then_cancelled)
        with pytest.raises(asyncio.CancelledError):
            await cur.execute(ORDERS)
        monkeypatch.undo()
        assert await cur.fetchall() == []
