"""Guard Django's database connections (PostgreSQL backend on psycopg 3).

Settings (all optional but one of ``GUARD`` / ``POLICIES``)::

    ACCESSGUARD = {
        "GUARD": guard,                 # a Guard, or a dotted path to one (or to a factory)
        "POLICIES": "policies/",        # ... or build one: policy directory,
        "TICKETS": "tickets.yaml",      #     ticket file (or a store / iterable of Ticket),
        "AUDIT": "audit.jsonl",         #     audit file (or sink)
        "TICKET_HEADER": "X-Ticket",    # the default resolver reads the ticket from it
        "RESOLVER": "app.mod.resolve",  # (request) -> (user, ticket) | None, or a callable
        "DATABASES": ["default"],       # the aliases guarded during a request
    }
    MIDDLEWARE = [..., "django.contrib.auth.middleware.AuthenticationMiddleware",
                  "accessguard.adapters.django.AccessGuardMiddleware", ...]

``AccessGuardMiddleware`` binds the employee resolved from the request (by
default ``request.user.get_username()`` and the ``X-Ticket`` header; nobody for
an anonymous request) and, for the rest of the request, installs an execute
wrapper on each guarded alias: every ``cursor.execute`` / ``executemany``
there (ORM, raw SQL) is decided by the guard first; with nobody bound it is
refused with ``ConfigurationError``. ``guarded(connection, user=..., ticket=...)``
does the same for scripts and management commands.

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
read. executemany on a client-side binding cursor sends each merged statement
on its own (all checked first): ``rowcount`` is then the last statement's.

Inside a request, every statement on a guarded alias is decided, Django's own
session and auth queries included: keep those tables on an alias not listed
in ``DATABASES``. Not guarded: other aliases; statements before the middleware
runs or after it returns; the raw psycopg connection (``connection.connection``,
used by Django itself for the time zone and role at connect time). The
middleware is synchronous (Django adapts it under ASGI).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

import psycopg
from django.conf import settings
from django.core.signals import setting_changed
from django.db import connections
from django.db.backends.signals import connection_created
from django.utils.module_loading import import_string

from accessguard.adapters.psycopg3 import DIALECT, authorize_statement
from accessguard.errors import AccessDenied, ConfigurationError, Reason
from accessguard.guard import Guard
from accessguard.tickets import FileTicketStore

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.http import HttpRequest, HttpResponse

    from accessguard.guard import Authorized, Session

Resolver = Callable[["HttpRequest"], "tuple[str, str | None] | None"]

DEFAULT_TICKET_HEADER = "X-Ticket"
_SAVEPOINT = re.compile(r'(?:SAVEPOINT|RELEASE SAVEPOINT|ROLLBACK TO SAVEPOINT) "s\d+_x\d+"')


# ---------------------------------------------------------------------- the wrapper


class GuardExecuteWrapper:
    """A Django execute wrapper: the guard decides on every statement before it is sent."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def __call__(
        self,
        execute: Callable[..., Any],
        sql: str,
        params: Any,
        many: bool,
        context: dict[str, Any],
    ) -> Any:
        session = self.guard.current_session()  # nobody bound: ConfigurationError, nothing sent
        if not many and params is None and _SAVEPOINT.fullmatch(sql):
            return execute(sql, params, many, context)
        raw = context["cursor"].cursor
        if isinstance(raw, psycopg.ServerCursor):
            raise self._refuse(
                "Server-side cursors (QuerySet.iterator()) are not available under the guard: "
                "their rows could not be counted.",
                session,
            )
        if not isinstance(raw, psycopg.Cursor):
            raise self._refuse("Only Django's psycopg 3 cursors can be guarded.", session)
        client = isinstance(raw, psycopg.ClientCursor)
        if many:
            return self._many(
                execute, raw, sql, params, context=context, session=session, client=client
            )
        ok = self._authorize(raw, sql, params, session, client=client)
        result = execute(ok.sql, None if client or params is None else ok.params, False, context)
        self._count(raw, ok)
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
        batch = [self._authorize(raw, sql, p, session, client=client) for p in params_seq]
        if not batch:
            return execute(sql, params_seq, True, context)
        if client:
            # merged statements differ by their values: each is sent on its
            # own, all of them checked before the first is.
            result = None
            for ok in batch:
                result = execute(ok.sql, [None], True, context)
            return result
        if len({ok.sql for ok in batch}) != 1:  # one statement, one shape: never guess
            raise AccessDenied(
                "Refused: executemany produced different statements.", reason=Reason.INTERNAL_ERROR
            )
        return execute(batch[0].sql, [ok.params or [] for ok in batch], True, context)

    def _authorize(
        self, raw: Any, sql: str, params: Any, session: Session, *, client: bool
    ) -> Authorized:
        return authorize_statement(
            self.guard.lane(session, DIALECT), sql, params, mogrify=raw.mogrify if client else None
        )

    def _count(self, raw: Any, ok: Authorized) -> None:
        """Count the result's rows (all in client memory now); over the cap, withhold them."""
        if raw.description is None:
            return
        count = max(int(raw.rowcount), 0)
        if ok.row_cap is not None and count > ok.row_cap and ok.facts.kind == "select":
            raw.close()  # nothing more can be fetched from this cursor
            raise self.guard.over_row_cap(ok, count)
        if ok.tally is not None:
            ok.tally.add(count)

    def _refuse(self, message: str, session: Session) -> AccessDenied:
        return self.guard.refuse(Reason.PATH_FORBIDDEN, message, session, kind="unknown")


