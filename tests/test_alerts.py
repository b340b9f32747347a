"""Alerts: alerts.toml's rules, evaluated as the ledger flushes, into the trail and out."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from accessguard import AccessGuardError, Guard, PolicyError, scenario
from accessguard.audit.alerts import Alerter
from accessguard.audit.sinks import Event
from accessguard.audit.webhook import Webhook
from accessguard.authoring.lint import lint
from accessguard.policy.alerts import ALERTS_FILE, AlertRules, load_alerts, parse_alerts
from accessguard.testing import MemoryAuditSink
from accessguard.tickets.stores import FileTicketStore, MemoryTicketStore, Ticket

T0 = dt.datetime(2026, 11, 2, 9, tzinfo=dt.UTC).timestamp()


def rules(text: str) -> AlertRules:
    return parse_alerts(text, Path("alerts.toml"))


def ledger(user: str, when: float, **fields: Any) -> Event:
    """A ledger event as the ledger writes it (only the fields the rules read)."""
    iso = dt.datetime.fromtimestamp(when, dt.UTC).isoformat()
    return {
        "@timestamp": iso,
        "event.action": "ledger",
        "user.name": user,
        "user.roles": ["everyone", "support_agent"],
        "accessguard.first": iso,
        "accessguard.subject.kind": "customer",
        "accessguard.subject.id": fields.pop("subject", 1),
        "accessguard.ticket.id": fields.pop("ticket", f"T-{user}"),
        "accessguard.statements": fields.pop("statements", 1),
        "accessguard.rows": fields.pop("rows", 1),
        **fields,
    }


# ---------------------------------------------------------------------- the file


class TestRulesFile:
    def test_the_scenario_file_loads(self) -> None:
        """policies/alerts.toml loads with one rule of each kind."""
        found = load_alerts(scenario.policies_dir() / ALERTS_FILE)
        assert {r.kind for r in found.rules} == {
            "peer_baseline",
            "canary",
            "closed_ticket",
            "refusals",
            "ticket_churn",
        }
        assert found.webhook is None

    @pytest.mark.parametrize(
        ("text", "line", "words"),
        [
            (
                '[[rule]]\nname = "a"\nkind = "canary"\n\n[[rule]]\nname = "b"\nkind = "x"\n',
                5,
                "kind",
            ),
            ('[[rule]]\nname = "a"\nkind = "refusals"\nwindow = "soon"\n', 1, "duration"),
            ('[[rule]]\nname = "a"\nkind = "canary"\ncount = 3\n', 1, "unknown keys"),
            (
                '[[rule]]\nname = "a"\nkind = "canary"\n[[rule]]\nname = "a"\nkind = "canary"\n',
                4,
                "twice",
            ),
            ('[[rule]]\nname = "a"\nkind = "refusals"\ncount = 0\n', 1, "1 or more"),
            ('[[rule]]\nname = "a"\nkind = = "canary"\n', 3, "TOML"),
            ('[[rule]]\nname = "a"\nkind = "canary"\n[webhook]\nurl = "file:///etc"\n', 4, "http"),
        ],
        ids=["kind", "duration", "unknown-key", "duplicate", "count", "toml", "webhook-scheme"],
    )
    def test_a_malformed_file_names_file_and_line(self, text: str, line: int, words: str) -> None:
        """Each kind of mistake is a PolicyError naming alerts.toml and the rule's line."""
        with pytest.raises(PolicyError) as info:
            rules(text)
        assert info.value.path == "alerts.toml"
        assert info.value.line == line
        assert words in info.value.message

    def test_lint_reports_alerts_toml(self, tmp_path: Path) -> None:
        """accessguard lint reports a malformed alerts.toml with its file and line."""
        policies = tmp_path / "policies"
        shutil.copytree(scenario.policies_dir(), policies)
        assert not [f for f in lint(policies) if f.path.endswith(ALERTS_FILE)]
        (policies / ALERTS_FILE).write_text('[[rule]]\nname = "a"\nkind = "nope"\n')
        found = [f for f in lint(policies) if f.path.endswith(ALERTS_FILE)]
        assert [(f.code, f.line) for f in found] == [("file.invalid", 1)]

    def test_a_malformed_file_fails_the_load_and_the_reload(self, tmp_path: Path) -> None:
        """Guard.from_directory refuses it; a reload keeps the running rules and audits why."""
        policies = tmp_path / "policies"
        shutil.copytree(scenario.policies_dir(), policies)
        bad = '[[rule]]\nname = "a"\nkind = "canary"\nwatched = "yes"\n'
        sink = MemoryAuditSink()
        with Guard.from_directory(policies, audit=sink) as guard:
            before = guard.alerter.rules
            (policies / ALERTS_FILE).write_text(bad)
            assert guard.reload() is False
            assert guard.alerter.rules is before
            failed = [e for e in sink.events if e["event.action"] == "policy.reload"]
            assert f"{ALERTS_FILE}:1" in failed[-1]["message"]
        with pytest.raises(PolicyError, match=r"alerts\.toml:1"):
            Guard.from_directory(policies, audit=MemoryAuditSink())


