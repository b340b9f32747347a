"""Guarded psycopg 3 AsyncConnection and cursors: the sync adapter's twin, awaiting instead.

The rules are the gate's (``accessguard.adapters.gate``), the decision the
lane's: this module only waits, and keeps the event loop free while it does
(``accessguard.adapters.offload``): a decision that needs I/O (a ticket
store, a Redis throttle, an audit write) runs off the loop, a plan-cache hit
on in-memory parts runs on it with no thread hop.
Every path that sends SQL is checked first: execute, executemany, stream,
named (server-side) cursors. COPY and pipeline mode are refused. As in the
sync adapter there is no ``__getattr__`` fall-through to the raw objects.

Rows leave through the one gate every adapter shares (``adapters.base``):
each statement's own ``Authorized`` counts them for the access ledger and the
row cap, bound to its result (the cursor's, a stream's, one result set of an
executemany); a client-side result over its cap is refused right after
``execute`` with no row handed over.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

import psycopg

from accessguard.adapters import offload
from accessguard.adapters.base import CHUNK, NOTHING, ConnectionShell, PsycopgShell
from accessguard.adapters.gate import (
    RowCounter,
    bind,
    one_statement,
    query_text,
    refuse_mixed,
)
from accessguard.adapters.psycopg3 import (
    GuardedTransaction,
    refuse_hooks,
)
from accessguard.audit.sinks import HELD, write_held
from accessguard.engine import probes

if TYPE_CHECKING:
    from types import TracebackType

    from accessguard.engine.gate import Gate
    from accessguard.engine.lane import Authorized, Session


def wrap_async(
    guard: Gate, aconn: psycopg.AsyncConnection[Any], session: Session
) -> AsyncGuardedConnection:
    """Guard an open psycopg AsyncConnection for ``session``'s employee and ticket."""
    return AsyncGuardedConnection(guard, aconn, session)


class AsyncCountingCursor(RowCounter):
    """The async counterpart of ``base.CountingCursor``: the same gate, awaited."""

    async def fetchone(self) -> Any:
        st = self._st
        if st.withheld:
            return None
        if self._named:  # the ticket's store may do I/O: asked off the loop
            await offload.off_loop(self.recheck, st)
        row = await self._raw.fetchone()
        if row is None:
            return None
        if not st.take(1):
            raise await offload.off_loop(self.row_refusal, st, 1)
        return row if self._factory is None else self._made([row])[0]

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        st = self._st
        if st.withheld:
            return []
        if self._named:  # the ticket's store may do I/O: asked off the loop
            await offload.off_loop(self.recheck, st)
        rows = list(await (self._raw.fetchmany() if size is None else self._raw.fetchmany(size)))
        if not st.take(len(rows)):
            raise await offload.off_loop(self.row_refusal, st, len(rows))
        return rows if self._factory is None else self._made(rows)

    async def fetchall(self) -> list[Any]:
        st = self._st
        if st.withheld:
            return []
        if self._named:  # the ticket's store may do I/O: asked off the loop
            await offload.off_loop(self.recheck, st)
        rows = list(await self._raw.fetchall())
        if not st.take(len(rows)):
            raise await offload.off_loop(self.row_refusal, st, len(rows))
        return rows if self._factory is None else self._made(rows)

    async def __aiter__(self) -> AsyncIterator[Any]:
        # chunk by chunk, each counted against the result the cursor holds then
        while rows := await self.fetchmany(CHUNK):
            for row in rows:
                yield row


