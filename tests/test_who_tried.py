"""Who tried and failed: refusals name the subjects their statement bound
(``accessguard.subjects``), so who-read, who-tried and subject-export list the employees
refused while naming a customer, from every engine.

Through the real guard on the scenario (SQLite): alice reads customer 42 under T-100 and is
refused card_token twice; bob, with no ticket, is refused customer 42's e-mail; alice is
refused customer 7 (another customer: not listed for 42).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from accessguard import AccessDenied, Guard, scenario
from accessguard.audit.chain import KEY_ENV
from accessguard.audit.pgsink import PostgresSink
from accessguard.audit.sinks import read_events
from accessguard.cli.app import main

KEY = bytes(range(32))


@contextlib.contextmanager
def _shop(tmp_path: Path) -> Iterator[tuple[Guard, sqlite3.Connection]]:
    """The scenario's guard (no limits) writing ``tmp_path/audit.jsonl``, and its SQLite shop."""
    policies = tmp_path / "policies"
    shutil.copytree(scenario.policies_dir(), policies)
    (policies / "limits.toml").unlink(missing_ok=True)
    guard = Guard.from_directory(
        policies, tickets=scenario.tickets(), audit=tmp_path / "audit.jsonl"
    )
    shop = sqlite3.connect(":memory:")
    scenario.load_sqlite(shop)
    try:
        yield guard, shop
    finally:
        guard.close()
        shop.close()


@pytest.fixture
def trail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(KEY_ENV, KEY.hex())
    with _shop(tmp_path) as (guard, shop):
        alice = guard.wrap(shop, user="alice", ticket="T-100")
        assert alice.execute("SELECT name FROM customers WHERE id = 42").fetchall()
        for _ in range(2):
            with pytest.raises(AccessDenied):
                alice.execute("SELECT card_token FROM payments WHERE customer_id = 42")
        with pytest.raises(AccessDenied):
            alice.execute("SELECT email FROM customers WHERE id = 7")
        bob = guard.wrap(shop, user="bob", ticket=None)
        with pytest.raises(AccessDenied):
            bob.execute("SELECT email FROM customers WHERE id = 42")
    return tmp_path / "audit.jsonl"


def _sources(trail: Path, request: pytest.FixtureRequest) -> list[str]:
    kind = request.param
    if kind == "index":
        return ["--audit", str(trail)]
    if kind == "scan":
        return ["--audit", str(trail), "--no-index"]
    dsn = request.getfixturevalue("scenario_dsn")
    sink = PostgresSink(dsn, key=KEY)
    sink.setup()
    sink.write(list(read_events(trail)))
    sink.close()
    return ["--dsn", dsn]


@pytest.fixture(params=["index", "scan", pytest.param("sink", marks=pytest.mark.db)])
def source(trail: Path, request: pytest.FixtureRequest) -> list[str]:
    pytest.importorskip("duckdb")
    return _sources(trail, request)


def _ask(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["audit", *argv]) == 0
    return capsys.readouterr().out


def test_who_tried_lists_each_employee_ticket_and_reason(
    source: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = _ask(["who-tried", *source, "--customer", "42", "--format", "json"], capsys)
    rows = json.loads(out)
    got = sorted((r["user"], r["ticket"], r["outcome"], r["reason"], r["attempts"]) for r in rows)
    assert got == [
        ("alice", "T-100", "denied", "column.not_allowed", 2),
        ("bob", None, "denied", "ticket.required", 1),
    ]
    alice = next(r for r in rows if r["user"] == "alice")
    assert "payments.card_token" in alice["columns"]
    assert alice["first"] is not None
    assert alice["first"] <= alice["last"]


def test_who_read_shows_the_attempts_under_the_readers(
    source: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = _ask(["who-read", *source, "--customer", "42"], capsys)
    readers, _, tried = out.partition("who tried and failed")
    assert "alice" in readers
    assert "bob" not in readers  # never read it
    assert "bob" in tried
    assert "ticket.required" in tried
    assert "column.not_allowed" in tried
    # the JSON rows stay readers only (scripts ask who-tried)
    rows = json.loads(_ask(["who-read", *source, "--customer", "42", "--format", "json"], capsys))
    assert [r["user"] for r in rows] == ["alice"]


def test_subject_export_carries_the_attempts(
    source: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    doc = json.loads(
        _ask(["subject-export", *source, "--customer", "42", "--format", "json"], capsys)
    )
    assert sorted(a["user"] for a in doc["attempts"]) == ["alice", "bob"]
    page = _ask(["subject-export", *source, "--customer", "42", "--format", "html"], capsys)
    assert "Who tried and was refused" in page
    assert "ticket.required" in page


def test_another_customer_names_its_own_attempts_only(
    source: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    rows = json.loads(_ask(["who-tried", *source, "--customer", "7", "--format", "json"], capsys))
    assert [r["user"] for r in rows] == ["alice"]  # refused customer 7 under T-100
    assert (
        json.loads(_ask(["who-tried", *source, "--customer", "4242", "--format", "json"], capsys))
        == []
    )


@pytest.mark.parametrize("value", ["42", " 42", 42.0], ids=["text", "padded-text", "float"])
def test_a_refusal_naming_a_customer_through_a_loose_parameter_is_attributed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    value: object,
) -> None:
    """bob (no ticket) is refused customer 42's e-mail with the id bound as text or a float,
    which the database compares as 42: who-tried lists it (it listed only a bare integer)."""
    monkeypatch.setenv(KEY_ENV, KEY.hex())
    path = tmp_path / "audit.jsonl"
    with _shop(tmp_path) as (guard, shop):
        bob = guard.wrap(shop, user="bob", ticket=None)
        with pytest.raises(AccessDenied):
            bob.execute("SELECT email FROM customers WHERE id = ?", (value,))
    capsys.readouterr()
    code = main(
        ["audit", "who-tried", "--audit", str(path), "--customer", "42", "--format", "json"]
    )
    assert code == 0
    assert [row["user"] for row in json.loads(capsys.readouterr().out)] == ["bob"]
