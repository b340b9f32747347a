"""Break-glass elevations on the real PostgreSQL (and Redis for the shared store)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from accessguard import scenario
from accessguard.cli import app as cli
from accessguard.engine.breakglass import MAX_MINUTES, Scope
from accessguard.errors import AccessDenied, Throttled
from accessguard.guard import Guard
from accessguard.investigate.elevations import review
from accessguard.investigate.report import write_report
from accessguard.testing import MemoryAuditSink
from accessguard.tickets.elevations import RedisElevationStore
from accessguard.tickets.stores import Ticket

PHONE_42 = "SELECT phone FROM customers WHERE id = 42"
REASON = "customer 42 locked out during a live outage, INC-7"
RULES = """
# break-glass: an elevation's own rules (guard.break_glass)
p, support_agent, break_glass, customers.id, read
p, support_agent, break_glass, customers.phone, read
p, support_agent, break_glass, orders.id, read
p, support_agent, break_glass, orders.customer_id, read
p, support_agent, break_glass, orders.status, read
"""
START = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)


class Clock:
    """The guard's clock, moved by the test (no sleeping through minutes)."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path: Path = tmp_path_factory.mktemp("bg") / "policies"
    shutil.copytree(scenario.policies_dir(), path)
    (path / "limits.toml").unlink()
    with (path / "policy.csv").open("a", encoding="utf-8") as f:
        f.write(RULES)
    return path


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def guard(policies: Path, sink: MemoryAuditSink, clock: Clock) -> Iterator[Guard]:
    with Guard.from_directory(
        policies, tickets=scenario.tickets(), audit=sink, clock=clock
    ) as guard:
        yield guard


def under(sink: MemoryAuditSink, elevation: str) -> list[dict[str, Any]]:
    """The statement events written under ``elevation``."""
    return [
        e
        for e in sink.events
        if e.get("event.action") == "query" and e.get("accessguard.elevation.id") == elevation
    ]


class TestOpening:
    def test_opening_is_audited_critical_with_its_justification(
        self, guard: Guard, sink: MemoryAuditSink
    ) -> None:
        """elevation.open names who, why, how long and until when; it is critical."""
        elevation = guard.break_glass("alice", Scope(customer_id=42), 30, REASON)
        opened = [e for e in sink.events if e["event.action"] == "elevation.open"]
        assert len(opened) == 1
        event = opened[0]
        assert event["log.level"] == "critical"
        assert event["event.outcome"] == "success"
        assert event["user.name"] == "alice"
        assert event["accessguard.elevation.id"] == elevation.ticket
        assert event["accessguard.elevation.reason"] == REASON
        assert event["accessguard.elevation.minutes"] == 30
        assert event["accessguard.elevation.expires"] == "2026-12-06T12:30:00+00:00"
        assert elevation.ticket.startswith("BG-")
        assert elevation.status() == "open"

    @pytest.mark.parametrize(
        ("user", "scope", "minutes", "reason"),
        [
            pytest.param("alice", {"customer_id": 42}, 30, "", id="empty-reason"),
            pytest.param("alice", {"customer_id": 42}, 30, "   fix it   ", id="short-reason"),
            pytest.param("alice", {"customer_id": 42}, 30, "x" * 501, id="long-reason"),
            pytest.param("alice", {"customer_id": 42}, 30, REASON + "\x1b[2J", id="control"),
            pytest.param("alice", {"customer_id": 42}, 0, REASON, id="zero-minutes"),
            pytest.param("alice", {"customer_id": 42}, MAX_MINUTES + 1, REASON, id="too-long"),
            pytest.param("alice", {"customer_id": 42}, True, REASON, id="bool-minutes"),
            pytest.param("alice", {"customer_id": 42}, 2.5, REASON, id="float-minutes"),
            pytest.param("alice", {}, 30, REASON, id="no-subject"),
            pytest.param("alice", {"customer_id": "42"}, 30, REASON, id="text-subject"),
            pytest.param(
                "alice",
                {"kind": "order_issue", "customer_id": 42},
                30,
                REASON,
                id="not-emergency-kind",
            ),
            pytest.param("carol", {"customer_id": 42}, 30, REASON, id="no-rule-for-role"),
            pytest.param("alice", {"customer": 42}, 30, REASON, id="unknown-scope-field"),
        ],
    )
    def test_refused_openings_are_audited_and_open_nothing(  # noqa: PLR0917 - parametrized
        self,
        guard: Guard,
        sink: MemoryAuditSink,
        user: str,
        scope: dict[str, Any],
        minutes: Any,
        reason: str,
    ) -> None:
        """A bad justification, duration, scope or role: elevation.refused, audited, no trace."""
        with pytest.raises(AccessDenied) as refused:
            guard.break_glass(user, scope, minutes, reason)
        assert refused.value.reason == "elevation.refused"
        assert sink.reasons() == ["elevation.refused"]
        assert sink.events[0]["log.level"] == "critical"
        assert "accessguard.elevation.id" not in sink.events[0]
        if reason:  # the justification is never echoed in the error
            assert reason.strip()[:20] not in refused.value.message

    def test_an_audit_failure_opens_nothing(self, guard: Guard, sink: MemoryAuditSink) -> None:
        """The trail is written first: a sink that fails leaves no elevation to use."""
        sink.fail = True
        with pytest.raises(Exception, match="audit sink"):
            guard.break_glass("alice", {"customer_id": 42}, 30, REASON)
        sink.fail = False
        assert not any(e.get("event.action") == "elevation.open" for e in sink.events)

    def test_revoking_an_unknown_elevation_is_refused(self, guard: Guard) -> None:
        """Revoking what does not exist, or a ticket id, says so."""
        for name in ("BG-0000", "T-100"):
            with pytest.raises(AccessDenied) as refused:
                guard.revoke_break_glass(name, by="sec")
            assert refused.value.reason == "elevation.refused"


