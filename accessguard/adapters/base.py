"""The one gate rows leave through, shared by every guarded cursor (issue 17, issue 23).

The rules themselves live in ``accessguard.adapters.gate`` (no I/O); this
module holds the sync cursors' fetch paths over them.

Before a statement is sent, the lane authorizes it and makes its
``Authorized``: the statement's own row cap and ledger tally, and its count
of rows handed over. After it, the adapter binds that object to the result it
belongs to, never to the cursor alone:

- a cursor's current result: ``_st``, replaced only when the driver's current
  result is replaced (execute, a stream that starts, nextset);
- a stream: the iterator ``stream()`` returns captures its own;
- each result set of an ``executemany(..., returning=True)``: one per
  parameter set, selected by ``nextset()``.

Every method that hands rows over (fetchone / fetchmany / fetchall,
iteration, stream, nextset's results, named cursors) asks the bound object
(``Authorized.take``) first. A result refused after it ran is withheld: it
stays withheld whatever is sent later on the same cursor. A fetch that would
pass the cap, or that the closed guard's ledger could no longer record,
raises instead of returning those rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import FunctionType
from typing import TYPE_CHECKING, Any, ClassVar, cast

import psycopg
from psycopg import rows

from accessguard.adapters.gate import NOTHING, PsycopgGate, RowCounter, decide, query_text
from accessguard.errors import Reason

if TYPE_CHECKING:
    from accessguard.engine.gate import Gate
    from accessguard.engine.lane import Authorized, Lane, Session

__all__ = [
    "APPLICATION_FACTORY_CODE",
    "CHUNK",
    "NOTHING",
    "ConnectionShell",
    "CountingCursor",
    "PsycopgShell",
    "RowCounter",
    "Streamed",
    "calls_application",
]

#: rows a guarded iteration asks the driver for at a time (a named cursor's round trip)
CHUNK = 100
#: the driver's server-side cursors: a tuple made once (a union type is built per use)
_SERVER_CURSORS = (psycopg.ServerCursor, psycopg.AsyncServerCursor)
#: the code of the functions psycopg's class_row / args_row / kwargs_row make: each calls
#: the application's class or function with a row's values
APPLICATION_FACTORY_CODE = tuple(
    cast("FunctionType", made).__code__
    for made in (rows.class_row(object), rows.args_row(tuple), rows.kwargs_row(dict))
)


_CLASS_ROW, _ARGS_ROW, _KWARGS_ROW = APPLICATION_FACTORY_CODE


def calls_application(factory: object) -> bool:
    """Whether ``factory`` is one of psycopg's row factories that call the application.

    Asked for every cursor made: three identity tests, no generator (400 -> 60 ns).
    """
    if type(factory) is not FunctionType:
        return False
    code = factory.__code__
    return (
        code is _CLASS_ROW or code is _ARGS_ROW or code is _KWARGS_ROW
    ) and factory.__globals__ is rows.__dict__


class CountingCursor(RowCounter):
    """Base of the sync guarded cursors: ``_raw`` is the driver's cursor."""

    def fetchone(self) -> Any:
        st = self._st
        if st.withheld:
            return None
        if self._named:
            self.recheck(st)
        row = self._raw.fetchone()
        if row is None:
            return None
        if not st.take(1):
            raise self.row_refusal(st, 1)
        return row if self._factory is None else self._made([row])[0]

    def fetchmany(self, size: int | None = None) -> list[Any]:
        st = self._st
        if st.withheld:
            return []
        if self._named:
            self.recheck(st)
        rows = self._raw.fetchmany() if size is None else self._raw.fetchmany(size)
        if type(rows) is not list:
            rows = list(rows)
        if not st.take(len(rows)):
            raise self.row_refusal(st, len(rows))
        return rows if self._factory is None else self._made(rows)

    def fetchall(self) -> list[Any]:
        st = self._st
        if st.withheld:
            return []
        if self._named:
            self.recheck(st)
        rows = self._raw.fetchall()
        if type(rows) is not list:
            rows = list(rows)
        if not st.take(len(rows)):
            raise self.row_refusal(st, len(rows))
        return rows if self._factory is None else self._made(rows)

    def __iter__(self) -> Iterator[Any]:
        # chunk by chunk through fetchmany: each chunk is counted against the
        # statement whose result the cursor holds when it is fetched
        while rows := self.fetchmany(CHUNK):
            yield from rows


