"""Reads after the ticket that allowed them closed (issue 20), from a trail and from the sink.

A small trail of ledger entries and ticket lifecycle events, written by the
real sinks (a keyed JSON-lines trail, the PostgreSQL sink), is asked (also
without DuckDB, the whole trail read into Python)
``audit after-close`` and ``audit subject-export``: the entries read more
than the grace after their ticket closed, and not after it was reopened,
are the ones named, by both engines alike.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from accessguard.audit.chain import KEY_ENV
from accessguard.audit.pgsink import PostgresSink
from accessguard.audit.sinks import JsonlSink
from accessguard.cli import investigate as cli_investigate
from accessguard.cli.app import main

KEY = bytes(range(32))
DAY = dt.datetime(2026, 11, 9, tzinfo=dt.UTC)


def at(hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    return DAY.replace(hour=hour, minute=minute, second=second)


def ledger(user: str, ticket: str, scope: str, subject: int, when: dt.datetime) -> dict[str, Any]:
    iso = when.isoformat()
    return {
        "@timestamp": iso,
        "event.action": "ledger",
        "accessguard.outcome": "allowed",
        "user.name": user,
        "user.roles": ["everyone", "support_agent"],
        "accessguard.ticket.id": ticket,
        "accessguard.ticket.kind": "order_issue",
        "accessguard.subject.kind": scope,
        "accessguard.subject.id": subject,
        "accessguard.tables": ["customers"],
        "accessguard.columns": ["customers.email"],
        "accessguard.statements": 2,
        "accessguard.rows": 2,
        "accessguard.first": iso,
        "accessguard.last": iso,
    }


def change(action: str, ticket: str, when: dt.datetime, by: str = "dispatch") -> dict[str, Any]:
    return {
        "@timestamp": when.isoformat(),
        "event.action": f"ticket.{action}",
        "user.name": by,
        "accessguard.ticket.id": ticket,
        "accessguard.ticket.by": by,
        "accessguard.ticket.at": when.isoformat(),
        "accessguard.ticket.assignee": "alice",
    }


EVENTS = [
    change("opened", "T-1", at(9)),
    ledger("alice", "T-1", "customer", 42, at(9, 1)),  # while open
    change("closed", "T-1", at(10)),
    ledger("alice", "T-1", "customer", 42, at(10, 0, 3)),  # within the grace: in flight
    ledger("alice", "T-1", "customer", 42, at(10, 30)),  # LATE
    change("reopened", "T-1", at(11)),
    ledger("alice", "T-1", "customer", 42, at(11, 5)),  # reopened: fine
    change("closed", "T-1", at(12), by="sec-sam"),
    ledger("alice", "T-1", "customer", 42, at(12, 30)),  # LATE again
    ledger("bob", "T-2", "customer", 7, at(10, 30)),  # T-2 never closed
    change("closed", "T-3", at(9)),
    ledger("carol", "T-3", "product", 9, at(9, 30)),  # LATE, a product
]


@pytest.fixture(params=["file", "sink", "python"])
def source(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    monkeypatch.setenv(KEY_ENV, KEY.hex())
    events = [dict(e) for e in EVENTS]
    if request.param == "python":  # no DuckDB: the whole trail read into Python
        monkeypatch.setattr(cli_investigate, "available", lambda: False)

        def no_engine(**_: object) -> None:
            raise AssertionError("the path without DuckDB opened an engine")

        monkeypatch.setattr(cli_investigate, "open_engine", no_engine)
    if request.param in {"file", "python"}:
        trail = tmp_path / "audit.jsonl"
        JsonlSink(trail, fsync=False, key=KEY).write(events)
        return ["--audit", str(trail)]
    dsn = str(request.getfixturevalue("scenario_dsn"))
    sink = PostgresSink(dsn, key=KEY)
    sink.setup()
    sink.write(events)
    sink.close()
    return ["--dsn", dsn]


def ask(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code = main(["audit", *argv, "--format", "json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


@pytest.mark.db
class TestAfterClose:
    def test_every_read_after_its_ticket_closed(
        self, source: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Past the grace and before a reopening: three reads, each with its closing."""
        found = ask(capsys, "after-close", *source)
        assert [(r["user"], r["subject"], r["last"], r["closed_by"]) for r in found] == [
            ("carol", "9", at(9, 30).isoformat(), "dispatch"),
            ("alice", "42", at(10, 30).isoformat(), "dispatch"),
            ("alice", "42", at(12, 30).isoformat(), "sec-sam"),
        ]
        assert [r["seconds_after"] for r in found] == [1800, 1800, 1800]
        assert found[0]["scope"] == "product"

    def test_one_customer_and_no_grace(
        self, source: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--customer narrows it; --grace 0 counts the read three seconds after the closing."""
        found = ask(capsys, "after-close", *source, "--customer", "42", "--grace", "0")
        assert [r["last"] for r in found] == [
            at(10, 0, 3).isoformat(),
            at(10, 30).isoformat(),
            at(12, 30).isoformat(),
        ]
        assert ask(capsys, "after-close", *source, "--customer", "7") == []

    def test_subject_export_marks_them(
        self, source: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Everything read about customer 42, the late entries saying when the ticket closed."""
        export = ask(capsys, "subject-export", *source, "--customer", "42")
        marks = [(e["last"], e["ticket_closed"]) for e in export["entries"]]
        assert marks == [
            (at(9, 1).isoformat(), None),
            (at(10, 0, 3).isoformat(), None),
            (at(10, 30).isoformat(), at(10).isoformat()),
            (at(11, 5).isoformat(), None),
            (at(12, 30).isoformat(), at(12).isoformat()),
        ]
