"""Guarded DB-API 2.0 connections (sqlite3 and others).

sqlite3's ``Connection.execute`` and ``executescript`` bypass any cursor
override, so the connection object itself is wrapped; ``executescript`` is
refused. Supported parameter styles: ``qmark`` (``?``) and ``named``
(``:name``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from accessguard.adapters.base import NOTHING, CountingCursor
from accessguard.engine import probes
from accessguard.errors import Reason

if TYPE_CHECKING:
    from types import TracebackType

    from accessguard.engine.gate import Gate
    from accessguard.engine.lane import Authorized, Session


class GuardedDbapiCursor(CountingCursor):
    """A DB-API cursor whose every statement is checked before it is sent."""

    def __init__(self, conn: GuardedDbapiConnection, raw: Any) -> None:
        self._conn = conn
        self._raw = raw
        self._guard = conn._guard
        self._session = conn._session
        self._dialect = conn.dialect

    def _authorize(self, query: str, params: Any) -> Authorized:
        if not isinstance(query, str):
            raise TypeError(f"a query must be str, not {type(query).__name__}")
        return self._guard.authorize(
            query, params, self._session, dialect=self._conn.dialect, probing=True
        )

    def _probe(self, batch: Sequence[Authorized]) -> None:
        """Run the probes of key-bound statements on the connection before sending them."""
        conn = self._conn
        probes.run_batch(self._guard, batch, conn._raw, qmark=conn.dialect != "postgres")

    def execute(self, query: str, params: Any = None) -> GuardedDbapiCursor:
        ok = self._authorize(query, params)
        if ok.probe is not None:
            self._probe((ok,))
        self._st = NOTHING  # until the new result is there, the old one is gone
        if ok.params is None:
            self._raw.execute(ok.sql)
        else:
            self._raw.execute(ok.sql, ok.params)
        self._st = ok
        tally = ok.tally
        if tally is not None and tally.writes:
            self._written(tally)
        return self

    def executemany(self, query: str, params_seq: Iterable[Any]) -> GuardedDbapiCursor:
        """Every parameter set decided first; one statement for all, as with psycopg.

        Rows a driver hands over afterwards (sqlite3: those of the last
        execution's RETURNING) pass that execution's statement.
        """
        batch = [self._authorize(query, params) for params in params_seq]
        if not batch:
            return self
        self._one_statement(batch)  # one statement, one shape: never guess
        self._probe(batch)  # every probe before the first row is written
        self._st = NOTHING
        self._raw.executemany(batch[0].sql, [ok.params for ok in batch])
        self._st = batch[-1]
        tally = batch[0].tally  # one plan, one tally; the driver's rowcount is the batch's
        if tally is not None and tally.writes:
            self._written(tally)
        return self

    def executescript(self, _script: str) -> Any:
        conn = self._conn
        raise conn._guard.refuse(
            Reason.PATH_FORBIDDEN,
            "executescript runs many statements unchecked; it is refused.",
            conn._session,
            kind="script",
            dialect=conn.dialect,
        )

    @property
    def description(self) -> Any:
        return self._raw.description

    @property
    def rowcount(self) -> int:
        return int(self._raw.rowcount)

    @property
    def arraysize(self) -> int:
        return int(self._raw.arraysize)

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._raw.arraysize = value

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> GuardedDbapiCursor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class GuardedDbapiConnection:
    """A DB-API 2.0 connection acting for one employee on one ticket."""

    def __init__(self, guard: Gate, raw: Any, session: Session, *, dialect: str) -> None:
        self._guard = guard
        self._raw = raw
        self._session = session
        self.dialect = dialect

    def cursor(self) -> GuardedDbapiCursor:
        return GuardedDbapiCursor(self, self._raw.cursor())

    def execute(self, query: str, params: Any = None) -> GuardedDbapiCursor:
        return self.cursor().execute(query, params)

    def executemany(self, query: str, params_seq: Iterable[Any]) -> GuardedDbapiCursor:
        return self.cursor().executemany(query, params_seq)

    def executescript(self, script: str) -> Any:
        return self.cursor().executescript(script)

    def commit(self) -> None:
        self._raw.commit()

    def rollback(self) -> None:
        self._raw.rollback()

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> GuardedDbapiConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self._raw.commit()
        else:
            self._raw.rollback()