class Streamed:
    """What a guarded ``stream()`` returns: the driver's stream, through its statement's gate.

    The server produces a stream's rows while they are read: every ``CHUNK``
    rows the statement's ticket is looked up again (``RowCounter.recheck``), as a
    server-side cursor's is before each fetch, so a ticket closed or revoked
    meanwhile stops it within ``CHUNK`` rows.
    """

    __slots__ = ("_cursor", "_cut", "_rebind", "_rows", "_since", "_st")

    def __init__(
        self, cursor: RowCounter, st: Authorized, rows: Iterator[Any], *, rebind: bool
    ) -> None:
        self._cursor = cursor
        #: whether the cursor's own fetches read this stream's result once it runs
        #: (not a named cursor's: they read its portal, the statement it declared)
        self._rebind = rebind
        self._st = st
        self._rows = rows
        self._since = 0  # rows handed over since the ticket was last looked up
        self._cut = False  # closed with its cursor: reading on is an error, as psycopg's

    def __iter__(self) -> Streamed:
        return self

    def __next__(self) -> Any:
        if self._cut:
            raise psycopg.InterfaceError("the cursor is closed")
        st = self._st
        if st.withheld:
            raise StopIteration
        cursor = self._cursor
        if self._rebind:  # once it runs, the driver's current result is this stream's
            cursor._st = st
        self._since += 1
        if self._since > CHUNK:
            try:
                cursor.recheck(st)
            except BaseException:  # refused, or the look-up failed: nothing more either way
                st.withheld = True
                self.close()
                raise
            self._since = 1
        row = next(self._rows)
        if not st.take(1):
            self.close()
            raise cursor.row_refusal(st, 1)
        return cursor.made(row)

    def close(self) -> None:
        """Stop the stream (the driver cancels what the server still sends)."""
        close = getattr(self._rows, "close", None)
        if close is not None:
            close()

    def cut(self) -> None:
        """Stop the stream as its cursor closes: reading it on raises."""
        self._cut = True
        self.close()


class PsycopgShell(PsycopgGate):
    """What the sync and async psycopg cursors share besides the gate's rules.

    Their fields, COPY's refusal, and what they tell of the driver's cursor:
    values only, never the driver's objects.
    """

    #: the driver's client-side binding cursor class: its values are merged before the decision
    _client: ClassVar[type[Any]] = psycopg.ClientCursor
    _conn: Any
    _lane: Lane
    _mogrify: Callable[[str, Any], str] | None

    def __init__(self, conn: Any, raw: Any) -> None:
        self._conn = conn
        self._raw = raw
        self._guard = conn._guard
        self._session = conn._session
        self._lane = conn._lane
        self._mogrify = raw.mogrify if isinstance(raw, self._client) else None
        self._named = isinstance(raw, _SERVER_CURSORS)
        if calls_application(raw.row_factory):  # applied by the gate, to counted rows
            self._factory = raw.row_factory
            raw.row_factory = rows.tuple_row

    def _decide(self, query: Any, params: Any) -> Authorized:
        """Bind (the gate) and decide (the lane) one statement, here and now."""
        lane = self._lane
        text = query if type(query) is str else query_text(query, self._conn._raw, lane)
        return decide(lane, text, params, self._mogrify)

    def copy(self, statement: Any, params: Any = None, **_kwargs: Any) -> Any:
        raise self._guard.refuse(
            Reason.STATEMENT_FORBIDDEN,
            "COPY statements are never allowed through the guard.",
            self._session,
            kind="copy",
        )

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


class ConnectionShell:
    """What the sync and async guarded psycopg connections share: one employee, one lane."""

    _raw: Any

    def __init__(self, guard: Gate, raw: Any, session: Session) -> None:
        self._guard = guard
        self._raw = raw
        self._session = session
        self._lane: Lane = guard.lane(session, "postgres")

    @property
    def user(self) -> str:
        return self._session.user

    @property
    def ticket(self) -> str | None:
        return self._session.ticket

    @property
    def closed(self) -> bool:
        return bool(self._raw.closed)

    def pipeline(self) -> Any:
        raise self._guard.refuse(
            Reason.PATH_FORBIDDEN,
            "Pipeline mode is not available on a guarded connection.",
            self._session,
            kind="pipeline",
        )
