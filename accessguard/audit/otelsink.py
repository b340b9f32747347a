"""The audit trail as OpenTelemetry log records (optional: ``pip install accessguard[otel]``).

``OtelLogSink`` is an audit sink (``accessguard.audit.sinks.AuditSink``): pass it
as ``audit=`` or ``ledger=``, and every event (refusals, ledger entries,
reloads) becomes one ``LogRecord`` of the logger ``accessguard.audit``, so the
trail joins an application's existing log pipeline (an OTLP collector, and
whatever store sits behind it).

- body: the event's ``message`` (plain words, no literal values), else its
  ``event.action``;
- attributes: every other field of the event, under its own name
  (``event.reason``, ``accessguard.outcome``, ``db.query.text`` redacted,
  ``accessguard.chain.prev`` and ``event.hash``, ...). A field OpenTelemetry
  cannot carry as an attribute (a mapping, a list of mappings) is its JSON
  text; a field that is None is left out;
- timestamp: the event's ``@timestamp``; severity: INFO for an allowed
  outcome, WARN for a refusal, FATAL for an alert (a canary read);
- trace context: the current span's, so a refusal's record joins the
  statement's trace (ledger entries, flushed later, join whatever span is current then).

An exporter sends records in the background and drops them when its
collector is away: it is not a record of truth. ``inner`` names the sink that
is (a JSON-lines path, the PostgreSQL sink, any sink object): each batch is
written there first, chained there, and the very events (same hashes) are
then exported. Without ``inner`` the sink chains the events itself, one chain
per sink, so a store behind the collector can still verify what it received.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from opentelemetry._logs import LogRecord, SeverityNumber, get_logger

from accessguard.audit.sinks import GENESIS, AuditSink, Event, as_sink, seal

__all__ = ["LOGGER_NAME", "OtelLogSink"]

#: the instrumentation scope of every record
LOGGER_NAME = "accessguard.audit"
_PRIMITIVE = (str, bool, int, float)


class OtelLogSink:
    """Export each audit event as an OpenTelemetry log record (after ``inner``, if any)."""

    def __init__(
        self,
        logger_provider: Any = None,
        *,
        inner: AuditSink | str | Path | None = None,
    ) -> None:
        """``logger_provider``: an SDK ``LoggerProvider``; None: the global one (once set)."""
        self._logger = get_logger(LOGGER_NAME, logger_provider=logger_provider)
        self.inner = as_sink(inner) if inner is not None else None
        self._prev = GENESIS
        self._lock = threading.Lock()

    def write(self, events: list[Event]) -> None:
        """Persist to ``inner`` (or chain here), then emit one record per event."""
        if not events:
            return
        with self._lock:
            if self.inner is not None:
                self.inner.write(events)  # chains them, persists them, or raises
            else:
                self._prev = seal(events, self._prev)
            for event in events:
                self._logger.emit(record(event))

    def close(self) -> None:
        """Close ``inner`` (the logger provider is the application's to shut down)."""
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()


def record(event: Event) -> LogRecord:
    """The log record of one audit event."""
    attributes = {
        key: attribute(value)
        for key, value in event.items()
        if key not in {"message", "@timestamp"} and value is not None
    }
    body = event.get("message") or event.get("event.action")
    severity = _severity(event)
    return LogRecord(
        timestamp=_nanoseconds(event.get("@timestamp")),
        observed_timestamp=time.time_ns(),
        severity_text=severity.name,
        severity_number=severity,
        body=str(body) if body is not None else None,
        attributes=attributes,
    )


def attribute(value: object) -> Any:
    """``value`` as OpenTelemetry carries it: a primitive, a list of one primitive type, or JSON."""
    if isinstance(value, _PRIMITIVE):
        return value
    if isinstance(value, list | tuple):
        kinds = {type(v) for v in value}
        if len(kinds) <= 1 and kinds <= set(_PRIMITIVE):
            return list(value)
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return str(value)


def _severity(event: Event) -> SeverityNumber:
    if event.get("log.level") == "critical" or event.get("event.kind") == "alert":
        return SeverityNumber.FATAL
    if event.get("event.outcome") == "failure":
        return SeverityNumber.WARN
    return SeverityNumber.INFO


def _nanoseconds(stamp: object) -> int | None:
    """An ISO 8601 ``@timestamp`` in nanoseconds since the epoch (None: the SDK's now)."""
    if not isinstance(stamp, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    delta = moment - epoch
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