@pytest.mark.db
class TestUnderElevation:
    def test_its_own_rules_only_row_scoped_every_statement_critical(
        self, guard: Guard, sink: MemoryAuditSink, scenario_dsn: str
    ) -> None:
        """The elevation's rules allow, scoped to its customer; the rest is refused; all audited."""
        elevation = guard.break_glass("alice", {"customer_id": 42}, 30, REASON)
        refusals = {}
        with guard.connect(scenario_dsn, user="alice", ticket=elevation.ticket) as conn:
            assert conn.execute(PHONE_42).fetchall() == [("+1-555-0042",)]
            assert conn.execute(PHONE_42).fetchall() == [("+1-555-0042",)]  # the plan, again
            for name, sql in {
                "email": "SELECT email FROM customers WHERE id = 42",  # an order_issue grant
                "other": "SELECT phone FROM customers WHERE id = 43",
                "unbound": "SELECT phone FROM customers",
                "payments": "SELECT card_last4 FROM payments WHERE customer_id = 42",
                "delete": "DELETE FROM customers WHERE id = 42",
            }.items():
                with pytest.raises(AccessDenied) as refused:
                    conn.execute(sql)
                refusals[name] = str(refused.value.reason)
        assert refusals == {
            "email": "ticket.wrong_kind",
            "other": "row_scope.other_subject",
            "unbound": "row_scope.unbound",
            "payments": "ticket.wrong_kind",
            "delete": "statement.forbidden",
        }
        events = under(sink, elevation.ticket)
        assert len(events) == 7  # every statement, the two allowed ones too
        assert {e["log.level"] for e in events} == {"critical"}
        assert [e["accessguard.outcome"] for e in events[:2]] == ["allowed", "allowed"]

    def test_another_employee_cannot_use_it(
        self, guard: Guard, sink: MemoryAuditSink, scenario_dsn: str
    ) -> None:
        """bob holding alice's elevation id is refused ticket.not_assigned (critical)."""
        elevation = guard.break_glass("alice", {"customer_id": 42}, 30, REASON)
        with (
            guard.connect(scenario_dsn, user="bob", ticket=elevation.ticket) as conn,
            pytest.raises(AccessDenied) as refused,
        ):
            conn.execute(PHONE_42)
        assert refused.value.reason == "ticket.not_assigned"
        assert under(sink, elevation.ticket)[0]["log.level"] == "critical"

    def test_expires_on_time(
        self, guard: Guard, sink: MemoryAuditSink, clock: Clock, scenario_dsn: str
    ) -> None:
        """Allowed one second before the end, refused at it; the closing is audited once."""
        elevation = guard.break_glass("alice", {"customer_id": 42}, 30, REASON)
        with guard.connect(scenario_dsn, user="alice", ticket=elevation.ticket) as conn:
            assert conn.execute(PHONE_42).fetchall() == [("+1-555-0042",)]
            clock.advance(minutes=29, seconds=59)
            assert conn.execute(PHONE_42).fetchall() == [("+1-555-0042",)]
            clock.advance(seconds=1)
            for _ in range(2):
                with pytest.raises(AccessDenied) as refused:
                    conn.execute(PHONE_42)
                assert refused.value.reason == "ticket.not_open"
                assert "expired" in refused.value.message
        closed = [e for e in sink.events if e["event.action"] == "elevation.close"]
        assert [e["accessguard.elevation.status"] for e in closed] == ["expired"]
        assert elevation.status() == "expired"

    def test_revocation_stops_the_next_statement_in_another_thread(
        self, guard: Guard, sink: MemoryAuditSink, scenario_dsn: str
    ) -> None:
        """Revoked from another thread: the connection's very next statement is refused."""
        elevation = guard.break_glass("alice", {"customer_id": 42}, 30, REASON)
        with guard.connect(scenario_dsn, user="alice", ticket=elevation.ticket) as conn:
            assert conn.execute(PHONE_42).fetchall() == [("+1-555-0042",)]
            revoker = threading.Thread(target=elevation.revoke, kwargs={"by": "security-sam"})
            revoker.start()
            revoker.join()
            with pytest.raises(AccessDenied) as refused:
                conn.execute(PHONE_42)
        assert refused.value.reason == "ticket.not_open"
        assert "revoked" in refused.value.message
        closed = [e for e in sink.events if e["event.action"] == "elevation.close"]
        assert closed[0]["accessguard.elevation.revoked_by"] == "security-sam"

    def test_a_ticket_of_an_emergency_kind_is_an_elevation_too(
        self, policies: Path, scenario_dsn: str
    ) -> None:
        """A break_glass ticket from the ticket system: its statements are critical, reviewed."""
        sink = MemoryAuditSink()
        ticket = Ticket(
            id="INC-9", assignee="alice", kind="break_glass", status="open", customer_id=42
        )
        with (
            Guard.from_directory(policies, tickets=[ticket], audit=sink) as guard,
            guard.connect(scenario_dsn, user="alice", ticket="INC-9") as conn,
        ):
            assert conn.execute(PHONE_42).fetchall() == [("+1-555-0042",)]
        events = under(sink, "INC-9")
        assert [e["log.level"] for e in events] == ["critical"]
        (item,) = review(sink.events)
        assert (item.id, item.reason, item.statements, item.rows) == ("INC-9", None, 1, 1)


