"""The audit trail: one event per refusal, hash-chained, verifiable, no data in it."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from accessguard import AccessDenied, AuditError, AuditSink, Guard, scenario
from accessguard.audit.sinks import (
    GENESIS,
    HASH,
    Auditor,
    JsonlSink,
    chain_hash,
    read_events,
    seal,
    verify,
)
from accessguard.guard import Session
from accessguard.testing import MemoryAuditSink

FROZEN = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)


def guard_with(audit: AuditSink) -> Guard:
    return Guard.from_directory(
        scenario.policies_dir(), tickets=scenario.tickets(), audit=audit, clock=lambda: FROZEN
    )


def write_events(path: Path, n: int) -> None:
    auditor = Auditor(JsonlSink(path, fsync=False), clock=lambda: FROZEN)
    for i in range(n):
        auditor.emit(**{"event.action": "query", "n": i})


class TestEvents:
    def test_refusal_event_fields(self) -> None:
        """A refusal writes one event with who, what, why and the chain link."""
        sink = MemoryAuditSink()
        guard = guard_with(sink)
        with pytest.raises(AccessDenied):
            guard.authorize(
                "SELECT card_token FROM payments WHERE customer_id = 42",
                None,
                _session("alice", "T-100"),
                dialect="postgres",
            )
        (event,) = sink.events
        assert event["event.reason"] == "column.not_allowed"
        assert event["accessguard.outcome"] == "denied"
        assert event["user.name"] == "alice"
        assert event["user.roles"] == ["everyone", "support_agent"]
        assert event["accessguard.ticket.id"] == "T-100"
        assert event["accessguard.ticket.kind"] == "order_issue"
        assert event["db.operation.name"] == "SELECT"
        assert event["accessguard.tables"] == ["payments"]
        assert event["accessguard.columns"] == ["payments.card_token", "payments.customer_id"]
        assert event["db.query.text"] == "SELECT card_token FROM payments WHERE customer_id = ?"
        assert event["@timestamp"] == "2026-11-24T12:00:00.000000+00:00"
        assert event["accessguard.chain.prev"] == GENESIS
        assert len(event["accessguard.fingerprint"]) == 16
        assert event["accessguard.policy.version"]

    def test_allowed_statements_are_not_audited_by_default(self) -> None:
        """Allowed events are optional and off by default."""
        sink = MemoryAuditSink()
        guard_with(sink).authorize(
            "SELECT id FROM customers WHERE id = 42",
            None,
            _session("alice", "T-100"),
            dialect="postgres",
        )
        assert sink.events == []

    @given(st.text(min_size=1, max_size=40).filter(lambda s: "'" not in s and s.strip()))
    def test_literals_never_reach_the_event(self, secret: str) -> None:
        """Redaction removes every literal of a refused statement from the event."""
        sink = MemoryAuditSink()
        guard = guard_with(sink)
        with pytest.raises(AccessDenied):
            guard.authorize(
                f"SELECT email FROM customers WHERE email = 'zz{secret}zz'",
                None,
                _session("alice", "T-100"),
                dialect="postgres",
            )
        assert f"zz{secret}zz" not in json.dumps(sink.events, ensure_ascii=False)

    def test_failing_sink_refuses_with_audit_error(self) -> None:
        """If the refusal cannot be written, the caller gets AuditError (still a refusal)."""
        sink = MemoryAuditSink()
        sink.fail = True
        with pytest.raises(AuditError) as info:
            guard_with(sink).authorize(
                "SELECT email FROM customers", None, _session("alice", "T-100"), dialect="postgres"
            )
        assert info.value.reason == "audit.sink_unavailable"


class TestChain:
    def test_file_chain_verifies(self, tmp_path: Path) -> None:
        """Events appended to a file link into a chain that verifies."""
        path = tmp_path / "audit.jsonl"
        write_events(path, 5)
        result = verify(path)
        assert result.ok
        assert result.events == 5

    def test_chain_resumes_across_sinks(self, tmp_path: Path) -> None:
        """A new sink on an existing file continues the chain from its last line."""
        path = tmp_path / "audit.jsonl"
        write_events(path, 2)
        write_events(path, 2)
        assert verify(path).ok

    @pytest.mark.parametrize("tamper", ["edit", "delete", "swap", "truncate-head"])
    def test_tampering_names_the_first_broken_line(self, tmp_path: Path, tamper: str) -> None:
        """Editing, deleting or reordering lines breaks the chain at the first touched line."""
        path = tmp_path / "audit.jsonl"
        write_events(path, 5)
        lines = path.read_text().splitlines(keepends=True)
        if tamper == "edit":
            lines[2] = lines[2].replace('"n":2', '"n":7')
        elif tamper == "delete":
            del lines[2]
        elif tamper == "swap":
            lines[2], lines[3] = lines[3], lines[2]
        else:
            del lines[0]
        path.write_text("".join(lines))
        result = verify(path)
        assert not result.ok
        assert result.broken_line == (1 if tamper == "truncate-head" else 3)

    @given(
        st.sampled_from(["n", "event.action", "@timestamp"]),
        st.integers(0, 3),
        st.text(max_size=10),
    )
    def test_any_changed_field_breaks_the_chain(self, field: str, index: int, value: str) -> None:
        """Changing any field of any event is detected by recomputing the hash."""
        events: list[dict[str, object]] = [
            {"n": i, "event.action": "query", "@timestamp": "t"} for i in range(4)
        ]
        seal(events, GENESIS)
        original = events[index][field]
        events[index][field] = value
        recomputed = chain_hash(str(events[index]["accessguard.chain.prev"]), events[index])
        assert (recomputed == events[index][HASH]) == (value == original)

    def test_concurrent_writers_keep_one_chain(self, tmp_path: Path) -> None:
        """Threads writing through separate sinks on one file never fork the chain."""
        path = tmp_path / "audit.jsonl"

        def work() -> None:
            write_events(path, 25)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        result = verify(path)
        assert result.ok
        assert result.events == 100
        assert len(list(read_events(path))) == 100

    def test_unwritable_file_raises_audit_error(self, tmp_path: Path) -> None:
        """A sink that cannot write raises AuditError rather than dropping the event."""
        sink = JsonlSink(tmp_path / "missing-dir" / "audit.jsonl")
        with pytest.raises(AuditError):
            sink.write([{"event.action": "query"}])


def _session(user: str, ticket: str | None) -> Session:
    return Session(user=user, ticket=ticket)
