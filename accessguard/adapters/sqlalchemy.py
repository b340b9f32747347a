"""Guard a SQLAlchemy 2 Engine (psycopg 3 dialect): every statement it sends, Core and ORM.

``instrument(guard, engine)`` adds three engine event listeners:

- ``before_cursor_execute`` (``retval=True``): takes the employee bound by
  ``guard.acting_as`` (none bound: ``ConfigurationError``, reason
  ``session.unbound``, audited; nothing is sent),
  converts SQLAlchemy's ``%(name)s`` / ``%s`` text with psycopg's own converter
  (what psycopg would send), lets the guard decide, and hands SQLAlchemy the
  guarded SQL and its positional parameters to pass to the cursor unchanged.
  executemany checks every parameter set before anything is sent.
- ``after_cursor_execute``: counts the result's rows for the access ledger and
  enforces the per-statement row cap, on every statement that returns rows
  (``UPDATE ... RETURNING`` as much as ``SELECT``). SQLAlchemy's psycopg cursors
  are client-side, so after ``execute`` the whole result is in client memory:
  the count is exactly the rows PostgreSQL handed over, whether or not the
  application reads them all (``Result.first()`` is counted for every row the
  statement returned). A result over the cap is refused before SQLAlchemy
  builds a Result from it, and its cursor is closed. A capped write with
  ``RETURNING`` runs inside a savepoint the guard sends on the driver
  connection (a transaction of its own under AUTOCOMMIT): over the cap it is
  rolled back, so a refused write changes nothing. An insertmanyvalues
  ``INSERT ... RETURNING`` is refused before its first batch when its
  parameter sets (one row each at most) could pass the cap.
- ``handle_error``: SQLAlchemy wraps driver errors in ``sqlalchemy.exc.DBAPIError``
  subclasses; a refusal (``AccessGuardError``) reaches the caller as itself. A
  capped write that failed in the database has its savepoint rolled back.

Passed through unchecked: only the SAVEPOINT / RELEASE SAVEPOINT / ROLLBACK TO
SAVEPOINT statements SQLAlchemy compiles itself for ``begin_nested()``,
recognised by their compiled construct *and* their exact text (no data, no
parameters).

Refused: server-side cursors (``stream_results`` / ``yield_per``), whose rows
cannot be counted through engine events; executemany through a client-side
binding cursor (``ClientCursor``), whose merged statements differ per row.

Not guarded, by SQLAlchemy's design: ``engine.raw_connection()`` and any
driver connection reached through ``Connection.connection`` skip engine
events. Wrap such a connection yourself:
``guard.wrap(engine.raw_connection().driver_connection, user=..., ticket=...)``.
Engine-level reflection (``MetaData.reflect``, ``autoload_with``) reads the
system catalogs, which the guard refuses: reflect on an engine that is not
instrumented, or declare the tables.
"""

from __future__ import annotations

import contextlib
import copy
import re
import weakref
from typing import TYPE_CHECKING, Any, cast

import psycopg
from sqlalchemy import event
from sqlalchemy.engine.interfaces import ExecuteStyle
from sqlalchemy.sql.expression import (
    ReleaseSavepointClause,
    RollbackToSavepointClause,
    SavepointClause,
)
from sqlalchemy.util import concurrency

from accessguard.adapters import offload
from accessguard.adapters.binding import bound_session
from accessguard.adapters.gate import one_statement, over_cap, refuse_mixed, written
from accessguard.adapters.psycopg3 import DIALECT, authorize_statement
from accessguard.engine import probes
from accessguard.errors import AccessDenied, AccessGuardError, ConfigurationError, Reason

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.engine import Connection, Engine, ExceptionContext, ExecutionContext
    from sqlalchemy.ext.asyncio import AsyncEngine

    from accessguard.engine.gate import Gate
    from accessguard.engine.lane import Authorized, Session

_DRIVERS = frozenset({"psycopg", "psycopg_async"})
_SAVEPOINT_TEXT = re.compile(
    r"(?:SAVEPOINT|RELEASE SAVEPOINT|ROLLBACK TO SAVEPOINT) [A-Za-z_][A-Za-z0-9_]{0,62}"
)
_SAVEPOINT_CLAUSES = (SavepointClause, ReleaseSavepointClause, RollbackToSavepointClause)

INTEGRATION = "sqlalchemy"
#: the savepoint that makes a capped write undoable (sent on the driver connection itself)
_UNDO = "_accessguard_row_cap"
#: SQLAlchemy's greenlet bridge: runs a coroutine from the sync event hooks (AsyncEngine)
_await: Any = getattr(concurrency, "await_", None) or concurrency.await_only

#: engines instrumented so far, and the guard of each
_INSTRUMENTED: weakref.WeakKeyDictionary[Engine, Gate] = weakref.WeakKeyDictionary()