@pytest.mark.db
class TestStillGuarded:
    def test_still_throttled_and_the_refusal_is_critical(
        self, policies: Path, tmp_path: Path, scenario_dsn: str
    ) -> None:
        """The volume limits of the emergency kind apply; the throttle event is critical too."""
        limited = tmp_path / "limited"
        shutil.copytree(policies, limited)
        (limited / "limits.toml").write_text(
            "[roles.support_agent.ticket_kinds.break_glass]\n"
            'statements = { count = 2, per = "1 minute" }\n',
            encoding="utf-8",
        )
        sink = MemoryAuditSink()
        with Guard.from_directory(limited, tickets=scenario.tickets(), audit=sink) as guard:
            elevation = guard.break_glass("alice", {"customer_id": 42}, 30, REASON)
            with guard.connect(scenario_dsn, user="alice", ticket=elevation.ticket) as conn:
                conn.execute(PHONE_42).fetchall()
                conn.execute(PHONE_42).fetchall()
                with pytest.raises(Throttled) as throttled:
                    conn.execute(PHONE_42)
        assert throttled.value.reason == "throttle.statements"
        event = under(sink, elevation.ticket)[-1]
        assert (event["accessguard.outcome"], event["log.level"]) == ("throttled", "critical")
        (item,) = review(sink.events)
        assert (item.statements, item.refused) == (2, 1)

    def test_audit_allowed_does_not_count_a_statement_twice(
        self, policies: Path, scenario_dsn: str
    ) -> None:
        """With audit_allowed each statement writes two events; the queue counts it once."""
        sink = MemoryAuditSink()
        with Guard.from_directory(
            policies, tickets=scenario.tickets(), audit=sink, audit_allowed=True
        ) as guard:
            elevation = guard.break_glass("alice", {"customer_id": 42}, 30, REASON)
            with guard.connect(scenario_dsn, user="alice", ticket=elevation.ticket) as conn:
                conn.execute(PHONE_42).fetchall()
        assert len(under(sink, elevation.ticket)) == 2
        (item,) = review(sink.events)
        assert (item.statements, item.rows) == (1, 1)