class AsyncStreamed:
    """What a guarded async ``stream()`` returns: its own statement's gate over the driver's."""

    __slots__ = ("_cursor", "_cut", "_rebind", "_rows", "_since", "_st")

    def __init__(
        self, cursor: RowCounter, st: Authorized, rows: AsyncIterator[Any], *, rebind: bool
    ) -> None:
        self._cursor = cursor
        #: whether the cursor's own fetches read this stream's result once it runs
        #: (not a named cursor's: they read its portal, the statement it declared)
        self._rebind = rebind
        self._st = st
        self._rows = rows
        self._since = 0  # rows handed over since the ticket was last looked up (base.Streamed)
        self._cut = False  # closed with its cursor: reading on is an error, as psycopg's

    def __aiter__(self) -> AsyncStreamed:
        return self

    async def __anext__(self) -> Any:
        if self._cut:
            raise psycopg.InterfaceError("the cursor is closed")
        st = self._st
        if st.withheld:
            raise StopAsyncIteration
        cursor = self._cursor
        if self._rebind:  # once it runs, the driver's current result is this stream's
            cursor._st = st
        self._since += 1
        if self._since > CHUNK:
            try:
                await offload.off_loop(cursor.recheck, st)
            except BaseException:  # refused, or the look-up failed: nothing more either way
                st.withheld = True
                await self.aclose()
                raise
            self._since = 1
        row = await anext(self._rows)
        if not st.take(1):
            await self.aclose()
            raise await offload.off_loop(cursor.row_refusal, st, 1)
        return cursor.made(row)

    async def aclose(self) -> None:
        """Stop the stream (the driver cancels what the server still sends)."""
        aclose = getattr(self._rows, "aclose", None)
        if aclose is not None:
            await aclose()

    async def cut(self) -> None:
        """Stop the stream as its cursor closes: reading it on raises."""
        self._cut = True
        await self.aclose()


async def _probed(
    guard: Gate, ok: Authorized, connection: Any, rows: AsyncIterator[Any]
) -> AsyncIterator[Any]:
    """``rows`` (a stream not yet started), after ``ok``'s probe passed."""
    try:
        await offload.holding(probes.run_async(guard, ok, connection))
        async for row in rows:
            yield row
    finally:
        aclose = getattr(rows, "aclose", None)
        if aclose is not None:
            await aclose()


class AsyncGuardedCursor(AsyncCountingCursor, PsycopgShell):
    """A psycopg async cursor whose every statement is checked before it is sent.

    The sync ``GuardedCursor``'s shell over the same gate, awaiting the
    driver and moving blocking decisions and audit writes off the loop.
    """

    _client = psycopg.AsyncClientCursor
    _conn: AsyncGuardedConnection
    #: the last stream started (the connection runs one at a time), closed with the cursor
    _stream: AsyncStreamed | None = None

    # ------------------------------------------------------------------ sending

    async def _authorize(self, query: Any, params: Any) -> Authorized:
        """The sync cursor's decision, on the loop only when it needs no I/O (``offload``).

        Binding, and a plan-cache hit on in-memory parts, run here with their
        audit events held; the events are written off the loop before this
        returns or raises. Any other decision runs off the loop.
        """
        lane = self._lane
        held: list[Any] = []
        token = HELD.set(held)
        try:
            text = query if type(query) is str else query_text(query, self._conn._raw, lane)
            sql, values, convert = bind(lane, text, params, self._mogrify)
            if lane.kept(sql, values, convert) and offload.on_loop(lane):
                return lane.authorize(sql, values, convert, probing=True)
        finally:
            HELD.reset(token)
            if held:
                await offload.off_loop(write_held, held)
        return await offload.off_loop(lane.authorize, sql, values, convert, probing=True)

    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> AsyncGuardedCursor:
        ok = await self._authorize(query, params)
        if ok.probe is not None:
            await offload.holding(probes.run_async(self._guard, ok, self._conn._raw))
        # until the driver returns, the result is no statement's: an execute cancelled
        # (a timeout) after the server answered leaves the driver holding the new result,
        # never to be read through the previous statement's gate
        self._st = NOTHING
        await self._raw.execute(ok.sql, ok.params, **kwargs)
        over = self._executed(ok)
        if over is not None:  # refused before a single row is handed over
            raise await offload.off_loop(self._guard.over_row_cap, ok, over)
        return self

    async def executemany(
        self, query: Any, params_seq: Iterable[Any], *, returning: bool = False, **kwargs: Any
    ) -> None:
        """Every parameter set decided first; each result set read through its own statement."""
        batch = [await self._authorize(query, params) for params in params_seq]
        if not batch:
            return
        if not one_statement(batch):  # one statement, one shape: never guess
            raise await offload.off_loop(refuse_mixed, self._guard, self._session, batch)
        # every probe before any write
        await offload.holding(probes.run_batch_async(self._guard, batch, self._conn._raw))
        self._st = NOTHING  # until the batch is back, the old result is gone
        await self._raw.executemany(
            batch[0].sql, [ok.params or () for ok in batch], returning=returning, **kwargs
        )
        over = self._batched(batch, returning=returning)
        if over is not None:
            raise await offload.off_loop(self._guard.over_row_cap, self._st, over)

    def nextset(self) -> bool | None:
        """Move to the next result set (of an executemany with ``returning=True``).

        Synchronous, as psycopg's: a result set over its cap is refused (and
        audited) here, on the loop.
        """
        current = self._st
        if not self._raw.nextset():
            return None
        over = self._next(current)
        if over is not None:
            raise self._guard.over_row_cap(self._st, over)
        return True

    def stream(self, query: Any, params: Any = None, **kwargs: Any) -> AsyncStreamed:
        """Checked when called (not at the first ``async for`` step), like the sync stream."""
        ok = self._decide(query, params)  # psycopg's stream() is synchronous
        rows = self._raw.stream(ok.sql, ok.params, **kwargs)
        if ok.probe is not None:  # psycopg's stream sends nothing before its first step
            rows = _probed(self._guard, ok, self._conn._raw, rows)
        self._stream = AsyncStreamed(
            self,
            ok,
            rows,
            rebind=not self._named,
        )
        return self._stream

    # ------------------------------------------------------------------ reading

    async def scroll(self, value: int, mode: str = "relative") -> None:
        await self._raw.scroll(value, mode)

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:  # a stream started and not finished holds the connection
            await stream.cut()  # (psycopg's lock): closing the cursor first would wait
        await self._raw.close()

    async def __aenter__(self) -> AsyncGuardedCursor:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class AsyncTransactionBlock:
    """``async with aconn.transaction() as tx``: psycopg's block, yielding a GuardedTransaction.

    psycopg's own AsyncTransaction leads to the raw connection (``.connection``)
    and its libpq handle (``.pgconn``, whose ``exec_`` sends SQL with no
    cursor at all): it is kept private here, and ``tx.connection`` is this
    guarded connection.
    """

    __slots__ = ("_block", "_conn")

    def __init__(self, conn: AsyncGuardedConnection, block: Any) -> None:
        self._conn = conn
        self._block = block

    async def __aenter__(self) -> GuardedTransaction:
        tx = await self._block.__aenter__()
        return GuardedTransaction(self._conn, tx.savepoint_name)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._block.__aexit__(exc_type, exc, tb)  # type: ignore[no-any-return]