def instrument(guard: Gate, engine: Engine | AsyncEngine) -> Engine | AsyncEngine:
    """Guard every statement ``engine`` sends; return the engine. Idempotent per guard."""
    sync_engine = cast("Engine", getattr(engine, "sync_engine", engine))  # AsyncEngine: its core
    dialect = sync_engine.dialect
    if dialect.name != "postgresql" or dialect.driver not in _DRIVERS:
        raise ConfigurationError(
            "guard.instrument() supports SQLAlchemy's psycopg 3 dialect "
            f"(postgresql+psycopg://), not {dialect.name}+{dialect.driver}",
            reason=Reason.INTEGRATION_UNSUPPORTED,
        )
    known = _INSTRUMENTED.get(sync_engine)
    if known is guard:
        return engine
    if known is not None:
        raise ConfigurationError(
            "this engine is already instrumented by another guard",
            reason=Reason.INTEGRATION_UNSUPPORTED,
        )
    listener = _Listener(guard)
    event.listen(sync_engine, "before_cursor_execute", listener.before, retval=True)
    event.listen(sync_engine, "after_cursor_execute", listener.after)
    event.listen(sync_engine, "handle_error", listener.handle_error)
    _INSTRUMENTED[sync_engine] = guard
    return engine


class _Listener:
    """The engine events of one guard: decide before, count after, surface refusals."""

    def __init__(self, guard: Gate) -> None:
        self.guard = guard
        #: what each psycopg cursor was last allowed to run (read by ``after``)
        self.sent: weakref.WeakKeyDictionary[Any, Authorized] = weakref.WeakKeyDictionary()
        #: cursors running a capped write: True if the guard began its transaction itself
        self.undo: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()

    def before(  # noqa: PLR0913, PLR0917 - SQLAlchemy's event signature
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> tuple[str, Any]:
        session = bound_session(self.guard, integration=INTEGRATION)  # nobody: audited
        driver_cursor = _driver_cursor(cursor)
        self.sent.pop(driver_cursor, None)
        self._end_undo(driver_cursor, undo=True)  # a previous statement's, if it never ended
        if _own_savepoint(statement, parameters, context):
            return statement, parameters
        if isinstance(driver_cursor, psycopg.ServerCursor | psycopg.AsyncServerCursor):
            raise self._refuse(
                "Server-side cursors (stream_results, yield_per) are not available on an "
                "instrumented engine: their rows could not be counted.",
                session,
            )
        if not isinstance(driver_cursor, psycopg.Cursor | psycopg.AsyncCursor):
            raise self._refuse("An unknown cursor type cannot be guarded.", session)
        client = isinstance(driver_cursor, psycopg.ClientCursor | psycopg.AsyncClientCursor)
        # "insertmanyvalues" batches arrive flagged executemany but are each one
        # cursor.execute() of a multi-row INSERT with one parameter set.
        if executemany and not _one_execute(context):
            return self._many(driver_cursor, statement, parameters, session, client=client)
        # SQLAlchemy sends no parameters at all (so psycopg reads % literally)
        # only when the set is empty and the context says so.
        bare = not parameters and context is not None and context.no_parameters
        ok = self._authorize(
            driver_cursor, statement, None if bare else parameters, session, client=client
        )
        if ok.probe is not None:
            _probe(self.guard, (ok,), driver_cursor.connection)
        if ok.row_cap is not None and ok.facts.kind != "select":
            if executemany:
                self._cap_batches(ok, context)
            else:
                self._begin_undo(driver_cursor, ok)
        self.sent[driver_cursor] = ok
        if bare or client:
            return ok.sql, None
        return ok.sql, ok.params if ok.params is not None else []

    def _many(
        self,
        driver_cursor: Any,
        statement: str,
        parameters: Any,
        session: Session,
        *,
        client: bool,
    ) -> tuple[str, Any]:
        if client:
            raise self._refuse(
                "executemany through a client-side binding cursor is not available on an "
                "instrumented engine.",
                session,
            )
        batch = [
            self._authorize(driver_cursor, statement, params, session, client=False)
            for params in parameters
        ]
        if not batch:
            return statement, parameters
        if not one_statement(batch):  # one statement, one shape: never guess
            raise refuse_mixed(self.guard, session, batch)
        _probe(self.guard, batch, driver_cursor.connection)  # every probe before any write
        self.sent[driver_cursor] = batch[0]  # one plan, one tally: ``after`` counts the batch
        return batch[0].sql, [ok.params if ok.params is not None else [] for ok in batch]

    def _authorize(
        self, driver_cursor: Any, statement: str, params: Any, session: Session, *, client: bool
    ) -> Authorized:
        lane = self.guard.lane(session, DIALECT)
        mogrify = driver_cursor.mogrify if client else None
        if isinstance(driver_cursor, psycopg.AsyncCursor):
            # an AsyncEngine runs this hook in a greenlet on the event loop: a ticket store,
            # a Redis throttle or an audit write would stall every task; decide in the
            # adapters' bounded pool instead, and wait for it through SQLAlchemy's bridge
            ok: Authorized = _await(
                offload.off_loop(
                    authorize_statement, lane, statement, params, mogrify=mogrify, probing=True
                )
            )
            return ok
        return authorize_statement(lane, statement, params, mogrify=mogrify, probing=True)

    def _refuse(self, message: str, session: Session) -> AccessDenied:
        return self.guard.refuse(Reason.PATH_FORBIDDEN, message, session, kind="unknown")

    def after(  # noqa: PLR0913, PLR0917 - SQLAlchemy's event signature
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        driver_cursor = _driver_cursor(cursor)
        ok = self.sent.pop(driver_cursor, None)
        if ok is None:
            return
        count = max(int(cursor.rowcount), 0) if cursor.description is not None else 0
        # every statement that returns rows is capped, UPDATE ... RETURNING as
        # much as SELECT; an over-cap write is undone (its savepoint rolled back)
        over = over_cap(ok, count)
        self._end_undo(driver_cursor, undo=over)
        if over:
            raise self.guard.over_row_cap(ok, count)  # SQLAlchemy closes the cursor
        tally = ok.tally
        if count and tally is not None:
            tally.add(count)
        elif tally is not None and tally.writes:  # the rows an UPDATE changed
            written(tally, cursor.description, max(int(cursor.rowcount), 0))

    def _cap_batches(self, ok: Authorized, context: ExecutionContext | None) -> None:
        """An insertmanyvalues INSERT ... RETURNING: refused before its first batch is sent
        if its rows (at most one per parameter set, all batches together) could pass the cap.
        """
        compiled = getattr(context, "compiled", None)
        rows = len(getattr(context, "compiled_parameters", None) or ())
        if getattr(compiled, "effective_returning", None) and over_cap(ok, rows):
            raise self.guard.over_row_cap(ok, rows)

    def _begin_undo(self, driver_cursor: Any, ok: Authorized) -> None:
        """Before a capped write that may return rows: a savepoint (or a transaction) to undo."""
        if "returning" not in ok.sql.lower():
            return  # no RETURNING: no rows, nothing to cap
        raw = driver_cursor.connection
        began = bool(raw.autocommit)
        _run(raw, "BEGIN" if began else f"SAVEPOINT {_UNDO}")
        self.undo[driver_cursor] = began

    def _end_undo(self, driver_cursor: Any, *, undo: bool) -> None:
        began = self.undo.pop(driver_cursor, None)
        if began is None:
            return
        raw = driver_cursor.connection
        if began:
            _run(raw, "ROLLBACK" if undo else "COMMIT")
        elif undo:
            _run(raw, f"ROLLBACK TO SAVEPOINT {_UNDO}")
            _run(raw, f"RELEASE SAVEPOINT {_UNDO}")
        else:
            _run(raw, f"RELEASE SAVEPOINT {_UNDO}")

    def handle_error(self, context: ExceptionContext) -> BaseException | None:
        """Raise a refusal as itself, not wrapped in ``sqlalchemy.exc.DBAPIError``."""
        cursor = getattr(context.execution_context, "cursor", None)
        if cursor is not None:
            driver_cursor = _driver_cursor(cursor)
            self.sent.pop(driver_cursor, None)
            with contextlib.suppress(Exception):  # the driver error is what is raised
                self._end_undo(driver_cursor, undo=True)
        original = context.original_exception
        if isinstance(original, AccessGuardError):
            # a copy, so the one raised has the original as its cause, not itself
            return copy.copy(original)
        return None


def _run(raw: Any, sql: str) -> None:
    """Send one of the guard's own statements on the driver connection (sync or async)."""
    if isinstance(raw, psycopg.AsyncConnection):
        _await(raw.execute(sql))
    else:
        raw.execute(sql)


def _probe(guard: Gate, batch: Sequence[Authorized], raw: Any) -> None:
    """Run key-bound statements' probes on the driver connection (sync or async) first."""
    if isinstance(raw, psycopg.AsyncConnection):
        _await(probes.run_batch_async(guard, batch, raw))
    else:
        probes.run_batch(guard, batch, raw)


def _one_execute(context: ExecutionContext | None) -> bool:
    """Whether SQLAlchemy runs this as one cursor.execute() despite the executemany flag."""
    return getattr(context, "execute_style", None) is ExecuteStyle.INSERTMANYVALUES


def _driver_cursor(cursor: Any) -> Any:
    """The psycopg cursor under SQLAlchemy's async adaptor (itself for the sync dialect)."""
    return getattr(cursor, "_cursor", cursor)


def _own_savepoint(statement: str, parameters: Any, context: ExecutionContext | None) -> bool:
    """Whether this is a savepoint statement SQLAlchemy itself compiled (begin_nested)."""
    compiled = getattr(context, "compiled", None)
    return (
        compiled is not None
        and isinstance(compiled.statement, _SAVEPOINT_CLAUSES)
        and not parameters
        and _SAVEPOINT_TEXT.fullmatch(statement) is not None
    )
