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

This module binds (``guarded``, ``unguarded``, the middleware), follows new
connections and is the app; the execute wrapper and the sealed cursors are in
``accessguard.adapters.django_wrapper``, the reading of ``settings.ACCESSGUARD``
in ``accessguard.adapters.django_settings``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

from django.apps import AppConfig
from django.core.signals import setting_changed
from django.db import connections
from django.db.backends.signals import connection_created

from accessguard.adapters.django_settings import (
    DEFAULT_TICKET_HEADER,
    Resolver,
    default_resolver,
    forget_guards,
    get_guard,
    guarded_aliases,
    resolver,
)
from accessguard.adapters.django_wrapper import (
    BLOCK_GUARD,
    EXEMPTION,
    INTEGRATION,
    Exemption,
    GuardExecuteWrapper,
    active_guard,
    install,
    installed,
    seal,
    unseal,
)
from accessguard.errors import ConfigurationError, Reason

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

    from accessguard.engine.gate import Gate

__all__ = [
    "DEFAULT_TICKET_HEADER",
    "INTEGRATION",
    "AccessGuardConfig",
    "AccessGuardMiddleware",
    "GuardExecuteWrapper",
    "Resolver",
    "default_resolver",
    "get_guard",
    "guarded",
    "install",
    "unguarded",
]


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
            token = BLOCK_GUARD.set(guard)
            stack.callback(BLOCK_GUARD.reset, token)
        active = active_guard()
        if user is not None:
            stack.enter_context(active.acting_as(user=user, ticket=ticket))
        elif ticket is not None:
            raise ConfigurationError(
                "guarded(ticket=...) needs user= too", reason=Reason.SESSION_UNBOUND
            )
        if not installed(db) and not any(
            isinstance(w, GuardExecuteWrapper) for w in db.execute_wrappers
        ):
            stack.enter_context(db.execute_wrapper(GuardExecuteWrapper(active)))
            seal(db)  # an open connection now; a new one on connection_created
            stack.callback(unseal, db)
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
    chosen = guard if guard is not None else active_guard()
    try:
        chosen.current_session()
    except ConfigurationError:
        pass  # nobody bound: the only place an opt-out may open
    else:
        raise ConfigurationError(
            "unguarded() is for work that acts for no employee: an employee is bound here"
        )
    exemption = Exemption(by=by, reason=reason)
    _audit_exemption(chosen, exemption, "start")  # an audit failure: no exemption
    token = EXEMPTION.set(exemption)
    try:
        yield
    finally:
        EXEMPTION.reset(token)
        _audit_exemption(chosen, exemption, "end")


def _audit_exemption(guard: Gate, exemption: Exemption, phase: str) -> None:
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
        for alias in guarded_aliases():
            install(connections[alias])  # this thread's (others: on connection_created)
        identity = resolver()(request)  # guarded too: auth tables belong on another alias
        if identity is None:
            return self.get_response(request)  # nobody bound: every statement refused
        user, ticket = identity
        with guard.acting_as(user=user, ticket=ticket):
            response = self.get_response(request)
        if response.streaming and getattr(response, "file_to_stream", None) is None:
            _bind_body(response, guard, user, ticket)  # type: ignore[arg-type]
        return response


def _bind_body(response: StreamingHttpResponse, guard: Gate, user: str, ticket: str | None) -> None:
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


# ---------------------------------------------------------------------- settings


def _settings_changed(*, setting: str, **_kwargs: Any) -> None:
    if setting == "ACCESSGUARD":
        forget_guards()
        _install_open()


setting_changed.connect(_settings_changed, dispatch_uid="accessguard.settings_changed")


# ---------------------------------------------------------------------- new connections


def _on_connection_created(*, connection: BaseDatabaseWrapper, **_kwargs: Any) -> None:
    """Every connection Django opens on a guarded alias, in any thread, is guarded at once.

    A connection opened inside a ``guarded()`` block on another alias is sealed too.
    """
    if installed(connection) or connection.alias in guarded_aliases():
        install(connection)
    elif any(isinstance(w, GuardExecuteWrapper) for w in connection.execute_wrappers):
        seal(connection)


def _install_open() -> None:
    """Guard the guarded aliases' connections this thread already made."""
    aliases = guarded_aliases()
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