# ---------------------------------------------------------------------- installing


@contextmanager
def guarded(
    connection: BaseDatabaseWrapper | None = None,
    *,
    guard: Guard | None = None,
    user: str | None = None,
    ticket: str | None = None,
) -> Iterator[BaseDatabaseWrapper]:
    """Guard every statement on ``connection`` (default: the ``default`` alias) in the block.

    With ``user`` the employee is bound for the block too; without it the
    employee bound by ``guard.acting_as`` is used, per statement.
    """
    guard = guard if guard is not None else get_guard()
    db = connection if connection is not None else connections["default"]
    with ExitStack() as stack:
        if user is not None:
            stack.enter_context(guard.acting_as(user=user, ticket=ticket))
        elif ticket is not None:
            raise ConfigurationError(
                "guarded(ticket=...) needs user= too", reason="session.unbound"
            )
        if not any(isinstance(w, GuardExecuteWrapper) for w in db.execute_wrappers):
            stack.enter_context(db.execute_wrapper(GuardExecuteWrapper(guard)))
            _seal(db, guard)  # an open connection now; a new one on connection_created
            stack.callback(_unseal, db)
        yield db


class AccessGuardMiddleware:
    """Binds the request's employee and guards the configured aliases for the request."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        guard = get_guard()
        identity = _resolver()(request)  # before any guarded statement (it may load the user)
        with ExitStack() as stack:
            if identity is not None:
                user, ticket = identity
                stack.enter_context(guard.acting_as(user=user, ticket=ticket))
            for alias in _config().get("DATABASES", ["default"]):
                stack.enter_context(guarded(connections[alias], guard=guard))
            return self.get_response(request)


def default_resolver(request: HttpRequest) -> tuple[str, str | None] | None:
    """The authenticated user's username and the ticket header; None when anonymous."""
    user = getattr(request, "user", None)
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    header = str(_config().get("TICKET_HEADER", DEFAULT_TICKET_HEADER))
    return str(user.get_username()), request.headers.get(header) or None


# ---------------------------------------------------------------------- settings


_guards: dict[tuple[str, str, str], Guard] = {}


