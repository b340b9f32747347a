"""Errors raised by accessguard, and the stable reason codes they carry.

Exception tree::

    AccessGuardError            .reason (stable dotted code), a message in plain words
    ├── AccessDenied            no rule allows it; nothing reached the database
    ├── Throttled               a volume limit; .limit, .retry_after
    ├── PolicyError             bad model/policy/schema/limits file, at load time
    ├── ConfigurationError      bad wiring: no employee bound, unknown ticket source, ...
    └── AuditError              the audit sink failed: the statement is refused

`AccessDenied` and `Throttled` also subclass psycopg's `InsufficientPrivilege`
(SQLSTATE 42501), so SQLAlchemy and Django treat a refusal like a permission
error and keep the connection usable. They are made on first use (PEP 562), so
this module imports nothing at load: the analysis and the policy files, which
need only `Reason` and `PolicyError`, never load the driver.

Reason codes are a `StrEnum`. Like SQLSTATEs they are never renamed once
released: scripts and SIEM rules match on them.
"""

from __future__ import annotations

import enum
import functools
from typing import TYPE_CHECKING


class Reason(enum.StrEnum):
    """Stable machine codes for every decision that is not a plain allow."""

    # SQL the analyser cannot fully account for
    SQL_UNANALYZABLE = "sql.unanalyzable"
    SQL_PARAMS_MISMATCH = "sql.params_mismatch"
    SQL_PARSER_DISAGREEMENT = "sql.parser_disagreement"
    # statement kinds, functions, catalogs
    STATEMENT_FORBIDDEN = "statement.forbidden"
    FUNCTION_FORBIDDEN = "function.forbidden"
    CATALOG_FORBIDDEN = "catalog.forbidden"
    TYPE_FORBIDDEN = "type.forbidden"
    AGGREGATE_PACKS_ROWS = "aggregate.packs_rows"
    # objects and grants
    TABLE_UNKNOWN = "table.unknown"
    TABLE_FORBIDDEN = "table.forbidden"
    COLUMN_UNKNOWN = "column.unknown"
    COLUMN_NOT_ALLOWED = "column.not_allowed"
    COLUMN_MASKED = "column.masked"
    # tickets
    TICKET_REQUIRED = "ticket.required"
    TICKET_UNKNOWN = "ticket.unknown"
    TICKET_NOT_OPEN = "ticket.not_open"
    TICKET_NOT_ASSIGNED = "ticket.not_assigned"
    TICKET_WRONG_KIND = "ticket.wrong_kind"
    TICKET_STORE_UNAVAILABLE = "ticket.store_unavailable"
    # break-glass
    ELEVATION_REFUSED = "elevation.refused"
    # rows
    ROW_SCOPE_UNBOUND = "row_scope.unbound"
    ROW_SCOPE_OTHER_SUBJECT = "row_scope.other_subject"
    SUBJECT_WATCHED = "subject.watched"
    # volume limits
    THROTTLE_DISTINCT_CUSTOMERS = "throttle.distinct_customers"
    THROTTLE_ROWS = "throttle.rows"
    THROTTLE_STATEMENTS = "throttle.statements"
    THROTTLE_STORE_UNAVAILABLE = "throttle.store_unavailable"
    # the guard itself
    AUDIT_SINK_UNAVAILABLE = "audit.sink_unavailable"
    INTERNAL_ERROR = "internal.error"
    PATH_FORBIDDEN = "path.forbidden"
    SESSION_UNBOUND = "session.unbound"
    GUARD_CLOSED = "guard.closed"
    SESSION_RETURNED = "session.returned"
    # wiring and files (raised at load or set-up, never by a decision)
    POLICY_INVALID = "policy.invalid"
    CONFIGURATION_INVALID = "configuration.invalid"
    SETTINGS_INVALID = "settings.invalid"
    INTEGRATION_UNSUPPORTED = "integration.unsupported"
    AUDIT_KEY_INVALID = "audit.key_invalid"
    # reported, never a refusal: an audit event and a warning at the first connection
    SCHEMA_DRIFT = "schema.drift"
    # the command line's own errors (exit 2, or 1 for a database error)
    USAGE_INVALID = "usage.invalid"
    FILE_UNREADABLE = "file.unreadable"
    DATABASE_ERROR = "database.error"


class AccessGuardError(Exception):
    """Base of every error accessguard raises. Never carries row data or literals."""

    reason: Reason | str

    def __init__(self, message: str, *, reason: Reason | str = Reason.INTERNAL_ERROR) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.message, str(self.reason), self.__dict__))

    def __str__(self) -> str:
        return f"{self.message} [{self.reason}]"


def _rebuild(
    cls: type[AccessGuardError], message: str, reason: str, state: dict[str, object]
) -> AccessGuardError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    err.message = message
    err.reason = reason
    return err


class _Denied(AccessGuardError):
    """No rule allows the statement; it never reached the database."""


class _Throttled(AccessGuardError):
    """A volume limit refused the statement (or cut off its result)."""

    def __init__(
        self,
        message: str,
        *,
        reason: Reason | str,
        limit: str,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.limit = limit
        self.retry_after = retry_after


if TYPE_CHECKING:
    from psycopg.errors import InsufficientPrivilege

    class AccessDenied(_Denied, InsufficientPrivilege):
        """No rule allows the statement; it never reached the database."""

    class Throttled(_Throttled, InsufficientPrivilege):
        """A volume limit refused the statement (or cut off its result)."""


@functools.cache
def _refusals() -> dict[str, type[AccessGuardError]]:
    """AccessDenied and Throttled, made on first use: they subclass psycopg's
    InsufficientPrivilege, and only then is the driver imported (the analysis,
    the policy files and the decision never load it)."""
    from psycopg.errors import InsufficientPrivilege

    made: dict[str, type[AccessGuardError]] = {}
    for name, base in (("AccessDenied", _Denied), ("Throttled", _Throttled)):
        made[name] = type(
            name,
            (base, InsufficientPrivilege),
            {"__module__": __name__, "__qualname__": name, "__doc__": base.__doc__},
        )
    return made


def __getattr__(name: str) -> type[AccessGuardError]:
    if name in {"AccessDenied", "Throttled"}:
        return _refusals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class PolicyError(AccessGuardError):
    """A model, policy, schema or limits file is malformed; names the file and line."""

    def __init__(self, message: str, *, path: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}", reason=Reason.POLICY_INVALID)
        self.path = path
        self.line = line


class ConfigurationError(AccessGuardError):
    """The guard is wired wrongly (no employee bound, no ticket source, ...)."""

    def __init__(
        self, message: str, *, reason: Reason | str = Reason.CONFIGURATION_INVALID
    ) -> None:
        super().__init__(message, reason=reason)


class AuditError(AccessGuardError):
    """The audit sink failed; the statement it was recording is refused."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason=Reason.AUDIT_SINK_UNAVAILABLE)
