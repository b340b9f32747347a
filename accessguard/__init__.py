"""accessguard: ticket-bound, least-privilege access to customer data, with an audit trail.

Wrap a database connection; every statement is parsed, checked against the
Casbin policy in ``policies/`` and the employee's open ticket, scoped to that
ticket's customer, and every refusal is written to a hash-chained audit log.
"""

from __future__ import annotations

from accessguard.analysis import Facts
from accessguard.audit import AuditSink, JsonlSink, verify
from accessguard.decision import Decision
from accessguard.errors import (
    AccessDenied,
    AccessGuardError,
    AuditError,
    ConfigurationError,
    PolicyError,
    Reason,
    Throttled,
)
from accessguard.guard import Guard
from accessguard.policy import Policy, load_policy
from accessguard.tickets import FileTicketStore, MemoryTicketStore, PostgresTicketStore, Ticket

__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
    "AccessGuardError",
    "AuditError",
    "AuditSink",
    "ConfigurationError",
    "Decision",
    "Facts",
    "FileTicketStore",
    "Guard",
    "JsonlSink",
    "MemoryTicketStore",
    "Policy",
    "PolicyError",
    "PostgresTicketStore",
    "Reason",
    "Throttled",
    "Ticket",
    "__version__",
    "load_policy",
    "verify",
]