class AsyncGuardedConnection(ConnectionShell):
    """A psycopg 3 AsyncConnection acting for one employee on one ticket."""

    _raw: psycopg.AsyncConnection[Any]

    @classmethod
    async def connect(
        cls, guard: Gate, conninfo: str, session: Session, **kwargs: Any
    ) -> AsyncGuardedConnection:
        refuse_hooks(guard, session, kwargs, (psycopg.AsyncCursor, psycopg.AsyncClientCursor))
        return cls(guard, await psycopg.AsyncConnection.connect(conninfo, **kwargs), session)

    def cursor(self, name: str = "", **kwargs: Any) -> AsyncGuardedCursor:
        if kwargs:
            refuse_hooks(self._guard, self._session, kwargs, ())
        raw = self._raw.cursor(name, **kwargs) if name else self._raw.cursor(**kwargs)
        return AsyncGuardedCursor(self, raw)

    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> AsyncGuardedCursor:
        return await AsyncGuardedCursor(self, self._raw.cursor()).execute(query, params, **kwargs)

    def transaction(
        self, savepoint_name: str | None = None, *, force_rollback: bool = False
    ) -> AsyncTransactionBlock:
        """psycopg's transaction block; what it yields leads back to this guarded connection."""
        return AsyncTransactionBlock(
            self, self._raw.transaction(savepoint_name, force_rollback=force_rollback)
        )

    async def commit(self) -> None:
        await self._raw.commit()

    async def rollback(self) -> None:
        await self._raw.rollback()

    async def close(self) -> None:
        await self._raw.close()

    @property
    def autocommit(self) -> bool:
        return bool(self._raw.autocommit)

    async def set_autocommit(self, value: bool) -> None:
        await self._raw.set_autocommit(value)

    async def __aenter__(self) -> AsyncGuardedConnection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # psycopg's own semantics: commit on success, roll back on error, close.
        await self._raw.__aexit__(exc_type, exc, tb)