@contextlib.contextmanager
def elevated_on(
    store: str, policies: Path, dsn: str, sink: MemoryAuditSink
) -> Iterator[tuple[Guard, Any, Any]]:
    """A guard whose elevations live in ``store``, alice elevated for customer 42, and her
    connection on it, its first read done."""
    with Guard.from_directory(
        policies, tickets=scenario.tickets(), audit=sink, elevations=store
    ) as guard:
        elevation = guard.break_glass("alice", {"customer_id": 42}, 30, REASON)
        with guard.connect(dsn, user="alice", ticket=elevation.ticket) as conn:
            assert conn.execute(PHONE_42).fetchall() == [("+1-555-0042",)]
            yield guard, elevation, conn


@pytest.mark.db
class TestSharedStore:
    def test_revoked_in_another_process_stops_the_next_statement(
        self, policies: Path, redis_url: str, scenario_dsn: str
    ) -> None:
        """Two processes share Redis: one revokes, the other's next statement is refused."""
        sink = MemoryAuditSink()
        with elevated_on(redis_url, policies, scenario_dsn, sink) as (_guard, elevation, conn):
            code = (
                "import sys\n"
                "from accessguard.guard import Guard\n"
                "g = Guard.from_directory(sys.argv[1], elevations=sys.argv[2])\n"
                "g.revoke_break_glass(sys.argv[3], by='security-sam')\n"
                "g.close()\n"
            )
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
            subprocess.run(  # noqa: S603 - this interpreter, fixed code
                [sys.executable, "-c", code, str(policies), redis_url, elevation.ticket],
                check=True,
                env=env,
                timeout=60,
            )
            with pytest.raises(AccessDenied) as refused:
                conn.execute(PHONE_42)
        assert refused.value.reason == "ticket.not_open"
        record = RedisElevationStore(redis_url).get(elevation.ticket)
        assert record is not None
        assert record.revoked_by == "security-sam"

    def test_a_deleted_revocation_does_not_reopen_it_here(
        self, policies: Path, redis_url: str, scenario_dsn: str
    ) -> None:
        """Deleting the revocation from Redis does not reopen an elevation this process saw
        revoked: its statements are refused ticket.store_unavailable (tampering), audited."""
        sink = MemoryAuditSink()
        with elevated_on(redis_url, policies, scenario_dsn, sink) as (guard, elevation, conn):
            guard.revoke_break_glass(elevation, by="security-sam")
            with pytest.raises(AccessDenied) as refused:
                conn.execute(PHONE_42)
            assert refused.value.reason == "ticket.not_open"
            with redis.Redis.from_url(redis_url) as client:
                key = f"accessguard:elevation:{elevation.ticket}:revoked"
                assert client.delete(key) == 1  # an insider with write access to Redis
            with pytest.raises(AccessDenied) as refused:
                conn.execute(PHONE_42)
        assert refused.value.reason == "ticket.store_unavailable"
        assert "ticket.store_unavailable" in sink.reasons()

    def test_an_unreachable_store_refuses(self, policies: Path, scenario_dsn: str) -> None:
        """Redis down: the statement is refused ticket.store_unavailable, never guessed open."""
        sink = MemoryAuditSink()
        store = RedisElevationStore("redis://127.0.0.1:1/0", timeout=0.5)
        with Guard.from_directory(
            policies, tickets=scenario.tickets(), audit=sink, elevations=store
        ) as guard:
            with (
                guard.connect(scenario_dsn, user="alice", ticket="BG-00") as conn,
                pytest.raises(AccessDenied) as refused,
            ):
                conn.execute(PHONE_42)
            assert refused.value.reason == "ticket.store_unavailable"
            assert sink.reasons() == ["ticket.store_unavailable"]


