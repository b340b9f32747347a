"""The audit event of a decision: the one place its fields are written.

Field names follow OpenTelemetry's database conventions and ECS where they
exist (``event.*``, ``user.*``, ``db.*``) and ``accessguard.*`` otherwise;
docs/audit.md lists them. Events carry names, codes, ticket ids and subject
ids (pseudonymised with the ledger's key when it has one), never literal
values or row data: ``db.query.text`` is the redacted statement.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from accessguard.analysis import audit_text
from accessguard.engine.breakglass import critical_fields

if TYPE_CHECKING:
    from accessguard.analysis import Facts
    from accessguard.audit.ledger import Access
    from accessguard.decision import Context, Decision
    from accessguard.errors import AuditError

__all__ = ["decision_event", "ledger_refused_event"]

_DB_SYSTEM = {"postgres": "postgresql", "sqlite": "sqlite"}


def decision_event(  # noqa: PLR0913 - keyword-only details of throttle events
    decision: Decision,
    context: Context,
    facts: Facts | None,
    *,
    policy_version: str,
    pseudonym: Callable[[int | str], int | str],
    dialect: str = "postgres",
    window: int | None = None,
    count: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The fields of one decision's event (a refusal, a throttle or a notice)."""
    redacted = audit_text(facts.redacted) if facts is not None else None
    if facts is not None:  # the statement's own dialect: a sqlite event says sqlite
        dialect = facts.dialect
    ticket = context.ticket
    fields: dict[str, Any] = {
        "event.kind": "event",
        "event.category": ["database", "iam"],
        "event.type": ["allowed" if decision.allowed else "denied"],
        "event.action": "query",
        "event.outcome": "success" if decision.allowed else "failure",
        "event.reason": str(decision.reason) if decision.reason else None,
        "message": decision.message,
        "accessguard.outcome": decision.outcome,
        "user.name": context.user,
        "user.roles": sorted(context.roles),
        "accessguard.ticket.id": context.ticket_id,
        "accessguard.ticket.kind": ticket.kind if ticket is not None else None,
        "db.system.name": _DB_SYSTEM.get(dialect, dialect),
        "db.operation.name": decision.kind.upper(),
        "db.query.summary": " ".join([decision.kind.upper(), *decision.tables]),
        "db.query.text": redacted,
        "accessguard.tables": list(decision.tables),
        "accessguard.columns": list(decision.columns),
        "accessguard.fingerprint": facts.fingerprint if facts is not None else None,
        "accessguard.policy.version": policy_version,
    }
    if len(decision.tables) == 1:
        fields["db.collection.name"] = decision.tables[0]
    # allowed (or throttled): the subjects it was proven to stay within; refused: the
    # ones it named, so "who tried to read customer 7?" is answered too
    subjects = decision.subjects or decision.named
    if subjects:  # subject ids, as the ledger keeps them (pseudonyms with its key)
        fields["accessguard.subjects"] = [
            {"kind": scope, "id": pseudonym(subject)} for scope, subject in subjects
        ]
    fields.update(critical_fields(ticket))  # under an elevation: every event is critical
    if extra:
        fields.update(extra)
    if decision.limit is not None:
        fields["accessguard.limit"] = decision.limit
        fields["accessguard.window.seconds"] = window
        fields["accessguard.count"] = count
        retry = decision.retry_after
        fields["accessguard.retry_after"] = (
            retry if retry is not None and math.isfinite(retry) else None
        )
    return fields


def ledger_refused_event(access: Access, error: AuditError) -> dict[str, Any]:
    """The event of a statement refused because the ledger cannot be written."""
    return {
        "event.kind": "event",
        "event.category": ["database", "iam"],
        "event.type": ["denied"],
        "event.action": "query",
        "event.outcome": "failure",
        "event.reason": str(error.reason),
        "message": error.message,
        "accessguard.outcome": "denied",
        "user.name": access.user,
        "user.roles": sorted(access.roles),
        "accessguard.ticket.id": access.ticket_id,
        "accessguard.ticket.kind": access.ticket_kind,
        "accessguard.tables": list(access.tables),
        "accessguard.columns": list(access.columns),
        "accessguard.fingerprint": access.fingerprint,
        "accessguard.policy.version": access.policy_version,
    }
