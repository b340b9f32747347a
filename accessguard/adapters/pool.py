"""psycopg_pool pools whose checkouts are guarded, one employee per checkout (sync and async).

The employee is bound when a connection is checked out, never to the
physical connection: ``configure`` (once per physical connection) knows
nobody, and a checkout is a fresh guarded connection for the employee named
(or bound by ``guard.acting_as``). When the checkout ends:

- every cursor made through it (by ``cursor()``, ``execute()``, named or not)
  is closed and refuses from then on (``session.returned``, audited), and the
  guarded connection stops working: a reference kept past the ``with`` block
  cannot reach the backend that now serves the next employee;
- the pool rolls back an open transaction, then runs ``DISCARD ALL`` (in
  autocommit, unprepared, with psycopg's own record of prepared statements
  cleared): session settings, temporary tables, prepared statements, LISTEN
  registrations and advisory locks of the previous checkout are gone.
  Settings made by ``configure`` are discarded too: put per-connection
  settings in the conninfo (``options=-c ...``), which DISCARD ALL keeps.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from accessguard.adapters.aio import AsyncGuardedConnection, AsyncGuardedCursor
from accessguard.adapters.base import NOTHING
from accessguard.adapters.psycopg3 import DIALECT, GuardedConnection, GuardedCursor
from accessguard.engine.lane import Ended, Session
from accessguard.errors import ConfigurationError, Reason

if TYPE_CHECKING:
    from types import TracebackType

    from accessguard.engine.gate import Gate

ConnectionCallback = Callable[[psycopg.Connection[Any]], None]
AsyncConnectionCallback = Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]]

_DISCARD = "DISCARD ALL"


class _Returned:
    """Stands in for the raw connection once a checkout has ended."""

    def __getattr__(self, name: str) -> Any:
        raise psycopg.OperationalError(
            "this guarded connection was returned to the pool; check out another one"
        )


_RETURNED = _Returned()


def _session(guard: Gate, user: str | None, ticket: str | None) -> Session:
    """The employee a checkout is for: named, or bound by ``guard.acting_as``."""
    if user is not None:
        return Session(user=user, ticket=ticket)
    if ticket is not None:
        raise ConfigurationError(
            "pool.connection(ticket=...) needs user= too", reason=Reason.SESSION_UNBOUND
        )
    return guard.current_session()


def _end(conn: PooledConnection | AsyncPooledConnection) -> list[Any]:
    """End ``conn``'s checkout (sync or async); its cursors still open, for the caller to close.

    From here on the connection and every cursor made through it refuse
    (``session.returned``, audited), hand over no row of what they held, and
    no longer lead to the physical connection, which now serves someone else.
    """
    ended = Ended(conn._guard, conn._session, DIALECT)
    conn._lane = ended
    cursors = list(conn._cursors)
    conn._cursors.clear()
    conn._returned = True
    conn._raw = cast("Any", _RETURNED)  # raises on any use
    for cur in cursors:
        cur._lane = ended
        cur._st = NOTHING
    return [cur for cur in cursors if not cur.closed]


# ---------------------------------------------------------------------- sync


class PooledConnection(GuardedConnection):
    """A guarded connection valid for one checkout only: its cursors belong to the checkout."""

    def __init__(self, guard: Gate, raw: psycopg.Connection[Any], session: Session) -> None:
        super().__init__(guard, raw, session)
        #: every cursor made during the checkout, whichever method made it
        self._cursors: weakref.WeakSet[GuardedCursor] = weakref.WeakSet()
        self._returned = False

    def cursor(self, name: str = "", **kwargs: Any) -> GuardedCursor:
        if self._returned:
            self._lane.authorize("", None)  # refuses, audited
        cur = super().cursor(name, **kwargs)
        self._cursors.add(cur)
        return cur

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> GuardedCursor:
        if self._returned:
            self._lane.authorize("", None)  # refuses, audited
        cur = GuardedCursor(self, self._raw.cursor())
        self._cursors.add(cur)
        return cur.execute(query, params, **kwargs)

    @property
    def closed(self) -> bool:
        return self._returned or super().closed

    def _release(self) -> None:
        """End the checkout: cut the link to the physical connection, close its cursors."""
        for cur in _end(self):
            cur.close()


def reset_connection(conn: psycopg.Connection[Any]) -> None:
    """Forget the previous checkout: ``DISCARD ALL``, and psycopg's record of prepared statements.

    DISCARD ALL drops the server's prepared statements; psycopg would still
    believe its own exist and fail the next prepared execution
    (``InvalidSqlStatementName``), and would prepare DISCARD ALL itself after
    five returns. So it is sent unprepared, and psycopg's record is cleared.
    """
    autocommit = conn.autocommit
    conn.autocommit = True  # DISCARD ALL cannot run inside a transaction block
    try:
        conn._prepared.clear()  # also queues a DEALLOCATE ALL: harmless beside the DISCARD
        with conn.cursor() as cur:
            cur.execute(_DISCARD, prepare=False)
    finally:
        conn.autocommit = autocommit


class Checkout:
    """``with pool.connection(...) as conn``: one checkout, one employee.

    A class rather than a ``@contextmanager`` generator, whose public ``gen``
    would lead to the physical connection.
    """

    __slots__ = ("_block", "_conn", "_pool", "_ticket", "_user")

    def __init__(
        self, pool: GuardedPool, user: str | None, ticket: str | None, timeout: float | None
    ) -> None:
        self._pool = pool
        self._user = user
        self._ticket = ticket
        self._block = pool._pool.connection(timeout=timeout)
        self._conn: PooledConnection | None = None

    def __enter__(self) -> GuardedConnection:
        guard = self._pool._guard
        session = _session(guard, self._user, self._ticket)  # first: nobody bound, nothing taken
        raw = self._block.__enter__()
        self._conn = PooledConnection(guard, raw, session)
        return self._conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            if self._conn is not None:
                self._conn._release()
        finally:
            self._conn = None
            done = self._block.__exit__(exc_type, exc, tb)
        return done


class GuardedPool:
    """A ``psycopg_pool.ConnectionPool`` handing out guarded connections."""

    def __init__(
        self,
        guard: Gate,
        conninfo: str = "",
        *,
        open: bool = True,  # noqa: A002 - psycopg_pool's own parameter name
        reset: ConnectionCallback | None = None,
        **pool_kwargs: Any,
    ) -> None:
        self._guard = guard
        self._after_reset = reset
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            conninfo, open=open, reset=self._reset, **pool_kwargs
        )

    def connection(
        self, *, user: str | None = None, ticket: str | None = None, timeout: float | None = None
    ) -> Checkout:
        """Check a connection out for ``user`` on ``ticket`` (default: ``guard.acting_as``)."""
        return Checkout(self, user, ticket, timeout)

    def _reset(self, conn: psycopg.Connection[Any]) -> None:
        """On every return (after the pool's rollback): forget the previous checkout."""
        reset_connection(conn)
        if self._after_reset is not None:
            self._after_reset(conn)

    @property
    def name(self) -> str:
        return str(self._pool.name)

    @property
    def closed(self) -> bool:
        return bool(self._pool.closed)

    def open(self, *, wait: bool = False, timeout: float = 30.0) -> None:
        self._pool.open(wait=wait, timeout=timeout)

    def wait(self, timeout: float = 30.0) -> None:
        self._pool.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        self._pool.close(timeout)

    def __enter__(self) -> GuardedPool:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ---------------------------------------------------------------------- async


class AsyncPooledConnection(AsyncGuardedConnection):
    """An async guarded connection valid for one checkout only (the sync one's twin)."""

    def __init__(self, guard: Gate, raw: psycopg.AsyncConnection[Any], session: Session) -> None:
        super().__init__(guard, raw, session)
        self._cursors: weakref.WeakSet[AsyncGuardedCursor] = weakref.WeakSet()
        self._returned = False

    def cursor(self, name: str = "", **kwargs: Any) -> AsyncGuardedCursor:
        if self._returned:
            self._lane.authorize("", None)  # refuses, audited
        cur = super().cursor(name, **kwargs)
        self._cursors.add(cur)
        return cur

    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> AsyncGuardedCursor:
        return await self.cursor().execute(query, params, **kwargs)

    @property
    def closed(self) -> bool:
        return self._returned or super().closed

    async def _release(self) -> None:
        """End the checkout: cut the link to the physical connection, close its cursors."""
        for cur in _end(self):
            await cur.close()


async def reset_async_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """``reset_connection`` for an AsyncConnection."""
    autocommit = conn.autocommit
    await conn.set_autocommit(True)  # DISCARD ALL cannot run inside a transaction block
    try:
        conn._prepared.clear()
        async with conn.cursor() as cur:
            await cur.execute(_DISCARD, prepare=False)
    finally:
        await conn.set_autocommit(autocommit)


class AsyncCheckout:
    """``async with pool.connection(...) as conn``: one checkout, one employee."""

    __slots__ = ("_block", "_conn", "_pool", "_ticket", "_user")

    def __init__(
        self, pool: GuardedAsyncPool, user: str | None, ticket: str | None, timeout: float | None
    ) -> None:
        self._pool = pool
        self._user = user
        self._ticket = ticket
        self._block = pool._pool.connection(timeout=timeout)
        self._conn: AsyncPooledConnection | None = None

    async def __aenter__(self) -> AsyncGuardedConnection:
        guard = self._pool._guard
        session = _session(guard, self._user, self._ticket)  # first: nobody bound, nothing taken
        raw = await self._block.__aenter__()
        self._conn = AsyncPooledConnection(guard, raw, session)
        return self._conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            if self._conn is not None:
                await self._conn._release()
        finally:
            self._conn = None
            done = await self._block.__aexit__(exc_type, exc, tb)
        return done


class GuardedAsyncPool:
    """A ``psycopg_pool.AsyncConnectionPool`` handing out guarded connections.

    Opened by ``async with pool:`` or ``await pool.open()`` (psycopg_pool
    no longer opens an async pool in its constructor).
    """

    def __init__(
        self,
        guard: Gate,
        conninfo: str = "",
        *,
        reset: AsyncConnectionCallback | None = None,
        **pool_kwargs: Any,
    ) -> None:
        self._guard = guard
        self._after_reset = reset
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            conninfo, open=False, reset=self._reset, **pool_kwargs
        )

    def connection(
        self, *, user: str | None = None, ticket: str | None = None, timeout: float | None = None
    ) -> AsyncCheckout:
        """Check a connection out for ``user`` on ``ticket`` (default: ``guard.acting_as``)."""
        return AsyncCheckout(self, user, ticket, timeout)

    async def _reset(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """On every return (after the pool's rollback): forget the previous checkout."""
        await reset_async_connection(conn)
        if self._after_reset is not None:
            await self._after_reset(conn)

    @property
    def name(self) -> str:
        return str(self._pool.name)

    @property
    def closed(self) -> bool:
        return bool(self._pool.closed)

    async def open(
        self,
        *,
        wait: bool = False,
        timeout: float = 30.0,  # noqa: ASYNC109 - psycopg_pool's own signature
    ) -> None:
        await self._pool.open(wait=wait, timeout=timeout)

    async def wait(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109 - psycopg_pool's
        await self._pool.wait(timeout)

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - psycopg_pool's
        await self._pool.close(timeout)

    async def __aenter__(self) -> GuardedAsyncPool:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
