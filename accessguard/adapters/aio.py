"""Guarded psycopg 3 AsyncConnection and cursors: the sync adapter's twin, awaiting instead.

The decision is the guard's (``Guard.authorize``), the query conversion is the
sync adapter's (``convert_query``, ``_query_text``): this module only waits.
Every path that sends SQL is checked first: execute, executemany, stream,
named (server-side) cursors. COPY and pipeline mode are refused. As in the
sync adapter there is no ``__getattr__`` fall-through to the raw objects.

Rows are counted where they are handed over (fetchone / fetchmany / fetchall /
``async for`` / stream) for the access ledger and the per-statement row cap; a
client-side cursor over its cap is refused right after ``execute`` with no row
handed over.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

import psycopg

from accessguard import probes
from accessguard.adapters.base import RowCounter
from accessguard.adapters.psycopg3 import DIALECT, _query_text, authorize_statement
from accessguard.errors import AccessDenied, Reason

if TYPE_CHECKING:
    from types import TracebackType

    from accessguard.guard import Authorized, Guard, Session


def wrap_async(
    guard: Guard, aconn: psycopg.AsyncConnection[Any], session: Session
) -> AsyncGuardedConnection:
    """Guard an open psycopg AsyncConnection for ``session``'s employee and ticket."""
    return AsyncGuardedConnection(guard, aconn, session)


class AsyncCountingCursor(RowCounter):
    """The async counterpart of ``base.CountingCursor``: counts the rows handed over."""

    async def fetchone(self) -> Any:
        if self._withheld:
            return None
        row = await self._raw.fetchone()
        if row is not None:
            self._count(1)
        return row

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        if self._withheld:
            return []
        rows = await (self._raw.fetchmany() if size is None else self._raw.fetchmany(size))
        self._count(len(rows))
        return list(rows)

    async def fetchall(self) -> list[Any]:
        if self._withheld:
            return []
        rows = await self._raw.fetchall()
        self._count(len(rows))
        return list(rows)

    async def __aiter__(self) -> AsyncIterator[Any]:
        if self._withheld:
            return
        async for row in self._raw:
            self._count(1)
            yield row


class AsyncGuardedCursor(AsyncCountingCursor):
    """A psycopg async cursor whose every statement is checked before it is sent."""

    def __init__(self, conn: AsyncGuardedConnection, raw: Any) -> None:
        self._conn = conn
        self._raw = raw
        self._guard = conn._guard
        self._session = conn._session

    # ------------------------------------------------------------------ sending

    def _authorize(self, query: Any, params: Any) -> Authorized:
        """What the sync cursor does; no I/O, so no await."""
        client = isinstance(self._raw, psycopg.AsyncClientCursor)
        return authorize_statement(
            self._guard.lane(self._session, DIALECT),
            _query_text(query, self._conn._raw),
            params,
            mogrify=self._raw.mogrify if client else None,
            probing=True,
        )

    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> AsyncGuardedCursor:
        ok = self._authorize(query, params)
        if ok.probe is not None:
            await probes.run_async(self._guard, ok, self._conn._raw)
        await self._raw.execute(ok.sql, ok.params, **kwargs)
        self._begin(ok)
        # a client-side cursor holds the whole result already: refuse it
        # before a single row is handed over.
        if (
            ok.row_cap is not None
            and self._raw.pgresult is not None
            and self._raw.rowcount > ok.row_cap
            and ok.facts.kind == "select"
        ):
            raise self._withhold(ok, self._raw.rowcount)
        return self

    async def executemany(self, query: Any, params_seq: Iterable[Any], **kwargs: Any) -> None:
        batch = [self._authorize(query, params) for params in params_seq]
        if not batch:
            return
        if len({ok.sql for ok in batch}) != 1:  # one statement, one shape: never guess
            raise AccessDenied(
                "Refused: executemany produced different statements.", reason=Reason.INTERNAL_ERROR
            )
        await probes.run_batch_async(self._guard, batch, self._conn._raw)  # before any write
        await self._raw.executemany(batch[0].sql, [ok.params or () for ok in batch], **kwargs)

    def stream(self, query: Any, params: Any = None, **kwargs: Any) -> AsyncIterator[Any]:
        """Checked when called (not at the first ``async for`` step), like the sync stream."""
        ok = self._authorize(query, params)
        self._begin(ok)
        return self._counted(self._raw.stream(ok.sql, ok.params, **kwargs), ok)

    async def _counted(self, rows: AsyncIterator[Any], ok: Authorized) -> AsyncIterator[Any]:
        # psycopg's stream sends nothing before its first step: the probe runs first
        await probes.run_async(self._guard, ok, self._conn._raw)
        async for row in rows:
            self._count(1)
            yield row

    def copy(self, statement: Any, params: Any = None, **_kwargs: Any) -> Any:
        raise self._guard.refuse(
            Reason.STATEMENT_FORBIDDEN,
            "COPY statements are never allowed through the guard.",
            self._session,
            kind="copy",
        )

    # ------------------------------------------------------------------ reading

    async def scroll(self, value: int, mode: str = "relative") -> None:
        await self._raw.scroll(value, mode)

    def nextset(self) -> bool | None:
        return bool(self._raw.nextset())

    @property
    def description(self) -> Any:
        return self._raw.description

    @property
    def rowcount(self) -> int:
        return int(self._raw.rowcount)

    @property
    def rownumber(self) -> int | None:
        return self._raw.rownumber  # type: ignore[no-any-return]

    @property
    def statusmessage(self) -> str | None:
        return self._raw.statusmessage  # type: ignore[no-any-return]

    @property
    def name(self) -> str | None:
        return getattr(self._raw, "name", None)

    @property
    def closed(self) -> bool:
        return bool(self._raw.closed)

    @property
    def arraysize(self) -> int:
        return int(self._raw.arraysize)

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._raw.arraysize = value

    async def close(self) -> None:
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


class AsyncGuardedConnection:
    """A psycopg 3 AsyncConnection acting for one employee on one ticket."""

    def __init__(self, guard: Guard, raw: psycopg.AsyncConnection[Any], session: Session) -> None:
        self._guard = guard
        self._raw = raw
        self._session = session

    @classmethod
    async def connect(
        cls, guard: Guard, conninfo: str, session: Session, **kwargs: Any
    ) -> AsyncGuardedConnection:
        return cls(guard, await psycopg.AsyncConnection.connect(conninfo, **kwargs), session)

    @property
    def user(self) -> str:
        return self._session.user

    @property
    def ticket(self) -> str | None:
        return self._session.ticket

    def cursor(self, name: str = "", **kwargs: Any) -> AsyncGuardedCursor:
        raw = self._raw.cursor(name, **kwargs) if name else self._raw.cursor(**kwargs)
        return AsyncGuardedCursor(self, raw)

    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> AsyncGuardedCursor:
        return await self.cursor().execute(query, params, **kwargs)

    def pipeline(self) -> Any:
        raise self._guard.refuse(
            Reason.PATH_FORBIDDEN,
            "Pipeline mode is not available on a guarded connection.",
            self._session,
            kind="pipeline",
        )

    def transaction(self, *args: Any, **kwargs: Any) -> Any:
        return self._raw.transaction(*args, **kwargs)

    async def commit(self) -> None:
        await self._raw.commit()

    async def rollback(self) -> None:
        await self._raw.rollback()

    async def close(self) -> None:
        await self._raw.close()

    @property
    def closed(self) -> bool:
        return bool(self._raw.closed)

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