def get_guard() -> Guard:
    """The guard named or described by ``settings.ACCESSGUARD`` (built once)."""
    config = _config()
    named = config.get("GUARD")
    if named is not None:
        found = import_string(named) if isinstance(named, str) else named
        if not isinstance(found, Guard) and callable(found):
            found = found()
        if not isinstance(found, Guard):
            raise ConfigurationError(
                "ACCESSGUARD['GUARD'] is not a Guard", reason="settings.invalid"
            )
        return found
    policies = config.get("POLICIES")
    if policies is None:
        raise ConfigurationError(
            "settings.ACCESSGUARD needs GUARD or POLICIES", reason="settings.invalid"
        )
    tickets, audit = config.get("TICKETS"), config.get("AUDIT")
    key = (str(policies), repr(tickets), repr(audit))
    guard = _guards.get(key)
    if guard is None:
        if isinstance(tickets, str | Path):
            tickets = FileTicketStore(tickets)
        guard = _guards[key] = Guard.from_directory(policies, tickets=tickets, audit=audit)
    return guard


def _config() -> dict[str, Any]:
    config = getattr(settings, "ACCESSGUARD", None)
    if not isinstance(config, dict):
        raise ConfigurationError("settings.ACCESSGUARD is missing", reason="settings.invalid")
    return config


def _resolver() -> Resolver:
    found = _config().get("RESOLVER")
    if found is None:
        return default_resolver
    resolver: Resolver = import_string(found) if isinstance(found, str) else found
    return resolver


def _settings_changed(*, setting: str, **_kwargs: Any) -> None:
    if setting == "ACCESSGUARD":
        _guards.clear()


setting_changed.connect(_settings_changed, dispatch_uid="accessguard.settings_changed")


# ---------------------------------------------------------------------- paths past execute


class _SealedCursor:
    """Mixed into Django's psycopg cursor class: paths that skip execute wrappers refuse."""

    _accessguard: Guard
    _accessguard_base: type

    def _refused(self, reason: Reason, message: str, kind: str) -> AccessDenied:
        guard = self._accessguard
        return guard.refuse(reason, message, guard.current_session(), kind=kind)

    def copy(self, *_args: Any, **_kwargs: Any) -> Any:
        raise self._refused(
            Reason.STATEMENT_FORBIDDEN,
            "COPY statements are never allowed through the guard.",
            "copy",
        )

    def stream(self, *_args: Any, **_kwargs: Any) -> Any:
        raise self._refused(
            Reason.PATH_FORBIDDEN, "cursor.stream() is not available under the guard.", "unknown"
        )

    def callproc(self, *_args: Any, **_kwargs: Any) -> Any:
        raise self._refused(
            Reason.PATH_FORBIDDEN, "cursor.callproc() is not available under the guard.", "unknown"
        )


_sealed_classes: WeakKeyDictionary[Guard, dict[type, type]] = WeakKeyDictionary()


def _seal(db: BaseDatabaseWrapper, guard: Guard) -> None:
    """Make the cursors ``db``'s open psycopg connection creates refuse copy/stream/callproc."""
    raw = db.connection
    if raw is None or not isinstance(raw, psycopg.Connection):
        return
    base = raw.cursor_factory
    if issubclass(base, _SealedCursor):
        return
    classes = _sealed_classes.setdefault(guard, {})
    sealed = classes.get(base)
    if sealed is None:
        sealed = classes[base] = type(
            f"Guarded{base.__name__}",
            (_SealedCursor, base),
            {"_accessguard": guard, "_accessguard_base": base},
        )
    raw.cursor_factory = sealed


def _unseal(db: BaseDatabaseWrapper) -> None:
    raw = db.connection
    if raw is not None and isinstance(raw, psycopg.Connection):
        factory = raw.cursor_factory
        if issubclass(factory, _SealedCursor):
            raw.cursor_factory = factory._accessguard_base


def _on_connection_created(*, connection: BaseDatabaseWrapper, **_kwargs: Any) -> None:
    """A connection opened while guarded (Django connects lazily) is sealed at once."""
    for wrapper in connection.execute_wrappers:
        if isinstance(wrapper, GuardExecuteWrapper):
            _seal(connection, wrapper.guard)
            return


connection_created.connect(_on_connection_created, dispatch_uid="accessguard.connection_created")
