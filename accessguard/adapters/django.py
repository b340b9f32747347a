"""Guard Django's database connections (PostgreSQL backend on psycopg 3).

Settings (all optional but one of ``GUARD`` / ``POLICIES``)::

    ACCESSGUARD = {
        "GUARD": guard,                 # a Guard, or a dotted path to one (or to a factory)
        "POLICIES": "policies/",        # ... or build one: policy directory,
        "TICKETS": "tickets.yaml",      #     ticket file (or a store / iterable of Ticket),
        "AUDIT": "audit.jsonl",         #     audit file (or sink)
        "TICKET_HEADER": "X-Ticket",    # the default resolver reads the ticket from it
        "RESOLVER": "app.mod.resolve",  # (request) -> (user, ticket) | None, or a callable
        "DATABASES": ["default"],       # the aliases guarded, in every thread
    }
    MIDDLEWARE = [..., "django.contrib.auth.middleware.AuthenticationMiddleware",
                  "accessguard.adapters.django.AccessGuardMiddleware", ...]

Every alias in ``DATABASES`` is guarded on every connection Django opens, in
every thread, for the life of the connection (not only while a request runs):
every ``cursor.execute`` / ``executemany`` there (ORM, raw SQL) is decided by
the guard for the employee bound in the current context. With nobody bound
(a thread the view started, which contextvars do not follow; code after the
view returned; a management command) it is refused with ``ConfigurationError``
(``session.unbound``) and audited. Add
``"accessguard.adapters.django.AccessGuardConfig"`` to ``INSTALLED_APPS``, last,
so this holds from ``django.setup()`` on, in every process, and the
``connection_created`` set-up of the apps before it (``django.contrib.postgres``
reads ``pg_type``) runs before the guard takes the new connection over.

``AccessGuardMiddleware`` binds the employee resolved from the request (by
default ``request.user.get_username()`` and the ``X-Ticket`` header; nobody for
an anonymous request) for the view and, for a ``StreamingHttpResponse``, for
each chunk of its body (sync or async) as it is produced. A thread acts for the
employee only if started with the view's context
(``threading.Thread(target=contextvars.copy_context().run, args=(work,))``).
``guarded(connection, user=..., ticket=...)`` binds in scripts (and guards an
alias not listed, for the block). ``unguarded(by=..., reason=...)`` lets a
block's statements through unchecked (migrations, management commands): each
use writes an audit event naming who and why, and one with the statement count
at its end; it is refused while an employee is bound and does not follow into
new threads.

Django's cursors bind parameters client-side by default (``ClientCursor``):
the guard then decides on the merged text, exactly what is sent. With
``OPTIONS = {"server_side_binding": True}`` it decides on psycopg's ``$n`` form.

Passed through unchecked: only the savepoint statements Django's
``transaction.atomic`` sends itself (``SAVEPOINT "s<thread>_x<n>"``,
``RELEASE SAVEPOINT ...``, ``ROLLBACK TO SAVEPOINT ...``), matched on their
whole text with no parameters: they carry no data and nothing else matches.

Refused: named (server-side) cursors, i.e. ``QuerySet.iterator()`` (their rows
cannot be counted; set ``DISABLE_SERVER_SIDE_CURSORS``), and, on cursors opened
while the guard is installed, psycopg's ``copy()`` / ``stream()`` and
``callproc()`` that Django's cursor wrapper forwards past execute wrappers
(Django re-raises the ``callproc`` refusal as ``django.db.ProgrammingError``;
the ``AccessDenied`` is its ``__cause__``). Every other refusal reaches the
caller as the ``AccessGuardError`` itself.

Rows are counted after ``execute`` from the client-side result (all of it is
in client memory then): exactly the rows PostgreSQL handed over, read or not.
A result over the row cap is refused and its cursor closed before a row is
read; that holds for writes that return rows (``UPDATE ... RETURNING``) too,
which run inside a savepoint (a transaction of their own in autocommit) so
that a refused write is also undone. executemany on a client-side binding cursor sends each
merged statement on its own (all checked first): ``rowcount`` is then the last
statement's.

Every statement on a guarded alias is decided, Django's own session, auth and
migration-table queries included: keep those tables on an alias not listed in
``DATABASES`` (run ``migrate`` inside ``unguarded``). Not guarded: other
aliases outside ``guarded()``; the raw psycopg connection
(``connection.connection``, used by Django itself for the time zone and role at
connect time); a connection another thread opened before this module was
loaded (hence ``AccessGuardConfig``). The middleware is synchronous (Django
adapts it under ASGI).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from django.apps import AppConfig
from django.conf import settings
from django.core.signals import setting_changed
from django.db import connections
from django.db.backends.signals import connection_created
from django.utils.module_loading import import_string

from accessguard.adapters.binding import bound_session
from accessguard.adapters.gate import one_statement, over_cap, refuse_mixed
from accessguard.adapters.psycopg3 import DIALECT, authorize_statement
from accessguard.engine import probes
from accessguard.engine.gate import Gate
from accessguard.errors import AccessDenied, ConfigurationError, Reason
from accessguard.tickets.stores import FileTicketStore

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

    from accessguard.engine.lane import Authorized, Session

Resolver = Callable[["HttpRequest"], "tuple[str, str | None] | None"]

DEFAULT_TICKET_HEADER = "X-Ticket"
INTEGRATION = "django"
_SAVEPOINT = re.compile(r'(?:SAVEPOINT|RELEASE SAVEPOINT|ROLLBACK TO SAVEPOINT) "s\d+_x\d+"')


@dataclass(slots=True)
class _Exemption:
    """An ``unguarded()`` block: who opened it, why, and how many statements it let through."""

    by: str
    reason: str
    statements: int = 0


#: the ``unguarded()`` block this context is in, if any (never inherited by a new thread)
_exempt: ContextVar[_Exemption | None] = ContextVar("accessguard_django_exempt", default=None)
#: the guard ``guarded(guard=...)`` chose for this context (else the settings' guard)
_block_guard: ContextVar[Gate | None] = ContextVar("accessguard_django_guard", default=None)


def _active_guard(explicit: Gate | None = None) -> Gate:
    chosen = _block_guard.get()
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
        return _active_guard(self._guard)

    def __call__(
        self,
        execute: Callable[..., Any],
        sql: str,
        params: Any,
        many: bool,
        context: dict[str, Any],
    ) -> Any:
        exemption = _exempt.get()
        if exemption is not None:  # unguarded(by=..., reason=...): audited when opened
            exemption.statements += 1
            return execute(sql, params, many, context)
        guard = _active_guard(self._guard)
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
        guard = _active_guard(self._guard)
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
            return result
        if not one_statement(batch):  # one statement, one shape: never guess
            raise refuse_mixed(guard, session, batch)
        return execute(batch[0].sql, [ok.params or [] for ok in batch], True, context)


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
        return
    count = max(int(raw.rowcount), 0)
    if over_cap(ok, count):
        raw.close()  # nothing more can be fetched from this cursor
        raise guard.over_row_cap(ok, count)
    if ok.tally is not None:
        ok.tally.add(count)


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
    _seal(db)
    return db


def _installed(db: BaseDatabaseWrapper) -> bool:
    return isinstance(db.execute_wrappers, _GuardedWrappers)


# ---------------------------------------------------------------------- binding


@contextmanager
def guarded(
    connection: BaseDatabaseWrapper | None = None,
    *,
    guard: Gate | None = None,
    user: str | None = None,
    ticket: str | None = None,
) -> Iterator[BaseDatabaseWrapper]:
    """Guard every statement on ``connection`` (default: the ``default`` alias) in the block.

    With ``user`` the employee is bound for the block too; without it the
    employee bound by ``guard.acting_as`` is used, per statement. ``guard``
    chooses the guard for this context (default: the settings' guard).
    """
    db = connection if connection is not None else connections["default"]
    with ExitStack() as stack:
        if guard is not None:
            token = _block_guard.set(guard)
            stack.callback(_block_guard.reset, token)
        active = _active_guard()
        if user is not None:
            stack.enter_context(active.acting_as(user=user, ticket=ticket))
        elif ticket is not None:
            raise ConfigurationError(
                "guarded(ticket=...) needs user= too", reason=Reason.SESSION_UNBOUND
            )
        if not _installed(db) and not any(
            isinstance(w, GuardExecuteWrapper) for w in db.execute_wrappers
        ):
            stack.enter_context(db.execute_wrapper(GuardExecuteWrapper(active)))
            _seal(db)  # an open connection now; a new one on connection_created
            stack.callback(_unseal, db)
        yield db


@contextmanager
def unguarded(*, by: str, reason: str, guard: Gate | None = None) -> Iterator[None]:
    """Let this context's statements through unchecked: migrations, management commands.

    Explicit and audited: opening the block writes an audit event naming
    ``by`` (who) and ``reason`` (why); closing it writes one with the number
    of statements let through. It covers this thread or task only (a thread it
    starts is guarded again) and is refused while an employee is bound (inside
    a request).
    """
    if not (isinstance(by, str) and by.strip() and isinstance(reason, str) and reason.strip()):
        raise ConfigurationError("unguarded() needs by= (who) and reason= (why)")
    chosen = guard if guard is not None else _active_guard()
    try:
        chosen.current_session()
    except ConfigurationError:
        pass  # nobody bound: the only place an opt-out may open
    else:
        raise ConfigurationError(
            "unguarded() is for work that acts for no employee: an employee is bound here"
        )
    exemption = _Exemption(by=by, reason=reason)
    _audit_exemption(chosen, exemption, "start")  # an audit failure: no exemption
    token = _exempt.set(exemption)
    try:
        yield
    finally:
        _exempt.reset(token)
        _audit_exemption(chosen, exemption, "end")


def _audit_exemption(guard: Gate, exemption: _Exemption, phase: str) -> None:
    guard.auditor.emit(
        **{
            "event.kind": "event",
            "event.category": ["database", "configuration"],
            "event.type": [phase],
            "event.action": "guard.unguarded",
            "event.outcome": "success",
            "message": f"statements on guarded Django aliases unchecked ({phase}): "
            f"{exemption.reason}",
            "user.name": exemption.by,
            "accessguard.integration": INTEGRATION,
            "accessguard.unguarded.by": exemption.by,
            "accessguard.unguarded.reason": exemption.reason,
            "accessguard.statements": exemption.statements if phase == "end" else None,
            "accessguard.policy.version": guard.policy.version,
        }
    )


class AccessGuardMiddleware:
    """Binds the request's employee for the view and for a streaming response's body."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        guard = get_guard()
        for alias in _guarded_aliases():
            install(connections[alias])  # this thread's (others: on connection_created)
        identity = _resolver()(request)  # guarded too: auth tables belong on another alias
        if identity is None:
            return self.get_response(request)  # nobody bound: every statement refused
        user, ticket = identity
        with guard.acting_as(user=user, ticket=ticket):
            response = self.get_response(request)
        if response.streaming and getattr(response, "file_to_stream", None) is None:
            _bind_body(response, guard, user, ticket)  # type: ignore[arg-type]
        return response


def _bind_body(
    response: StreamingHttpResponse, guard: Gate, user: str, ticket: str | None
) -> None:
    """Produce each chunk of a streaming body inside the request's binding."""
    parts: Any = response.streaming_content
    if response.is_async:
        response.streaming_content = _bound_async(parts, guard, user, ticket)
    else:
        response.streaming_content = _bound_sync(parts, guard, user, ticket)


def _bound_sync(
    parts: Iterable[bytes], guard: Gate, user: str, ticket: str | None
) -> Iterator[bytes]:
    iterator = iter(parts)
    while True:
        with guard.acting_as(user=user, ticket=ticket):
            try:
                part = next(iterator)
            except StopIteration:
                return
        yield part


async def _bound_async(
    parts: AsyncIterator[bytes], guard: Gate, user: str, ticket: str | None
) -> AsyncIterator[bytes]:
    iterator = aiter(parts)
    while True:
        with guard.acting_as(user=user, ticket=ticket):
            try:
                part = await anext(iterator)
            except StopAsyncIteration:
                return
        yield part


def default_resolver(request: HttpRequest) -> tuple[str, str | None] | None:
    """The authenticated user's username and the ticket header; None when anonymous."""
    user = getattr(request, "user", None)
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    header = str(_config().get("TICKET_HEADER", DEFAULT_TICKET_HEADER))
    return str(user.get_username()), request.headers.get(header) or None


# ---------------------------------------------------------------------- settings


_guards: dict[tuple[str, str, str], Gate] = {}
#: the settings dict last resolved, and its guard (cleared when the setting changes)
_resolved: list[tuple[dict[str, Any], Gate]] = []


def get_guard() -> Gate:
    """The guard named or described by ``settings.ACCESSGUARD`` (resolved once per setting)."""
    config = _config()
    if _resolved and _resolved[0][0] is config:
        return _resolved[0][1]
    guard = _build_guard(config)
    _resolved[:] = [(config, guard)]
    return guard


def _build_guard(config: dict[str, Any]) -> Gate:
    named = config.get("GUARD")
    if named is not None:
        found = import_string(named) if isinstance(named, str) else named
        if not isinstance(found, Gate) and callable(found):
            found = found()
        if not isinstance(found, Gate):
            raise ConfigurationError(
                "ACCESSGUARD['GUARD'] is not a Guard", reason=Reason.SETTINGS_INVALID
            )
        return found
    policies = config.get("POLICIES")
    if policies is None:
        raise ConfigurationError(
            "settings.ACCESSGUARD needs GUARD or POLICIES", reason=Reason.SETTINGS_INVALID
        )
    tickets, audit = config.get("TICKETS"), config.get("AUDIT")
    key = (str(policies), repr(tickets), repr(audit))
    guard = _guards.get(key)
    if guard is None:
        if isinstance(tickets, str | Path):
            tickets = FileTicketStore(tickets)
        guard = _guards[key] = Gate.from_directory(policies, tickets=tickets, audit=audit)
    return guard


def _config() -> dict[str, Any]:
    config = getattr(settings, "ACCESSGUARD", None)
    if not isinstance(config, dict):
        raise ConfigurationError("settings.ACCESSGUARD is missing", reason=Reason.SETTINGS_INVALID)
    return config


def _guarded_aliases() -> frozenset[str]:
    """The aliases guarded in every thread: ``ACCESSGUARD["DATABASES"]`` (default: default).

    Without ``settings.ACCESSGUARD`` none (only ``guarded()`` blocks guard);
    a malformed setting guards ``default``, whose statements then fail closed.
    """
    if not settings.configured:
        return frozenset()
    config = getattr(settings, "ACCESSGUARD", None)
    if config is None:
        return frozenset()
    aliases = config.get("DATABASES", ["default"]) if isinstance(config, dict) else ["default"]
    return frozenset(str(a) for a in aliases)


def _resolver() -> Resolver:
    found = _config().get("RESOLVER")
    if found is None:
        return default_resolver
    resolver: Resolver = import_string(found) if isinstance(found, str) else found
    return resolver


def _settings_changed(*, setting: str, **_kwargs: Any) -> None:
    if setting == "ACCESSGUARD":
        _guards.clear()
        _resolved.clear()
        _install_open()


setting_changed.connect(_settings_changed, dispatch_uid="accessguard.settings_changed")


# ---------------------------------------------------------------------- paths past execute


class _SealedCursor:
    """Mixed into Django's psycopg cursor class: paths that skip execute wrappers refuse."""

    _accessguard_base: type

    def _refused(self, reason: Reason, message: str, kind: str) -> AccessDenied:
        guard = _active_guard()
        session = bound_session(guard, integration=INTEGRATION)
        return guard.refuse(reason, message, session, kind=kind)

    def copy(self, *args: Any, **kwargs: Any) -> Any:
        if _exempt.get() is not None:
            return super().copy(*args, **kwargs)  # type: ignore[misc]
        raise self._refused(
            Reason.STATEMENT_FORBIDDEN,
            "COPY statements are never allowed through the guard.",
            "copy",
        )

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        if _exempt.get() is not None:
            return super().stream(*args, **kwargs)  # type: ignore[misc]
        raise self._refused(
            Reason.PATH_FORBIDDEN, "cursor.stream() is not available under the guard.", "unknown"
        )

    def callproc(self, *args: Any, **kwargs: Any) -> Any:
        if _exempt.get() is not None:
            return super().callproc(*args, **kwargs)  # type: ignore[misc]
        raise self._refused(
            Reason.PATH_FORBIDDEN, "cursor.callproc() is not available under the guard.", "unknown"
        )


_sealed_classes: dict[type, type] = {}


def _seal(db: BaseDatabaseWrapper) -> None:
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


def _unseal(db: BaseDatabaseWrapper) -> None:
    raw = db.connection
    if raw is not None and isinstance(raw, psycopg.Connection) and not _installed(db):
        factory = raw.cursor_factory
        if issubclass(factory, _SealedCursor):
            raw.cursor_factory = factory._accessguard_base


def _on_connection_created(*, connection: BaseDatabaseWrapper, **_kwargs: Any) -> None:
    """Every connection Django opens on a guarded alias, in any thread, is guarded at once.

    A connection opened inside a ``guarded()`` block on another alias is sealed too.
    """
    if _installed(connection) or connection.alias in _guarded_aliases():
        install(connection)
    elif any(isinstance(w, GuardExecuteWrapper) for w in connection.execute_wrappers):
        _seal(connection)


def _install_open() -> None:
    """Guard the guarded aliases' connections this thread already made."""
    aliases = _guarded_aliases()
    if not aliases:
        return
    for db in connections.all(initialized_only=True):
        if db.alias in aliases:
            install(db)


_CREATED_UID = "accessguard.connection_created"
connection_created.connect(_on_connection_created, dispatch_uid=_CREATED_UID)


class AccessGuardConfig(AppConfig):
    """``INSTALLED_APPS += ["accessguard.adapters.django.AccessGuardConfig"]`` (last).

    Loads the guard with Django itself, so the guarded aliases are guarded in
    every process (web workers, management commands, shells), not only once a
    request has loaded the middleware.
    """

    name = "accessguard.adapters.django"
    label = "accessguard"
    verbose_name = "accessguard"

    def ready(self) -> None:
        # the guard takes over a new connection after the connection_created
        # receivers of the apps listed before it (django.contrib.postgres reads
        # pg_type there): list this app last
        connection_created.disconnect(dispatch_uid=_CREATED_UID)
        connection_created.connect(_on_connection_created, dispatch_uid=_CREATED_UID)
        _install_open()


_install_open()
