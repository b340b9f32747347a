"""Refusing a statement that reaches an instrumented session with no employee bound.

Instrumented sessions (Django aliases, SQLAlchemy engines) take the employee
from ``guard.acting_as``. A statement with nobody bound (a thread the
application started, a response body produced after the request, a script
that forgot to bind) is refused with ``ConfigurationError`` (reason
``session.unbound``) and, like every refusal, written to the audit stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from accessguard.errors import ConfigurationError, Reason

if TYPE_CHECKING:
    from accessguard.engine.gate import Gate
    from accessguard.engine.lane import Session

UNBOUND_MESSAGE = (
    "Refused: no employee is bound here (a thread or response body started outside the "
    "request, or a script): wrap the work in guard.acting_as(user=..., ticket=...)."
)


def bound_session(guard: Gate, *, integration: str) -> Session:
    """The employee bound by ``guard.acting_as``; nobody bound: audited, ConfigurationError."""
    try:
        return guard.current_session()
    except ConfigurationError:
        raise refuse_unbound(guard, integration=integration) from None


def refuse_unbound(guard: Gate, *, integration: str) -> ConfigurationError:
    """Audit a statement refused because nobody is bound; return the error to raise."""
    guard.auditor.emit(
        **{
            "event.kind": "event",
            "event.category": ["database", "iam"],
            "event.type": ["denied"],
            "event.action": "query",
            "event.outcome": "failure",
            "event.reason": str(Reason.SESSION_UNBOUND),
            "message": UNBOUND_MESSAGE,
            "accessguard.outcome": "denied",
            "accessguard.integration": integration,
            "user.name": None,
            "user.roles": [],
            "accessguard.ticket.id": None,
            "db.system.name": "postgresql",
            "accessguard.policy.version": guard.policy.version,
        }
    )
    return ConfigurationError(UNBOUND_MESSAGE, reason=Reason.SESSION_UNBOUND)
