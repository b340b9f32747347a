"""OpenTelemetry: a span per refused statement, an event per allowed one, no literal anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from accessguard import AccessDenied, ConfigurationError, Guard, Throttled, Ticket, scenario
from accessguard.engine import telemetry
from accessguard.errors import AuditError
from accessguard.guard import Session
from accessguard.testing import MemoryAuditSink

#: literals of the statements below: none may appear in a span, an event or a status
LITERALS = ("zebulon", "secret.example", "Zebulon Secret", "31337")
REFUSED = "SELECT name, email FROM customers WHERE email = 'zebulon@secret.example'"
ALLOWED = "SELECT name FROM customers WHERE id = 42 AND name = 'Zebulon Secret'"


class Tracing:
    """An SDK tracer provider whose finished spans stay in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("tests")

    def spans(self, name: str = telemetry.SPAN_NAME) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]


@pytest.fixture
def tracing() -> Iterator[Tracing]:
    """accessguard traced through an in-memory SDK provider (not the global one)."""
    found = Tracing()
    telemetry.instrument(tracer_provider=found.provider)
    yield found
    telemetry.uninstrument()


def assert_no_literal(span: ReadableSpan) -> None:
    """Nothing the span carries (attributes, events, status) holds a literal of the statement."""
    carried: list[Any] = [dict(span.attributes or {}), span.status.description]
    carried += [(e.name, dict(e.attributes or {})) for e in span.events]
    text = json.dumps(carried, default=str)
    for literal in LITERALS:
        assert literal not in text


class TestRefused:
    def test_a_refused_check_is_one_span(self, guard: Guard, tracing: Tracing) -> None:
        """guard.check of a refused statement ends one ERROR span with the database attributes."""
        decision = guard.check(REFUSED, user="alice", ticket="T-100")
        assert decision.outcome == "denied"
        [span] = tracing.spans()
        attributes = dict(span.attributes or {})
        assert attributes["db.system.name"] == "postgresql"
        assert attributes["db.operation.name"] == "SELECT"
        assert attributes["db.collection.name"] == "customers"
        assert attributes["db.query.summary"] == "SELECT customers"
        assert attributes["db.query.text"] == "SELECT name, email FROM customers WHERE email = ?"
        assert attributes["accessguard.outcome"] == "denied"
        assert attributes["accessguard.reason"] == "row_scope.unbound"
        assert attributes["accessguard.ticket.id"] == "T-100"
        assert attributes["accessguard.policy.version"] == guard.policy.version
        assert span.status.status_code.name == "ERROR"
        assert_no_literal(span)

    def test_the_refusal_span_is_a_child_of_the_current_span(
        self, guard: Guard, tracing: Tracing
    ) -> None:
        """The refusal span joins the application's trace, under its current span."""
        with tracing.tracer.start_as_current_span("request") as request:
            guard.check(REFUSED, user="alice", ticket="T-100")
        [span] = tracing.spans()
        assert span.parent is not None
        assert span.parent.span_id == request.get_span_context().span_id

    def test_a_throttled_statement_is_one_span(self, guard: Guard, tracing: Tracing) -> None:
        """The 121st statement in a minute is throttled: one span with the throttle's reason."""
        session = Session(user="alice", ticket="T-100")
        sql = "SELECT name FROM customers WHERE id = $1"
        for _ in range(120):
            guard.authorize(sql, [42], session, dialect="postgres")
        with pytest.raises(Throttled):
            guard.authorize(sql, [42], session, dialect="postgres")
        [span] = tracing.spans()
        attributes = dict(span.attributes or {})
        assert attributes["accessguard.outcome"] == "throttled"
        assert attributes["accessguard.reason"] == "throttle.statements"
        assert attributes["db.collection.name"] == "customers"

    def test_an_unbound_session_is_a_span_without_a_user(
        self, guard: Guard, tracing: Tracing
    ) -> None:
        """A refusal with no employee bound is traced too, with no user.name."""
        with pytest.raises(ConfigurationError):
            guard.check("SELECT 1", user="", ticket="T-100")
        [span] = tracing.spans()
        attributes = dict(span.attributes or {})
        assert attributes["accessguard.reason"] == "session.unbound"
        assert "user.name" not in attributes

    def test_a_statement_the_ledger_cannot_count_is_one_span(self, tracing: Tracing) -> None:
        """A scoped read refused because the ledger's sink fails is traced as a refusal."""
        ledger = MemoryAuditSink()
        guard = Guard.from_directory(
            scenario.policies_dir(),
            tickets=scenario.tickets(),
            audit=MemoryAuditSink(),
            ledger=ledger,
            ledger_interval=3600,
        )
        session = Session(user="alice", ticket="T-100")
        guard.authorize(ALLOWED, None, session, dialect="postgres")
        ledger.fail = True
        with pytest.raises(OSError, match="unavailable"):
            guard.ledger.flush()
        with pytest.raises(AuditError):
            guard.authorize(ALLOWED, None, session, dialect="postgres")
        [span] = tracing.spans()
        attributes = dict(span.attributes or {})
        assert attributes["accessguard.reason"] == "audit.sink_unavailable"
        assert attributes["accessguard.ticket.id"] == "T-100"
        assert_no_literal(span)
        ledger.fail = False
        guard.close()