# ---------------------------------------------------------------------- the rules


class TestRules:
    def test_peer_baseline_fires_for_the_outlier_only(self) -> None:
        """Ten peers read 2 customers an hour; the one reading 12 alerts, once per window."""
        alerter = Alerter(
            rules(
                '[[rule]]\nname = "wide"\nkind = "peer_baseline"\n'
                'window = "1 hour"\nfactor = 3.0\nminimum = 4\n'
            )
        )
        found: list[Event] = []
        for hour in range(3):
            batch = [
                ledger(f"peer{p}", T0 + hour * 3600 + 60 * p, subject=100 * p + s)
                for p in range(10)
                for s in range(2)
            ]
            batch += [
                ledger("outlier", T0 + hour * 3600 + 30 * s, subject=5000 + s) for s in range(12)
            ]
            found += alerter.evaluate(batch)
        assert {a["user.name"] for a in found} == {"outlier"}
        assert len(found) == 2  # hours 2 and 3: hour 1 had no closed windows to compare with
        alert = found[0]
        assert alert["accessguard.alert.count"] == 7  # fired as soon as it passed 3 x 2 (median)
        assert alert["accessguard.alert.baseline"] == 2
        assert alert["rule.name"] == "wide"
        assert alert["accessguard.subjects"][0] == {"kind": "customer", "id": 5000}

    def test_refusals_of_one_subject_fire_at_the_count(self) -> None:
        """Three refusals naming customer 7 within the window alert; spread out they do not."""
        alerter = Alerter(
            rules('[[rule]]\nname = "r"\nkind = "refusals"\ncount = 3\nwindow = "10 minutes"\n')
        )

        def refused(when: float, subject: int) -> Event:
            stamp = dt.datetime.fromtimestamp(when, dt.UTC).isoformat()
            return {
                "@timestamp": stamp,
                "event.action": "query",
                "accessguard.outcome": "denied",
                "user.name": "mallory",
                "accessguard.subjects": [{"kind": "customer", "id": subject}],
            }

        for i in range(3):
            alerter.observe(refused(T0 + i * 900, 8))  # 15 minutes apart: never 3 in 10
        assert alerter.evaluate([]) == []
        for i in range(3):
            alerter.observe(refused(T0 + 4000 + i, 7))
        found = alerter.evaluate([])
        assert [(a["user.name"], a["accessguard.alert.count"]) for a in found] == [("mallory", 3)]
        assert found[0]["accessguard.subjects"] == [{"kind": "customer", "id": 7}]

    def test_allowed_events_are_not_refusals(self) -> None:
        """observe keeps only refusals that name a subject."""
        alerter = Alerter(rules('[[rule]]\nname = "r"\nkind = "refusals"\ncount = 1\n'))
        alerter.observe({"accessguard.outcome": "allowed", "accessguard.subjects": [{"id": 1}]})
        alerter.observe({"accessguard.outcome": "denied"})
        assert alerter.evaluate([]) == []

    def test_ticket_churn_counts_self_assigned_short_tickets(self) -> None:
        """Five self-assigned tickets closed within minutes alert; dispatched ones never do."""
        alerter = Alerter(
            rules(
                '[[rule]]\nname = "churn"\nkind = "ticket_churn"\ncount = 5\n'
                'window = "1 day"\nopen_at_most = "20 minutes"\n'
            )
        )
        store = MemoryTicketStore()
        store.subscribe(alerter.ticket_changed)
        for n, (user, by) in enumerate([("bob", "dispatch")] * 6 + [("eve", "eve")] * 6):
            opened = Ticket(
                id=f"T-{n}", assignee=user, kind="order_issue", status="open", customer_id=n
            )
            start = T0 + n * 1200
            store.put(opened, by=by, at=start)
            closed = Ticket(
                id=f"T-{n}", assignee=user, kind="order_issue", status="closed", customer_id=n
            )
            store.put(closed, by=user, at=start + 660)
        found = alerter.evaluate([])
        assert [(a["user.name"], a["accessguard.alert.count"]) for a in found] == [("eve", 5)]
        assert found[0]["accessguard.tickets"] == [f"T-{n}" for n in range(6, 11)]

    def test_a_ticket_file_names_who_changed_it(self, tmp_path: Path) -> None:
        """A ticket file's ``changed_by`` makes a self-assigning churner visible."""
        alerter = Alerter(
            rules(
                '[[rule]]\nname = "churn"\nkind = "ticket_churn"\ncount = 5\n'
                'window = "1 day"\nopen_at_most = "20 minutes"\n'
            )
        )
        path = tmp_path / "tickets.yaml"
        path.write_text("[]\n")
        store = FileTicketStore(path)
        store.subscribe(alerter.ticket_changed)
        entries: dict[str, str] = {}
        stamp = 0

        def edit(n: int, user: str, by: str, status: str) -> None:
            nonlocal stamp
            entries[f"T-{n}"] = (
                f"- {{id: T-{n}, assignee: {user}, kind: order_issue, status: {status}, "
                f"customer_id: {n}, changed_by: {by}}}"
            )
            path.write_text("\n".join(entries.values()) + "\n")
            stamp += 1
            os.utime(path, ns=(stamp, stamp))  # a new stamp within the clock's resolution
            assert store.get(f"T-{n}") is not None

        for n, (user, by) in enumerate([("bob", "dispatch")] * 6 + [("eve", "eve")] * 6):
            edit(n, user, by, "open")
            edit(n, user, user, "closed")
        found = alerter.evaluate([])
        assert [(a["user.name"], a["accessguard.alert.count"]) for a in found] == [("eve", 5)]

    def test_reads_after_close(self) -> None:
        """A ledger entry counted after its ticket closed (past the grace) alerts once."""
        alerter = Alerter(rules('[[rule]]\nname = "late"\nkind = "closed_ticket"\ngrace = "5s"\n'))
        ticket = Ticket(id="T-1", assignee="al", kind="order_issue", status="closed", customer_id=3)
        store = MemoryTicketStore([ticket.__class__(**{**_fields(ticket), "status": "open"})])
        store.subscribe(alerter.ticket_changed)
        store.put(ticket, by="al", at=T0)
        before = alerter.evaluate([ledger("al", T0 + 4, ticket="T-1", subject=3)])
        after = alerter.evaluate(
            [ledger("al", T0 + 30, ticket="T-1", subject=3, rows=40)] * 2  # twice: one alert
        )
        assert before == []
        assert [(a["rule.name"], a["accessguard.rows"]) for a in after] == [("late", 40)]

    def test_reload_keeps_the_state_of_unchanged_rules(self) -> None:
        """A rule whose definition is unchanged keeps its counts across set_rules."""
        text = '[[rule]]\nname = "r"\nkind = "refusals"\ncount = 2\n'
        alerter = Alerter(rules(text))
        event = {
            "@timestamp": "2026-11-02T09:00:00+00:00",
            "accessguard.outcome": "denied",
            "user.name": "u",
            "accessguard.subjects": [{"kind": "customer", "id": 1}],
        }
        alerter.observe(event)
        alerter.evaluate([])
        alerter.set_rules(rules(text + '[[rule]]\nname = "c"\nkind = "canary"\n'))
        alerter.observe(event)
        assert len(alerter.evaluate([])) == 1


