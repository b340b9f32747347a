"""The Django adapter's execute wrapper, and the cursor paths that skip execute wrappers.

``GuardExecuteWrapper`` decides every statement a guarded Django connection
sends; ``install`` makes it a connection's innermost wrapper for good;
``seal`` makes the cursors of a connection refuse ``copy()``, ``stream()`` and
``callproc()``, which Django's cursor wrapper forwards past execute wrappers.
``accessguard.adapters.django`` (binding, middleware, settings, the app)
builds on this module and re-exports ``GuardExecuteWrapper`` and ``install``;
what is decided, passed through and refused is described there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from accessguard.adapters.binding import bound_session
from accessguard.adapters.django_settings import get_guard
from accessguard.adapters.gate import one_statement, over_cap, refuse_mixed, written
from accessguard.adapters.psycopg3 import DIALECT, authorize_statement
from accessguard.engine import probes
from accessguard.engine.gate import Gate
from accessguard.errors import AccessDenied, Reason

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

    from accessguard.engine.lane import Authorized, Session

INTEGRATION = "django"
_SAVEPOINT = re.compile(r'(?:SAVEPOINT|RELEASE SAVEPOINT|ROLLBACK TO SAVEPOINT) "s\d+_x\d+"')


@dataclass(slots=True)
class Exemption:
    """An ``unguarded()`` block: who opened it, why, and how many statements it let through."""

    by: str
    reason: str
    statements: int = 0


#: the ``unguarded()`` block this context is in, if any (never inherited by a new thread)
EXEMPTION: ContextVar[Exemption | None] = ContextVar("accessguard_django_exempt", default=None)
#: the guard ``guarded(guard=...)`` chose for this context (else the settings' guard)
BLOCK_GUARD: ContextVar[Gate | None] = ContextVar("accessguard_django_guard", default=None)


def active_guard(explicit: Gate | None = None) -> Gate:
    """The guard of the enclosing ``guarded(guard=...)``, else ``explicit``, else the settings'."""
    chosen = BLOCK_GUARD.get()
    if chosen is not None:
        return chosen
    return explicit if explicit is not None else get_guard()


# ---------------------------------------------------------------------- the wrapper


class GuardExecuteWrapper:
    """A Django execute wrapper: the guard decides on every statement before it is sent.

    ``guard=None``: the guard of ``settings.ACCESSGUARD`` (or of the enclosing
    ``guarded(guard=...)``), looked up per statement.
    """

    def __init__(self, guard: Gate | None = None) -> None:
        self._guard = guard

    @property
    def guard(self) -> Gate:
        return active_guard(self._guard)

    def __call__(
        self,
        execute: Callable[..., Any],
        sql: str,
        params: Any,
        many: bool,
        context: dict[str, Any],
    ) -> Any:
        exemption = EXEMPTION.get()
        if exemption is not None:  # unguarded(by=..., reason=...): audited when opened
            exemption.statements += 1
            return execute(sql, params, many, context)
        guard = active_guard(self._guard)
        session = bound_session(guard, integration=INTEGRATION)  # nobody: audited, nothing sent
        if not many and params is None and _SAVEPOINT.fullmatch(sql):
            return execute(sql, params, many, context)
        raw = context["cursor"].cursor
        if isinstance(raw, psycopg.ServerCursor):
            raise _refuse_path(
                guard,
                "Server-side cursors (QuerySet.iterator()) are not available under the guard: "
                "their rows could not be counted.",
                session,
            )
        if not isinstance(raw, psycopg.Cursor):
            raise _refuse_path(guard, "Only Django's psycopg 3 cursors can be guarded.", session)
        client = isinstance(raw, psycopg.ClientCursor)
        if many:
            return self._many(
                execute, raw, sql, params, context=context, session=session, client=client
            )
        ok = _authorize(guard, raw, sql, params, session, client=client)
        if ok.probe is not None:
            probes.run(guard, ok, raw.connection)
        sent = None if client or params is None else ok.params
        if ok.row_cap is None or ok.facts.kind == "select" or "returning" not in ok.sql.lower():
            result = execute(ok.sql, sent, False, context)
            _count(guard, raw, ok)
            return result
        # a write under a row cap that returns rows: over the cap it is refused
        # and undone, so it runs inside a savepoint (a transaction of its own
        # in autocommit), rolled back on any error
        with _undoable(raw.connection):
            result = execute(ok.sql, sent, False, context)
            _count(guard, raw, ok)
        return result

    def _many(  # noqa: PLR0913 - the wrapper's arguments, passed on
        self,
        execute: Callable[..., Any],
        raw: Any,
        sql: str,
        params_seq: Sequence[Any],
        *,
        context: dict[str, Any],
        session: Session,
        client: bool,
    ) -> Any:
        guard = active_guard(self._guard)
        batch = [_authorize(guard, raw, sql, p, session, client=client) for p in params_seq]
        if not batch:
            return execute(sql, params_seq, True, context)
        probes.run_batch(guard, batch, raw.connection)  # every probe before the first write
        if client:
            # merged statements differ by their values: each is sent on its
            # own, all of them checked before the first is.
            result = None
            for ok in batch:
                result = execute(ok.sql, [None], True, context)
                _written(raw, ok)
            return result
        if not one_statement(batch):  # one statement, one shape: never guess
            raise refuse_mixed(guard, session, batch)
        result = execute(batch[0].sql, [ok.params or [] for ok in batch], True, context)
        _written(raw, batch[0])  # one plan, one tally: the batch's rows changed
        return result


def _authorize(  # noqa: PLR0913 - one statement's inputs
    guard: Gate, raw: Any, sql: str, params: Any, session: Session, *, client: bool
) -> Authorized:
    return authorize_statement(
        guard.lane(session, DIALECT),
        sql,
        params,
        mogrify=raw.mogrify if client else None,
        probing=True,
    )