class TestAllowed:
    def test_an_allowed_statement_is_an_event_on_the_current_span(
        self, unlimited: Guard, tracing: Tracing
    ) -> None:
        """Each allowed statement adds one accessguard.decision event to the current span."""
        session = Session(user="alice", ticket="T-100")
        with tracing.tracer.start_as_current_span("request"):
            for _ in range(2):
                unlimited.authorize(ALLOWED, None, session, dialect="postgres")
        assert tracing.spans() == []
        [request] = tracing.spans("request")
        events = [e for e in request.events if e.name == telemetry.SPAN_NAME]
        assert len(events) == 2
        attributes = dict(events[0].attributes or {})
        assert attributes["accessguard.outcome"] == "allowed"
        assert attributes["db.collection.name"] == "customers"
        assert attributes["db.query.summary"] == "SELECT customers"
        assert attributes["accessguard.ticket.id"] == "T-100"
        assert attributes["accessguard.policy.version"] == unlimited.policy.version
        assert "db.query.text" not in attributes  # the fingerprint stands for it
        assert_no_literal(request)

    def test_an_allowed_statement_outside_a_trace_adds_nothing(
        self, unlimited: Guard, tracing: Tracing
    ) -> None:
        """Without a recording current span, an allowed statement makes no span."""
        session = Session(user="alice", ticket="T-100")
        unlimited.authorize(ALLOWED, None, session, dialect="postgres")
        assert tracing.exporter.get_finished_spans() == ()

    def test_a_canary_read_is_a_notice_on_the_current_span(self, tracing: Tracing) -> None:
        """Reading the canary customer is allowed, and adds an accessguard.notice event."""
        tickets = [
            *scenario.tickets(),
            Ticket(
                id="T-900", assignee="alice", kind="order_issue", status="open", customer_id=150
            ),
        ]
        guard = Guard.from_directory(
            scenario.policies_dir(), tickets=tickets, audit=MemoryAuditSink()
        )
        session = Session(user="alice", ticket="T-900")
        with tracing.tracer.start_as_current_span("request"):
            guard.authorize(
                "SELECT name FROM customers WHERE id = 150", None, session, dialect="postgres"
            )
        guard.close()
        [request] = tracing.spans("request")
        [notice] = [e for e in request.events if e.name == telemetry.NOTICE_NAME]
        attributes = dict(notice.attributes or {})
        assert attributes["accessguard.watch"] == "canary"
        assert attributes["event.kind"] == "alert"
        assert attributes["accessguard.ticket.id"] == "T-900"
        assert tracing.spans() == []


@pytest.mark.db
class TestConnection:
    def test_a_guarded_connection_is_traced(
        self, scenario_dsn: str, sink: MemoryAuditSink, tracing: Tracing
    ) -> None:
        """On PostgreSQL: an allowed read is an event, a refused one a span; no literal."""
        with (
            Guard.from_directory(
                scenario.policies_dir(), tickets=scenario.tickets(), audit=sink
            ) as guard,
            tracing.tracer.start_as_current_span("request"),
            guard.connect(scenario_dsn, user="alice", ticket="T-100") as conn,
        ):
            conn.execute(ALLOWED).fetchall()
            with pytest.raises(AccessDenied):
                conn.execute(REFUSED)
        [refused] = tracing.spans()
        [request] = tracing.spans("request")
        assert dict(refused.attributes or {})["accessguard.reason"] == "row_scope.unbound"
        assert refused.parent is not None
        assert refused.parent.span_id == request.context.span_id
        [event] = [e for e in request.events if e.name == telemetry.SPAN_NAME]
        assert dict(event.attributes or {})["db.system.name"] == "postgresql"
        assert_no_literal(refused)
        assert_no_literal(request)


#: with no provider, then the global one set: a new lane picks it up
GLOBAL = """
import json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from accessguard import Guard, scenario
from accessguard.engine import telemetry
from accessguard.errors import AuditError
from accessguard.guard import Session
from accessguard.testing import MemoryAuditSink

guard = Guard.from_directory(scenario.policies_dir(), tickets=scenario.tickets(),
                             audit=MemoryAuditSink())
sql = "SELECT name FROM customers WHERE id = 42"
guard.authorize(sql, None, Session(user="alice", ticket="T-100"), dialect="postgres")
off = telemetry.TRACER is None
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
with trace.get_tracer("app").start_as_current_span("request"):
    guard.authorize(sql, None, Session(user="erin", ticket="T-300"), dialect="postgres")
    guard.check("SELECT email FROM customers", user="alice", ticket="T-100")
spans = exporter.get_finished_spans()
print(json.dumps({"off": off, "spans": sorted(s.name for s in spans),
                  "events": [e.name for s in spans for e in s.events]}))
"""

#: opentelemetry-api missing: accessguard imports and decides as before
MISSING = """
import sys
sys.modules["opentelemetry"] = None
from accessguard import Guard, scenario
from accessguard.engine import telemetry
from accessguard.testing import MemoryAuditSink
guard = Guard.from_directory(scenario.policies_dir(), tickets=scenario.tickets(),
                             audit=MemoryAuditSink())
decision = guard.check("SELECT email FROM customers", user="alice", ticket="T-100")
print(telemetry.TRACER is None, decision.reason)
"""


def run(script: str) -> str:
    """Run ``script`` in a fresh interpreter (a global provider can be set only once)."""
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OTEL_SDK_DISABLED": "false"},
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


class TestSetUp:
    def test_the_global_provider_is_found_once_set(self) -> None:
        """Off without a provider; after set_tracer_provider, a new lane and a refusal trace."""
        found = json.loads(run(GLOBAL))
        assert found["off"] is True
        assert found["spans"] == [telemetry.SPAN_NAME, "request"]
        assert found["events"] == [telemetry.SPAN_NAME]

    def test_without_the_api_nothing_is_traced(self) -> None:
        """With opentelemetry-api missing, the guard decides as before and traces nothing."""
        assert run(MISSING) == "True row_scope.unbound"
