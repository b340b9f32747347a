"""A psycopg_pool ConnectionPool whose checkouts are guarded, one employee per checkout.

The employee is bound when a connection is checked out, never to the
physical connection: ``configure`` (once per physical connection) knows
nobody, and a checkout is a fresh ``GuardedConnection`` for the employee
named (or bound by ``guard.acting_as``). When the checkout ends:

- every cursor opened through it is closed and the guarded connection stops
  working (a reference kept past the ``with`` block cannot reach the next
  employee's session);
- the pool rolls back an open transaction, then runs ``DISCARD ALL`` (in
  autocommit): session settings, temporary tables, prepared statements,
  LISTEN registrations and advisory locks of the previous checkout are gone.
  Settings made by ``configure`` are discarded too: put per-connection
  settings in the conninfo (``options=-c ...``), which DISCARD ALL keeps.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

import psycopg
from psycopg_pool import ConnectionPool

from accessguard.adapters.base import NOTHING
from accessguard.adapters.psycopg3 import DIALECT, GuardedConnection, GuardedCursor
from accessguard.errors import ConfigurationError
from accessguard.guard import Session
from accessguard.lane import Ended

if TYPE_CHECKING:
    from types import TracebackType

    from accessguard.guard import Guard

ConnectionCallback = Callable[[psycopg.Connection[Any]], None]


class _Returned:
    """Stands in for the raw connection once a checkout has ended."""

    def __getattr__(self, name: str) -> Any:
        raise psycopg.OperationalError(
            "this guarded connection was returned to the pool; check out another one"
        )


_RETURNED = _Returned()


class PooledConnection(GuardedConnection):
    """A guarded connection valid for one checkout only: its cursors belong to the checkout."""

    def __init__(self, guard: Guard, raw: psycopg.Connection[Any], session: Session) -> None:
        super().__init__(guard, raw, session)
        #: every cursor made during the checkout, whichever method made it
        self._cursors: weakref.WeakSet[GuardedCursor] = weakref.WeakSet()
        self._returned = False

    def cursor(self, name: str = "", **kwargs: Any) -> GuardedCursor:
        cur = super().cursor(name, **kwargs)
        self._cursors.add(cur)
        return cur

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> GuardedCursor:
        cur = GuardedCursor(self, self._raw.cursor())
        self._cursors.add(cur)
        return cur.execute(query, params, **kwargs)

    @property
    def closed(self) -> bool:
        return self._returned or super().closed

    def _release(self) -> None:
        """End the checkout: close its cursors, cut the link to the physical connection.

        A cursor kept past the checkout refuses every statement from then on
        (``session.returned``, audited) and holds no result any more.
        """
        ended = Ended(self._guard, self._session, DIALECT)
        self._lane = ended
        try:
            for cur in list(self._cursors):
                cur._lane = ended
                cur._st = NOTHING
                if not cur.closed:
                    cur.close()
        finally:
            self._cursors.clear()
            self._returned = True
            self._raw = cast("psycopg.Connection[Any]", _RETURNED)


def reset_connection(conn: psycopg.Connection[Any]) -> None:
    """Forget the previous checkout: ``DISCARD ALL``, and psycopg's record of prepared statements.

    DISCARD ALL drops the server's prepared statements; psycopg would still
    believe its own exist and fail the next prepared execution
    (``InvalidSqlStatementName``). So it is sent unprepared, and psycopg's
    prepared-statement record is cleared with it.
    """
    autocommit = conn.autocommit
    conn.autocommit = True  # DISCARD ALL cannot run inside a transaction block
    try:
        conn._prepared.clear()  # also queues a DEALLOCATE ALL: harmless after the DISCARD
        with conn.cursor() as cur:
            cur.execute("DISCARD ALL", prepare=False)
    finally:
        conn.autocommit = autocommit


class GuardedPool:
    """A ``psycopg_pool.ConnectionPool`` handing out guarded connections."""

    def __init__(
        self,
        guard: Guard,
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

    # ------------------------------------------------------------------ checkout

    @contextmanager
    def connection(
        self, *, user: str | None = None, ticket: str | None = None, timeout: float | None = None
    ) -> Iterator[GuardedConnection]:
        """Check a connection out for ``user`` on ``ticket`` (default: ``guard.acting_as``)."""
        session = self._session(user, ticket)  # before checkout: nobody bound, nothing taken
        with self._pool.connection(timeout=timeout) as raw:
            conn = PooledConnection(self._guard, raw, session)
            try:
                yield conn
            finally:
                conn._release()

    def _session(self, user: str | None, ticket: str | None) -> Session:
        if user is not None:
            return Session(user=user, ticket=ticket)
        if ticket is not None:
            raise ConfigurationError(
                "pool.connection(ticket=...) needs user= too", reason="session.unbound"
            )
        return self._guard.current_session()

    def _reset(self, conn: psycopg.Connection[Any]) -> None:
        """On every return (after the pool's rollback): forget the previous checkout."""
        reset_connection(conn)
        if self._after_reset is not None:
            self._after_reset(conn)

    # ------------------------------------------------------------------ lifetime

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