def _count(guard: Gate, raw: Any, ok: Authorized) -> None:
    """Count the result's rows (all in client memory now); over the cap, withhold them all.

    Any statement that returns rows is capped, ``UPDATE ... RETURNING`` as much
    as ``SELECT``: the ledger gets exactly what the application receives.
    """
    if raw.description is None:
        _written(raw, ok)  # the rows a write changed
        return
    count = max(int(raw.rowcount), 0)
    if over_cap(ok, count):
        raw.close()  # nothing more can be fetched from this cursor
        raise guard.over_row_cap(ok, count)
    if ok.tally is not None:
        ok.tally.add(count)


def _written(raw: Any, ok: Authorized) -> None:
    """Ledger the rows a write without a result changed (as the psycopg adapter does)."""
    tally = ok.tally
    if tally is not None and tally.writes:
        written(tally, raw.description, raw.rowcount)


_UNDO = '"_accessguard_row_cap"'


@contextmanager
def _undoable(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Run the block inside a savepoint (autocommit: a transaction) that an error rolls back.

    Sent on the driver connection itself: the guard's own statements, no data.
    Unlike psycopg's ``transaction()``, never commits a transaction Django
    manages (``AUTOCOMMIT = False``): outside autocommit it only adds a savepoint.
    """
    began = bool(conn.autocommit)
    conn.execute("BEGIN" if began else f"SAVEPOINT {_UNDO}")
    try:
        yield
    except BaseException:
        with suppress(psycopg.Error):  # a lost connection rolls back by itself
            if began:
                conn.execute("ROLLBACK")
            else:
                conn.execute(f"ROLLBACK TO SAVEPOINT {_UNDO}")
                conn.execute(f"RELEASE SAVEPOINT {_UNDO}")
        raise
    conn.execute("COMMIT" if began else f"RELEASE SAVEPOINT {_UNDO}")


def _refuse_path(guard: Gate, message: str, session: Session) -> AccessDenied:
    return guard.refuse(Reason.PATH_FORBIDDEN, message, session, kind="unknown")


class _GuardedWrappers(list[Any]):
    """A connection's ``execute_wrappers`` with the guard always applied, innermost.

    The guard decides on exactly what is sent (no other wrapper runs after it),
    and ``connection.execute_wrapper()`` blocks, which pop the last entry, can
    never remove it: it is not an entry, it is added on iteration.
    """

    guard_wrapper = GuardExecuteWrapper()

    def __reversed__(self) -> Iterator[Any]:
        yield self.guard_wrapper
        yield from list.__reversed__(self)


def install(db: BaseDatabaseWrapper) -> BaseDatabaseWrapper:
    """Guard every statement on ``db`` from now on, in this thread (idempotent).

    The aliases in ``ACCESSGUARD["DATABASES"]`` are installed on every
    connection Django opens, in every thread: call this for other wrappers.
    """
    if not isinstance(db.execute_wrappers, _GuardedWrappers):
        db.execute_wrappers = _GuardedWrappers(db.execute_wrappers)
    seal(db)
    return db


def installed(db: BaseDatabaseWrapper) -> bool:
    """Whether ``install`` guards ``db`` (its wrappers always end with the guard's)."""
    return isinstance(db.execute_wrappers, _GuardedWrappers)


# ---------------------------------------------------------------------- paths past execute


class _SealedCursor:
    """Mixed into Django's psycopg cursor class: paths that skip execute wrappers refuse."""

    _accessguard_base: type

    def _refused(self, reason: Reason, message: str, kind: str) -> AccessDenied:
        guard = active_guard()
        session = bound_session(guard, integration=INTEGRATION)
        return guard.refuse(reason, message, session, kind=kind)

    def copy(self, *args: Any, **kwargs: Any) -> Any:
        if EXEMPTION.get() is not None:
            return super().copy(*args, **kwargs)  # type: ignore[misc]
        raise self._refused(
            Reason.STATEMENT_FORBIDDEN,
            "COPY statements are never allowed through the guard.",
            "copy",
        )

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        if EXEMPTION.get() is not None:
            return super().stream(*args, **kwargs)  # type: ignore[misc]
        raise self._refused(
            Reason.PATH_FORBIDDEN, "cursor.stream() is not available under the guard.", "unknown"
        )

    def callproc(self, *args: Any, **kwargs: Any) -> Any:
        if EXEMPTION.get() is not None:
            return super().callproc(*args, **kwargs)  # type: ignore[misc]
        raise self._refused(
            Reason.PATH_FORBIDDEN, "cursor.callproc() is not available under the guard.", "unknown"
        )


_sealed_classes: dict[type, type] = {}


def seal(db: BaseDatabaseWrapper) -> None:
    """Make the cursors ``db``'s open psycopg connection creates refuse copy/stream/callproc."""
    raw = db.connection
    if raw is None or not isinstance(raw, psycopg.Connection):
        return
    base = raw.cursor_factory
    if issubclass(base, _SealedCursor):
        return
    sealed = _sealed_classes.get(base)
    if sealed is None:
        sealed = _sealed_classes[base] = type(
            f"Guarded{base.__name__}", (_SealedCursor, base), {"_accessguard_base": base}
        )
    raw.cursor_factory = sealed


def unseal(db: BaseDatabaseWrapper) -> None:
    """Undo ``seal`` (a ``guarded()`` block ended) unless ``install`` guards ``db``."""
    raw = db.connection
    if raw is not None and isinstance(raw, psycopg.Connection) and not installed(db):
        factory = raw.cursor_factory
        if issubclass(factory, _SealedCursor):
            raw.cursor_factory = factory._accessguard_base