@pytest.mark.db
class TestReviewQueue:
    def test_every_read_is_in_the_queue_the_report_and_the_command(
        self,
        policies: Path,
        clock: Clock,
        scenario_dsn: str,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Who, why, when, how long, and what was read (columns, subjects, rows) for each one."""
        trail = tmp_path / "audit.jsonl"
        orders = "SELECT id, status FROM orders WHERE customer_id = 42"
        with Guard.from_directory(
            policies, tickets=scenario.tickets(), audit=str(trail), clock=clock
        ) as guard:
            first = guard.break_glass("alice", {"customer_id": 42}, 30, REASON)
            second = guard.break_glass("bob", {"customer_id": 43}, 15, "bob's <b>second</b> look")
            with guard.connect(scenario_dsn, user="alice", ticket=first.ticket) as conn:
                assert len(conn.execute(PHONE_42).fetchall()) == 1
                order_rows = len(conn.execute(orders).fetchall())
                with pytest.raises(AccessDenied):
                    conn.execute("SELECT email FROM customers WHERE id = 42")
            guard.revoke_break_glass(first, by="security-sam")
        assert order_rows > 1
        events = [json.loads(line) for line in trail.read_text().splitlines()]
        queue = {r.id: r for r in review(events, now=START + dt.timedelta(hours=1))}
        item = queue[first.ticket]
        assert (item.user, item.reason, item.minutes) == ("alice", REASON, 30)
        assert (item.statements, item.refused, item.rows) == (2, 1, 1 + order_rows)
        assert item.status == "revoked"
        assert item.revoked_by == "security-sam"
        assert item.opened == START
        assert item.subjects == {("customer", "42")}
        assert {"customers.phone", "orders.status"} <= item.columns
        assert "customers.email" not in item.columns  # tried and refused, not read
        assert item.refusals == {"ticket.wrong_kind": 1}
        assert queue[second.ticket].status == "expired"  # never used, past its 15 minutes
        assert queue[second.ticket].statements == 0

        assert cli.main(["audit", "elevations", "--audit", str(trail), "--format", "json"]) == 0
        listed = {e["elevation"]: e for e in json.loads(capsys.readouterr().out)}
        assert listed[first.ticket]["rows"] == 1 + order_rows
        assert listed[first.ticket]["reason"] == REASON
        assert listed[first.ticket]["subjects"] == ["customer:42"]

        page = tmp_path / "report.html"
        write_report(events, page, generated=START + dt.timedelta(hours=1))
        html = page.read_text()
        assert "Break-glass review queue" in html
        assert first.ticket in html
        assert "bob&#x27;s &lt;b&gt;second&lt;/b&gt; look" in html
        assert "<b>second</b>" not in html


class TestCommand:
    def test_a_broken_trail_fails_the_command(
        self, policies: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The trail is verified first: an edited justification fails it (exit 1), said so."""
        trail = tmp_path / "audit.jsonl"
        with Guard.from_directory(policies, tickets=scenario.tickets(), audit=str(trail)) as guard:
            elevation = guard.break_glass("alice", {"customer_id": 42}, 5, REASON)
        assert cli.main(["audit", "elevations", "--audit", str(trail)]) == 0
        out = capsys.readouterr().out
        assert f"{elevation.ticket}  alice  break_glass  open" in out
        assert REASON in out
        trail.write_text(trail.read_text().replace("INC-7", "INC-8"), encoding="utf-8")
        assert cli.main(["audit", "elevations", "--audit", str(trail), "--format", "json"]) == 1
        captured = capsys.readouterr()
        assert "chain broken" in captured.err
        assert [e["reason"] for e in json.loads(captured.out)] == [REASON.replace("7", "8")]

    def test_a_trail_without_elevations_lists_none(
        self, policies: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """No elevation in the trail: the text says so, the JSON is an empty list."""
        trail = tmp_path / "audit.jsonl"
        with Guard.from_directory(policies, tickets=scenario.tickets(), audit=str(trail)) as guard:
            assert not guard.check(PHONE_42, user="alice", ticket="T-101").allowed
        assert cli.main(["audit", "elevations", "--audit", str(trail)]) == 0
        assert capsys.readouterr().out.strip() == "no elevations"
        assert cli.main(["audit", "elevations", "--audit", str(trail), "--format", "json"]) == 0
        assert json.loads(capsys.readouterr().out) == []
