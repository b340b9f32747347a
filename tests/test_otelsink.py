"""The audit trail exported as OpenTelemetry log records, chained, with no literal values."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider

from accessguard import Guard, scenario
from accessguard.audit.otelsink import OtelLogSink
from accessguard.audit.sinks import chain_hash, verify
from accessguard.errors import AuditError
from accessguard.guard import Session
from accessguard.testing import MemoryAuditSink

REFUSED = "SELECT name, email FROM customers WHERE email = 'zebulon@secret.example'"


class Logs:
    """An SDK logger provider whose records stay in memory."""

    def __init__(self) -> None:
        self.exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
        self.provider = LoggerProvider()
        self.provider.add_log_record_processor(SimpleLogRecordProcessor(self.exporter))

    def records(self) -> list[Any]:
        return [data.log_record for data in self.exporter.get_finished_logs()]


@pytest.fixture
def logs() -> Iterator[Logs]:
    """An in-memory log pipeline, shut down after the test."""
    found = Logs()
    yield found
    found.provider.shutdown()


def attributes(log_record: Any) -> dict[str, Any]:
    return dict(log_record.attributes or {})


class TestOtelLogSink:
    def test_a_refusal_is_one_log_record(self, logs: Logs) -> None:
        """A refused check is exported as one WARN record with the event's fields, no literal."""
        with Guard.from_directory(
            scenario.policies_dir(), tickets=scenario.tickets(), audit=OtelLogSink(logs.provider)
        ) as guard:
            guard.check(REFUSED, user="alice", ticket="T-100")
        [log_record] = logs.records()
        found = attributes(log_record)
        assert found["event.reason"] == "row_scope.unbound"
        assert found["accessguard.outcome"] == "denied"
        assert found["accessguard.ticket.id"] == "T-100"
        assert found["db.collection.name"] == "customers"
        assert found["db.query.text"] == "SELECT name, email FROM customers WHERE email = ?"
        assert found["user.roles"] == ("everyone", "support_agent")
        assert log_record.severity_text == "WARN"
        assert str(log_record.body).startswith("The statement can reach customers rows")
        assert log_record.timestamp is not None
        text = json.dumps([found, log_record.body], default=str)
        assert "zebulon" not in text
        assert "secret.example" not in text

    def test_a_refusal_record_joins_the_current_trace(self, logs: Logs) -> None:
        """A refusal's record carries the trace and span of the statement's current span."""
        tracer = TracerProvider().get_tracer("tests")
        with (
            Guard.from_directory(
                scenario.policies_dir(),
                tickets=scenario.tickets(),
                audit=OtelLogSink(logs.provider),
            ) as guard,
            tracer.start_as_current_span("request") as request,
        ):
            guard.check(REFUSED, user="alice", ticket="T-100")
        [log_record] = logs.records()
        assert log_record.trace_id == request.get_span_context().trace_id
        assert log_record.span_id == request.get_span_context().span_id

    def test_records_carry_an_unbroken_chain(self, logs: Logs) -> None:
        """Each record's event.hash chains onto the previous record's, from the genesis."""
        with Guard.from_directory(
            scenario.policies_dir(), tickets=scenario.tickets(), audit=OtelLogSink(logs.provider)
        ) as guard:
            for sql in (REFUSED, "SELECT email FROM customers", "DELETE FROM orders"):
                guard.check(sql, user="alice", ticket="T-100")
        records = [attributes(r) for r in logs.records()]
        assert len(records) == 3
        prev = "0" * 64
        for found in records:
            assert found["accessguard.chain.prev"] == prev
            prev = found["event.hash"]
        assert records[2]["event.hash"] != records[1]["event.hash"]

    def test_inner_sink_holds_the_same_chained_events(self, logs: Logs, tmp_path: Path) -> None:
        """With inner=, events go to the file first; the records carry the file's own hashes."""
        trail = tmp_path / "audit.jsonl"
        with Guard.from_directory(
            scenario.policies_dir(),
            tickets=scenario.tickets(),
            audit=OtelLogSink(logs.provider, inner=trail),
        ) as guard:
            guard.check(REFUSED, user="alice", ticket="T-100")
            guard.check("SELECT email FROM customers", user="alice", ticket="T-100")
        assert verify(trail).ok
        lines = [json.loads(line) for line in trail.read_text().splitlines()]
        hashes = [attributes(r)["event.hash"] for r in logs.records()]
        assert hashes == [line["event.hash"] for line in lines]
        assert lines[1]["event.hash"] == chain_hash(lines[0]["event.hash"], lines[1])

    def test_an_inner_failure_exports_nothing_and_refuses(self, logs: Logs) -> None:
        """When the inner sink fails, nothing is exported and the guard's audit error stands."""
        inner = MemoryAuditSink()
        inner.fail = True
        with Guard.from_directory(
            scenario.policies_dir(),
            tickets=scenario.tickets(),
            audit=OtelLogSink(logs.provider, inner=inner),
        ) as guard:
            with pytest.raises(AuditError):
                guard.check(REFUSED, user="alice", ticket="T-100")
            inner.fail = False
        assert logs.records() == []

    def test_a_ledger_entry_is_a_record(self, logs: Logs) -> None:
        """An allowed scoped read reaches the ledger; its entry is exported at close, INFO."""
        guard = Guard.from_directory(
            scenario.policies_dir(), tickets=scenario.tickets(), audit=OtelLogSink(logs.provider)
        )
        session = Session(user="alice", ticket="T-100")
        ok = guard.authorize(
            "SELECT name FROM customers WHERE id = 42", None, session, dialect="postgres"
        )
        assert ok.tally is not None
        ok.tally.add(3)
        guard.close()
        [log_record] = logs.records()
        found = attributes(log_record)
        assert found["event.action"] == "ledger"
        assert found["accessguard.subject.id"] == 42
        assert found["accessguard.rows"] == 3
        assert log_record.severity_text == "INFO"