def _fields(ticket: Ticket) -> dict[str, Any]:
    return {f: getattr(ticket, f) for f in Ticket.__slots__}


# ---------------------------------------------------------------------- the webhook


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]]
    status = 204
    delay = 0.0

    def do_POST(self) -> None:
        time.sleep(self.delay)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append(json.loads(body))
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        return


@pytest.fixture
def hook() -> Iterator[tuple[str, type[_Hook]]]:
    """A real local HTTP server recording what is POSTed to it."""
    handler = type("Hook", (_Hook,), {"received": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", handler
    server.shutdown()
    server.server_close()


class TestWebhook:
    def test_posts_json(self, hook: tuple[str, type[_Hook]]) -> None:
        """Each alert arrives as one JSON POST; sent is counted."""
        url, handler = hook
        webhook = Webhook(url)
        webhook({"rule.name": "r", "user.name": "eve"})
        webhook.wait()
        webhook.close()
        assert handler.received == [{"rule.name": "r", "user.name": "eve"}]
        assert (webhook.sent, webhook.failed) == (1, 0)

    def test_failures_are_counted(self, hook: tuple[str, type[_Hook]]) -> None:
        """A 500 and an unreachable server count as failures, and raise nothing."""
        url, handler = hook
        handler.status = 500
        webhook = Webhook(url)
        webhook({"n": 1})
        webhook.wait()
        nowhere = Webhook("http://127.0.0.1:9/", timeout=1)
        nowhere({"n": 2})
        nowhere.wait()
        assert (webhook.sent, webhook.failed, nowhere.failed) == (0, 1, 1)

    def test_a_slow_server_never_blocks_the_caller(self, hook: tuple[str, type[_Hook]]) -> None:
        """With the server stalled, calls return at once and a full queue drops, counted."""
        url, handler = hook
        handler.delay = 0.5
        webhook = Webhook(url, queue_size=2)
        started = time.perf_counter()
        for n in range(10):
            webhook({"n": n})
        assert time.perf_counter() - started < 0.1
        webhook.wait()
        assert webhook.dropped >= 7
        assert webhook.sent + webhook.dropped == 10


# ---------------------------------------------------------------------- through the guard


def _policies(tmp_path: Path, extra: str = "") -> Path:
    policies = tmp_path / "policies"
    shutil.copytree(scenario.policies_dir(), policies)
    (policies / "limits.toml").unlink()
    text = (policies / ALERTS_FILE).read_text()
    (policies / ALERTS_FILE).write_text(text.replace("count = 20", "count = 3") + extra)
    return policies


class TestThroughTheGuard:
    @pytest.mark.db
    def test_canary_read_alerts_to_trail_callback_and_webhook(
        self,
        tmp_path: Path,
        scenario_dsn: str,
        redis_url: str,
        hook: tuple[str, type[_Hook]],
    ) -> None:
        """A canary read on real PostgreSQL alerts at the flush: trail, callback and webhook."""
        url, handler = hook
        policies = _policies(tmp_path, f'\n[webhook]\nurl = "{url}"\n')
        ticket = Ticket(
            id="T-901", assignee="alice", kind="order_issue", status="open", customer_id=150
        )
        sink, called = MemoryAuditSink(), list[Event]()
        with Guard.from_directory(
            policies,
            tickets=[ticket],
            audit=sink,
            on_alert=called.append,
            throttle_storage=redis_url,
            ledger_interval=3600,
        ) as guard:
            with guard.connect(scenario_dsn, user="alice", ticket="T-901") as conn:
                conn.execute("SELECT name FROM customers WHERE id = %s", [150]).fetchall()
            assert not [e for e in sink.events if e.get("rule.name")]  # not before the flush
            guard.ledger.flush()
            assert guard.alerter.webhook is not None
            guard.alerter.webhook.wait()
        alerts = [e for e in sink.events if e["event.action"] == "alert"]
        assert [a["rule.name"] for a in alerts] == ["canary_touch"]
        assert alerts[0]["accessguard.subjects"] == [{"kind": "customer", "id": 150}]
        assert alerts[0]["accessguard.tickets"] == ["T-901"]
        assert "Alice" not in json.dumps(alerts[0])  # no row data
        assert [c["rule.name"] for c in called] == ["canary_touch"]
        assert [h["rule.name"] for h in handler.received] == ["canary_touch"]

    @pytest.mark.db
    def test_repeated_refusals_and_reads_after_close(
        self, tmp_path: Path, scenario_dsn: str, redis_url: str
    ) -> None:
        """Refused reads naming one customer alert; rows fetched after the ticket closed alert."""
        now = [dt.datetime(2026, 11, 2, 9, tzinfo=dt.UTC)]
        store = MemoryTicketStore(scenario.tickets())
        sink = MemoryAuditSink()
        with Guard.from_directory(
            _policies(tmp_path),
            tickets=store,
            audit=sink,
            throttle_storage=redis_url,
            clock=lambda: now[0],
            ledger_interval=3600,
        ) as guard:
            with guard.connect(scenario_dsn, user="alice", ticket="T-100") as conn:
                for _ in range(3):
                    with pytest.raises(AccessGuardError):
                        conn.execute("SELECT card_token FROM payments WHERE customer_id = 42")
                cur = conn.cursor()
                cur.execute("SELECT id, status FROM orders WHERE customer_id = %s", [42])
                guard.ledger.flush()
                old = store.get("T-100")
                assert old is not None
                now[0] += dt.timedelta(seconds=1)
                store.put(Ticket(**{**_fields(old), "status": "closed"}), by="alice")
                now[0] += dt.timedelta(seconds=60)
                assert cur.fetchall()  # the rows were already on their way
            guard.ledger.flush()
        alerts = {e["rule.name"]: e for e in sink.events if e["event.action"] == "alert"}
        assert set(alerts) == {"repeated_refusals", "read_after_close"}
        assert alerts["repeated_refusals"]["accessguard.subjects"] == [
            {"kind": "customer", "id": 42}
        ]
        assert alerts["read_after_close"]["accessguard.tickets"] == ["T-100"]
        closed = [e for e in sink.events if e["event.action"] == "ticket.closed"]
        assert [(e["accessguard.ticket.id"], e["accessguard.ticket.by"]) for e in closed] == [
            ("T-100", "alice")
        ]
