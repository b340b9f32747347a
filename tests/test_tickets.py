"""Ticket files fail at load naming file and line; stores announce ticket lifecycle changes."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from accessguard import FileTicketStore, Guard, PolicyError, scenario
from accessguard.testing import MemoryAuditSink
from accessguard.tickets.stores import (
    MemoryTicketStore,
    PostgresTicketStore,
    Ticket,
    TicketChange,
    changes,
    read_ticket_file,
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


T100 = "{id: T-100, assignee: alice, kind: order_issue, status: open, customer_id: 42}"
T101 = "{id: T-101, assignee: alice, kind: order_issue, status: closed, customer_id: 7}"


class TestTicketFile:
    def test_a_duplicate_id_names_file_and_line(self, tmp_path: Path) -> None:
        """Two tickets with one id fail at load, naming the second's line and the first's."""
        other = "{id: T-100, assignee: mallory, kind: order_issue, status: open, customer_id: 7}"
        path = write(tmp_path, "t.yaml", f"tickets:\n  - {T100}\n  - {T101}\n  - {other}\n")
        with pytest.raises(PolicyError) as info:
            read_ticket_file(path)
        assert info.value.path == str(path)
        assert info.value.line == 4
        assert "T-100" in info.value.message
        assert "line 2" in info.value.message

    def test_a_duplicate_id_in_json_names_its_line(self, tmp_path: Path) -> None:
        """JSON ticket files get the same check, with the line of the entry."""
        entry = '{"id": "T-1", "assignee": "a", "kind": "k", "status": "open"}'
        path = write(tmp_path, "t.json", f"[\n  {entry},\n  {entry}\n]\n")
        with pytest.raises(PolicyError) as info:
            read_ticket_file(path)
        assert info.value.line == 3

    @pytest.mark.parametrize("status", ["Open", "opne", "resolved"])
    def test_an_unknown_status_names_file_and_line(self, tmp_path: Path, status: str) -> None:
        """A status other than open or closed fails at load (a typo is not a closed ticket)."""
        bad = T101.replace("closed", status)
        path = write(tmp_path, "t.yaml", f"- {T100}\n- {bad}\n")
        with pytest.raises(PolicyError) as info:
            read_ticket_file(path)
        assert info.value.line == 2
        assert repr(status) in info.value.message

    def test_an_undecodable_file_names_its_line(self, tmp_path: Path) -> None:
        """A byte that is not UTF-8 is a PolicyError naming its line, not a UnicodeError."""
        path = tmp_path / "t.yaml"
        path.write_bytes(f"- {T100}\n- ".encode() + b"\xff\n")
        with pytest.raises(PolicyError) as info:
            read_ticket_file(path)
        assert info.value.line == 2

    def test_the_file_store_refuses_a_duplicate_at_construction(self, tmp_path: Path) -> None:
        """FileTicketStore loads through the same checks: no last-one-wins."""
        path = write(tmp_path, "t.yaml", f"- {T100}\n- {T100}\n")
        with pytest.raises(PolicyError):
            FileTicketStore(path)

    def test_a_valid_file_loads(self, tmp_path: Path) -> None:
        """Distinct ids with known statuses load in order."""
        path = write(tmp_path, "t.yaml", f"- {T100}\n- {T101}\n")
        assert [t.id for t in read_ticket_file(path)] == ["T-100", "T-101"]


def ticket(**fields: object) -> Ticket:
    base: dict[str, object] = {
        "id": "T-1",
        "assignee": "alice",
        "kind": "order_issue",
        "status": "open",
        "customer_id": 42,
    }
    return Ticket(**{**base, **fields})  # type: ignore[arg-type]


def actions(found: list[TicketChange]) -> list[tuple[str, str, str | None]]:
    return [(c.action, c.ticket.id, c.by) for c in found]


class TestLifecycle:
    @pytest.mark.parametrize(
        ("old", "new", "want"),
        [
            (None, ticket(), ["opened"]),
            (None, ticket(status="closed"), ["opened", "closed"]),
            (ticket(), ticket(assignee="bob"), ["assigned"]),
            (ticket(), ticket(status="closed"), ["closed"]),
            (ticket(status="closed"), ticket(), ["reopened"]),
            (ticket(), ticket(assignee="bob", status="closed"), ["assigned", "closed"]),
            (ticket(), ticket(), []),
        ],
        ids=["open", "open-closed", "assign", "close", "reopen", "assign-close", "same"],
    )
    def test_changes(self, old: Ticket | None, new: Ticket, want: list[str]) -> None:
        """What turned one snapshot of a ticket into the next, in order."""
        assert [c.action for c in changes(old, new)] == want

    def test_the_memory_store_announces_who_and_when(self) -> None:
        """put() tells subscribers what changed, by whom and when; reassignment names the old."""
        store, heard = MemoryTicketStore(), list[TicketChange]()
        store.subscribe(heard.append)
        store.put(ticket(), by="dispatch", at=100.0)
        store.put(ticket(assignee="bob"), by="bob", at=200.0)
        store.put(ticket(assignee="bob", status="closed"), by="bob", at=300.0)
        assert actions(heard) == [
            ("opened", "T-1", "dispatch"),
            ("assigned", "T-1", "bob"),
            ("closed", "T-1", "bob"),
        ]
        assert heard[1].previous_assignee == "alice"
        assert [c.at for c in heard] == [100.0, 200.0, 300.0]

    def test_the_file_store_diffs_its_snapshots(self, tmp_path: Path) -> None:
        """A reload announces opened, assigned and closed tickets; the first load announces none."""
        path = write(tmp_path, "t.yaml", f"- {T100}\n- {T101}\n")
        store, heard = FileTicketStore(path), list[TicketChange]()
        store.subscribe(heard.append)
        assert store.get("T-100") is not None
        assert heard == []
        t102 = "{id: T-102, assignee: bob, kind: order_issue, status: open, customer_id: 9}"
        edited = T100.replace("open", "closed").replace("alice", "bob")
        path.write_text(f"- {edited}\n- {T101}\n- {t102}\n")
        os.utime(path, ns=(1, 1))  # a new stamp even within the clock's resolution
        assert store.get("T-100") is not None
        assert actions(heard) == [
            ("assigned", "T-100", None),
            ("closed", "T-100", None),
            ("opened", "T-102", None),
        ]

    @pytest.mark.db
    def test_the_postgres_store_announces_a_changed_row(self, scenario_dsn: str) -> None:
        """A ticket row that changed since the store last read it is announced once."""
        store, heard = (
            PostgresTicketStore(lambda: psycopg.connect(scenario_dsn)),
            list[TicketChange](),
        )
        store.subscribe(heard.append)
        try:
            assert store.get("T-100") is not None
            with psycopg.connect(scenario_dsn, autocommit=True) as admin:
                admin.execute("UPDATE tickets SET status = 'closed' WHERE id = 'T-100'")
            for _ in range(2):
                found = store.get("T-100")
                assert found is not None
                assert not found.is_open
        finally:
            store.close()
        assert actions(heard) == [("closed", "T-100", None)]

    @pytest.mark.db
    def test_the_postgres_store_announces_a_ticket_opened_since_it_started(
        self, scenario_dsn: str
    ) -> None:
        """A ticket opened after the store started looking is announced opened, at its
        opened_at; one opened and closed since, opened then closed; one opened earlier
        (T-100) announces nothing."""
        store, heard = (
            PostgresTicketStore(lambda: psycopg.connect(scenario_dsn)),
            list[TicketChange](),
        )
        store.subscribe(heard.append)
        with psycopg.connect(scenario_dsn, autocommit=True) as admin:
            admin.execute(
                "INSERT INTO tickets (id, assignee, kind, status, customer_id, opened_at, "
                "closed_at) VALUES ('T-900', 'alice', 'order_issue', 'open', 42, now(), NULL), "
                "('T-901', 'alice', 'order_issue', 'closed', 42, now(), now() + interval '1 s')"
            )
            row = admin.execute(
                "SELECT extract(epoch FROM opened_at)::float8, "
                "extract(epoch FROM closed_at)::float8 FROM tickets WHERE id = 'T-901'"
            ).fetchone()
        assert row is not None
        try:
            for ticket in ("T-100", "T-900", "T-901", "T-900"):
                assert store.get(ticket) is not None
        finally:
            store.close()
        assert actions(heard) == [
            ("opened", "T-900", None),
            ("opened", "T-901", None),
            ("closed", "T-901", None),
        ]
        assert heard[1].at == pytest.approx(row[0])
        assert heard[2].at == pytest.approx(row[1])

    @pytest.mark.db
    def test_the_postgres_store_reads_a_table_without_times(self, scenario_dsn: str) -> None:
        """A tickets table without opened_at and closed_at still answers (no opening known)."""
        with psycopg.connect(scenario_dsn, autocommit=True) as admin:
            admin.execute("ALTER TABLE tickets DROP COLUMN opened_at, DROP COLUMN closed_at")
        store, heard = (
            PostgresTicketStore(lambda: psycopg.connect(scenario_dsn)),
            list[TicketChange](),
        )
        store.subscribe(heard.append)
        try:
            found = store.get("T-100")
        finally:
            store.close()
        assert found is not None
        assert found.assignee == "alice"
        assert heard == []

    @pytest.mark.db
    def test_the_guard_writes_ticket_events_into_the_trail(self, scenario_dsn: str) -> None:
        """Through a guard, a ticket closing in PostgreSQL becomes a ticket.closed audit event."""
        sink = MemoryAuditSink()
        store = PostgresTicketStore(lambda: psycopg.connect(scenario_dsn))
        with Guard.from_directory(scenario.policies_dir(), tickets=store, audit=sink) as guard:
            q = "SELECT name FROM customers WHERE id = 42"
            assert guard.check(q, user="alice", ticket="T-100").allowed
            with psycopg.connect(scenario_dsn, autocommit=True) as admin:
                admin.execute("UPDATE tickets SET status = 'closed' WHERE id = 'T-100'")
            assert not guard.check(q, user="alice", ticket="T-100").allowed
        events = [e for e in sink.events if e["event.action"].startswith("ticket.")]
        assert [(e["event.action"], e["accessguard.ticket.id"]) for e in events] == [
            ("ticket.closed", "T-100")
        ]
        assert events[0]["accessguard.ticket.assignee"] == "alice"
        assert events[0]["accessguard.subjects"] == [{"kind": "customer", "id": 42}]
        assert "@timestamp" in events[0]
