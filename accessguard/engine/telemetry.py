"""OpenTelemetry traces of decisions (optional: ``pip install accessguard[otel]``).

- A refused statement (denied or throttled, by any path: ``guard.check``,
  an adapter, a binding) is one span, ``accessguard.decision``, a child of
  the current span, with status ERROR.
- An allowed statement is one event, ``accessguard.decision``, on the
  current span, when that span is recording (an allowed statement outside
  any trace adds nothing). An event rather than a span: the statement's own
  span, if any, is the driver instrumentation's; an event costs a fraction of
  a span and leaves the trace's shape as the application made it.
- An allowed statement the audit must not take silently (a watch-listed or
  canary subject, a shadow rule that would deny it) also adds an event
  ``accessguard.notice`` to the current span, with ``accessguard.watch``
  or ``accessguard.shadow.reason``.

Both carry OpenTelemetry's stable database attributes (``db.system.name``,
``db.operation.name``, ``db.collection.name`` for one table,
``db.query.summary``) and accessguard's (``accessguard.outcome``,
``accessguard.ticket.id``, ``accessguard.policy.version``,
``accessguard.fingerprint``): names, reason codes and ids, never a literal
value of the statement. A refusal span adds ``accessguard.reason`` (also its
``error.type``), ``db.query.text`` as the audit trail's redacted text (every
literal a ``?``), the tables and columns, ``user.name`` and the limit of a
throttle. The allowed event carries only the first set: the SDK copies and
checks every attribute of every event, about a microsecond apiece.

Off costs nothing on the hot path but one module attribute test: ``TRACER``
is None unless a tracer provider is configured, and then no OpenTelemetry
call is made. The global provider is looked for when this module is imported,
whenever a lane is made (one per employee, ticket and dialect, and one per
guarded connection) and on every refusal while none is found; so set it
before the application's first connection, as OpenTelemetry's SDK set-up and
``opentelemetry-instrument`` do. ``instrument(tracer_provider=...)`` names a
provider explicitly (OpenTelemetry's instrumentors' convention).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accessguard.engine.plan import Plan

try:
    from opentelemetry import trace
    from opentelemetry.trace import (
        NoOpTracerProvider,
        ProxyTracerProvider,
        SpanKind,
        Status,
        StatusCode,
    )
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    trace = None  # type: ignore[assignment]

__all__ = ["NOTICE_NAME", "SPAN_NAME", "TRACER", "instrument", "refresh", "uninstrument"]

#: the name of the refusal span and of the allowed event
SPAN_NAME = "accessguard.decision"
_SCOPE = "accessguard"
_DB_SYSTEM = {"postgres": "postgresql", "sqlite": "sqlite"}

#: the tracer while a tracer provider is configured, else None (the hot path's one test)
TRACER: Any = None
#: a provider named by ``instrument``; None: the global one
_PROVIDER: Any = None

#: the event of an allowed statement that the audit must not take silently
NOTICE_NAME = "accessguard.notice"
#: what such an event adds to the audit attributes below
_NOTICE = (
    "accessguard.watch",
    "accessguard.shadow.outcome",
    "accessguard.shadow.reason",
    "accessguard.shadow.version",
    "event.kind",
)

#: the attributes of the audit event that a span carries (the audit names them alike)
_FROM_AUDIT = (
    "db.system.name",
    "db.operation.name",
    "db.collection.name",
    "db.query.summary",
    "db.query.text",
    "accessguard.outcome",
    "accessguard.ticket.id",
    "accessguard.ticket.kind",
    "accessguard.policy.version",
    "accessguard.tables",
    "accessguard.columns",
    "accessguard.fingerprint",
    "accessguard.limit",
    "user.name",
)

#: the allowed event's attributes by plan (keyed by id, holding the plan so the id stays its own)
_ATTRIBUTES: dict[int, tuple[Plan, str, dict[str, Any]]] = {}
_ATTRIBUTES_MAX = 4096


def instrument(tracer_provider: Any = None) -> None:
    """Trace decisions through ``tracer_provider`` (None: the global provider, once set)."""
    global _PROVIDER  # noqa: PLW0603 - the module's one switch, read on the hot path
    _PROVIDER = tracer_provider
    refresh()


def uninstrument() -> None:
    """Stop tracing through a provider named by ``instrument``; the global one still counts."""
    global _PROVIDER  # noqa: PLW0603 - the module's one switch, read on the hot path
    _PROVIDER = None
    _ATTRIBUTES.clear()
    refresh()


def refresh() -> None:
    """Set ``TRACER`` from the configured provider (None while none is configured)."""
    global TRACER  # noqa: PLW0603 - the module's one switch, read on the hot path
    if trace is None:
        return
    provider = _PROVIDER if _PROVIDER is not None else trace.get_tracer_provider()
    if isinstance(provider, (ProxyTracerProvider, NoOpTracerProvider)):
        TRACER = None
        return
    if TRACER is None or _PROVIDER is not None:
        TRACER = provider.get_tracer(_SCOPE)


def allowed(plan: Plan, dialect: str) -> None:
    """One allowed statement: an event on the current span, if it is recording.

    Never raises: tracing is no reason to refuse, or to send, a statement.
    """
    try:
        span = trace.get_current_span()
        if not span.is_recording():
            return
        found = _ATTRIBUTES.get(id(plan))
        if found is None or found[0] is not plan or found[1] != dialect:
            if len(_ATTRIBUTES) >= _ATTRIBUTES_MAX:
                _ATTRIBUTES.clear()
            found = (plan, dialect, _plan_attributes(plan, dialect))
            _ATTRIBUTES[id(plan)] = found
        span.add_event(SPAN_NAME, found[2])
    except Exception:  # noqa: BLE001, S110 - an exporter's failure must not reach the statement
        pass


def _plan_attributes(plan: Plan, dialect: str) -> dict[str, Any]:
    """The allowed event's attributes (see the module's docstring), made once per plan."""
    decision, context = plan.decision, plan.context
    operation = decision.kind.upper()
    attributes: dict[str, Any] = {
        "db.system.name": _DB_SYSTEM.get(dialect, dialect),
        "db.operation.name": operation,
        "db.query.summary": " ".join([operation, *decision.tables]),
        "accessguard.outcome": "allowed",
        "accessguard.policy.version": plan.policy.version,
    }
    if len(decision.tables) == 1:
        attributes["db.collection.name"] = decision.tables[0]
    if context.ticket_id is not None:
        attributes["accessguard.ticket.id"] = context.ticket_id
    if plan.facts.fingerprint is not None:
        attributes["accessguard.fingerprint"] = plan.facts.fingerprint
    return attributes


def refused(fields: dict[str, Any]) -> None:
    """One audited decision (the audit event's ``fields``): a span if it was refused.

    Never raises: the audit event is written after it, whatever tracing does.
    """
    with contextlib.suppress(Exception):  # tracing must not stop the audit event
        _refused(fields)


def _refused(fields: dict[str, Any]) -> None:
    if TRACER is None:
        refresh()  # a provider set since: refusals are rare, the look-up is cheap enough
        if TRACER is None:
            return
    attributes = {k: v for k in _FROM_AUDIT if (v := fields.get(k)) is not None}
    if fields.get("accessguard.outcome") == "allowed":  # the allowed path made its event
        _notice(fields, attributes)
        return
    reason = fields.get("event.reason") or "unknown"
    attributes["accessguard.reason"] = reason
    attributes["error.type"] = reason
    span = TRACER.start_span(SPAN_NAME, kind=SpanKind.INTERNAL, attributes=attributes)
    span.set_status(Status(StatusCode.ERROR, reason))
    span.end()


def _notice(fields: dict[str, Any], attributes: dict[str, Any]) -> None:
    """A watch-list or canary read, or a shadow "would deny": an event on the current span."""
    notice = {k: v for k in _NOTICE if (v := fields.get(k)) is not None}
    span = trace.get_current_span()
    if notice and span.is_recording():
        span.add_event(NOTICE_NAME, attributes | notice)


refresh()
