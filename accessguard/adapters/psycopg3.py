"""Guarded psycopg 3 connections and cursors (sync): a shell over the gate.

The rules are ``accessguard.adapters.gate``'s (binding, row cap, executemany,
ledger counting), the decision the lane's; what the sync and async cursors
share besides is ``accessguard.adapters.base``'s. Every path that sends SQL
is decided first: execute, executemany, stream, named (server-side) cursors.
COPY and pipeline mode are refused. The guarded objects expose an explicit
set of methods; there is no ``__getattr__`` fall-through to the raw
connection, so nothing unguarded leaks.

What is analyzed is what is sent (``gate.bind``): psycopg's own converter
turns ``%s`` and ``%(name)s`` into ``$n`` (and ``%%`` into ``%``) before
analysis; a client-side binding cursor (``ClientCursor``) is analyzed on its
merged text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import rows

from accessguard.adapters.base import (
    NOTHING,
    ConnectionShell,
    CountingCursor,
    PsycopgShell,
    Streamed,
    calls_application,
)
from accessguard.adapters.gate import (
    convert_query,
    decide,
    one_statement,
    refuse_mixed,
)
from accessguard.engine import probes
from accessguard.errors import Reason

if TYPE_CHECKING:
    from types import TracebackType

    from accessguard.engine.gate import Gate
    from accessguard.engine.lane import Authorized, Lane, Session

DIALECT = "postgres"


__all__ = ["DIALECT", "GuardedConnection", "GuardedCursor", "authorize_statement", "convert_query"]


def authorize_statement(
    lane: Lane,
    text: str,
    params: Any,
    *,
    mogrify: Callable[[str, Any], str] | None = None,
    probing: bool = False,
) -> Authorized:
    """Decide one statement as psycopg will send it (every psycopg-based adapter's one path).

    ``lane``: the employee's (``guard.lane(session, "postgres")``). With
    client-side binding (``mogrify`` given) the values are merged into the
    text, even inside comments: the merged text is analyzed and sent, with no
    parameters. Otherwise ``%s`` / ``%(name)s`` become ``$n`` first; for
    positional parameters (whose order that keeps) only when a plan is made.
    ``probing``: the caller runs ``Authorized.probe`` before sending it
    (``accessguard.engine.probes.run``); otherwise a key-bound statement is refused.
    """
    return decide(lane, text, params, mogrify, probing=probing)


#: row factories psycopg ships: the driver's cursor they receive stays inside psycopg
_ROW_FACTORIES = (rows.tuple_row, rows.dict_row, rows.namedtuple_row, rows.scalar_row)


def psycopg_row_factory(factory: object) -> bool:
    """Whether psycopg made ``factory``: no other code receives the driver's cursor through it.

    class_row / args_row / kwargs_row pass on values only; the guarded cursors
    apply them to rows already counted (``base.calls_application``).
    """
    return any(factory is known for known in _ROW_FACTORIES) or calls_application(factory)


def refuse_hooks(
    guard: Gate, session: Session, options: Mapping[str, Any], cursor_classes: tuple[type, ...]
) -> None:
    """Refuse (audited) options that would hand the driver's own objects to other code.

    psycopg calls a row factory with its raw cursor, builds a cursor factory
    with the raw connection, and hands an adapters ``context`` to the
    loaders and dumpers it holds: any of them from outside would reach the
    raw connection. psycopg's own row factories and cursor classes are fine.
    """
    hook = None
    factory = options.get("row_factory")
    if factory is not None and not psycopg_row_factory(factory):
        hook = "row factory"
    cursor_factory = options.get("cursor_factory")
    if cursor_factory is not None and not any(cursor_factory is c for c in cursor_classes):
        hook = "cursor factory"
    if options.get("context") is not None:
        hook = "adaptation context"
    if hook is not None:
        raise guard.refuse(
            Reason.PATH_FORBIDDEN,
            f"Refused: a custom {hook} would be handed the driver's own objects; "
            "use psycopg's own (tuple_row, dict_row, class_row, ...).",
            session,
            kind="connect",
        )


class GuardedCursor(CountingCursor, PsycopgShell):
    """A psycopg cursor whose every statement is checked before it is sent.

    A shell over the gate (``accessguard.adapters.gate``): it sends and
    raises; which result belongs to which statement is the gate's.
    """

    _client = psycopg.ClientCursor
    _conn: GuardedConnection
    #: the last stream started (the connection runs one at a time), closed with the cursor
    _stream: Streamed | None = None

    # ------------------------------------------------------------------ sending

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> GuardedCursor:
        ok = self._decide(query, params)
        if ok.probe is not None:
            probes.run(self._guard, ok, self._conn._raw)
        # until the driver returns, the cursor's result is no statement's: an execute
        # interrupted (KeyboardInterrupt, a timeout) after the server answered leaves the
        # driver holding the new result, never to be read through the previous gate
        self._st = NOTHING
        self._raw.execute(ok.sql, ok.params, **kwargs)
        over = self._executed(ok)
        if over is not None:  # refused before a single row is handed over
            raise self._guard.over_row_cap(ok, over)
        return self

    def executemany(
        self, query: Any, params_seq: Iterable[Any], *, returning: bool = False, **kwargs: Any
    ) -> None:
        """Every parameter set decided first; each result set read through its own statement."""
        batch = [self._decide(query, params) for params in params_seq]
        if not batch:
            return
        if not one_statement(batch):  # one statement, one shape: never guess
            raise refuse_mixed(self._guard, self._session, batch)
        probes.run_batch(self._guard, batch, self._conn._raw)  # every probe before any write
        self._st = NOTHING  # until the batch is back, the old result is gone
        self._raw.executemany(
            batch[0].sql, [ok.params or () for ok in batch], returning=returning, **kwargs
        )
        over = self._batched(batch, returning=returning)
        if over is not None:
            raise self._guard.over_row_cap(self._st, over)

    def nextset(self) -> bool | None:
        """Move to the next result set (of an executemany with ``returning=True``)."""
        current = self._st
        if not self._raw.nextset():
            return None
        over = self._next(current)
        if over is not None:
            raise self._guard.over_row_cap(self._st, over)
        return True

    def stream(self, query: Any, params: Any = None, **kwargs: Any) -> Streamed:
        """Decided when called; its rows pass through its own statement, whatever runs next."""
        ok = self._decide(query, params)
        probes.run(self._guard, ok, self._conn._raw)
        self._stream = Streamed(
            self,
            ok,
            self._raw.stream(ok.sql, ok.params, **kwargs),
            rebind=not self._named,
        )
        return self._stream

    # ------------------------------------------------------------------ reading

    def scroll(self, value: int, mode: str = "relative") -> None:
        self._raw.scroll(value, mode)

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:  # a stream started and not finished holds the connection
            stream.cut()  # (psycopg's lock): closing the cursor first would wait forever
        self._raw.close()

    def __enter__(self) -> GuardedCursor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class GuardedTransaction:
    """What ``with conn.transaction() as tx`` yields: never the raw connection."""

    def __init__(self, conn: Any, savepoint_name: str | None) -> None:
        #: the guarded connection (sync or async) the block runs on
        self.connection = conn
        self.savepoint_name = savepoint_name


class TransactionBlock:
    """``conn.transaction()``: psycopg's block, yielding a ``GuardedTransaction``.

    A class rather than a ``@contextmanager`` generator, whose public ``gen``
    would lead to psycopg's own Transaction (and through it the raw
    connection and libpq handle).
    """

    __slots__ = ("_block", "_conn")

    def __init__(self, conn: GuardedConnection, block: Any) -> None:
        self._conn = conn
        self._block = block

    def __enter__(self) -> GuardedTransaction:
        tx = self._block.__enter__()
        return GuardedTransaction(self._conn, tx.savepoint_name)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return self._block.__exit__(exc_type, exc, tb)  # type: ignore[no-any-return]


class GuardedConnection(ConnectionShell):
    """A psycopg 3 connection acting for one employee on one ticket."""

    _raw: psycopg.Connection[Any]

    @classmethod
    def connect(
        cls, guard: Gate, conninfo: str, session: Session, **kwargs: Any
    ) -> GuardedConnection:
        refuse_hooks(guard, session, kwargs, (psycopg.Cursor, psycopg.ClientCursor))
        raw = psycopg.Connection.connect(conninfo, **kwargs)
        guard.check_schema(raw)  # the raw connection, before any statement
        return cls(guard, raw, session)

    def cursor(self, name: str = "", **kwargs: Any) -> GuardedCursor:
        if kwargs:
            refuse_hooks(self._guard, self._session, kwargs, ())
        raw = self._raw.cursor(name, **kwargs) if name else self._raw.cursor(**kwargs)
        return GuardedCursor(self, raw)

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> GuardedCursor:
        return GuardedCursor(self, self._raw.cursor()).execute(query, params, **kwargs)

    def transaction(
        self, savepoint_name: str | None = None, *, force_rollback: bool = False
    ) -> TransactionBlock:
        """psycopg's transaction block; what it yields leads back to this guarded connection."""
        return TransactionBlock(
            self, self._raw.transaction(savepoint_name, force_rollback=force_rollback)
        )

    def commit(self) -> None:
        self._raw.commit()

    def rollback(self) -> None:
        self._raw.rollback()

    def close(self) -> None:
        self._raw.close()

    @property
    def autocommit(self) -> bool:
        return bool(self._raw.autocommit)

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        self._raw.autocommit = value

    def __enter__(self) -> GuardedConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # psycopg's own semantics: commit on success, roll back on error, close.
        self._raw.__exit__(exc_type, exc, tb)
