"""accessguard: ticket-bound, least-privilege access to customer data, with an audit trail.

Wrap a database connection; every statement is parsed, checked against the
Casbin policy in ``policies/`` and the employee's open ticket, scoped to that
ticket's customer, and every refusal is written to a hash-chained audit log.

The names below are imported on first use (PEP 562), so ``accessguard --help``
and ``import accessguard.errors`` do not load sqlglot, psycopg and casbin.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from accessguard import moved

if TYPE_CHECKING:
    __version__: str
    from accessguard.analysis import Facts
    from accessguard.audit.sinks import AuditSink, JsonlSink, verify
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
    from accessguard.policy.rules import Policy, load_policy
    from accessguard.tickets.http import HttpTicketStore
    from accessguard.tickets.stores import (
        FileTicketStore,
        MemoryTicketStore,
        PostgresTicketStore,
        Ticket,
    )

#: public name -> the module that defines it
moved.install()  # 0.1's module paths still import, with a DeprecationWarning

_HOMES = {
    "AccessDenied": "accessguard.errors",
    "AccessGuardError": "accessguard.errors",
    "AuditError": "accessguard.errors",
    "AuditSink": "accessguard.audit.sinks",
    "ConfigurationError": "accessguard.errors",
    "Decision": "accessguard.decision",
    "Facts": "accessguard.analysis",
    "FileTicketStore": "accessguard.tickets.stores",
    "Guard": "accessguard.guard",
    "HttpTicketStore": "accessguard.tickets.http",
    "JsonlSink": "accessguard.audit.sinks",
    "MemoryTicketStore": "accessguard.tickets.stores",
    "Policy": "accessguard.policy.rules",
    "PolicyError": "accessguard.errors",
    "PostgresTicketStore": "accessguard.tickets.stores",
    "Reason": "accessguard.errors",
    "Throttled": "accessguard.errors",
    "Ticket": "accessguard.tickets.stores",
    "load_policy": "accessguard.policy.rules",
    "verify": "accessguard.audit.sinks",
}


def _version() -> str:
    """The installed distribution's version (read on first use: importlib.metadata costs
    about 60 ms, a sixth of an investigation command)."""
    from importlib import metadata

    try:
        return metadata.version("accessguard")
    except metadata.PackageNotFoundError:  # a checkout on sys.path, not installed
        return "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        globals()[name] = version = _version()
        return version
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'accessguard' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


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
    "HttpTicketStore",
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
