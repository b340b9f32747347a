"""who-read, what-read and the report's summary, from events built here and from the real guard."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest

from accessguard import AccessDenied, Guard, scenario
from accessguard.audit.chain import KEY_ENV
from accessguard.audit.pgsink import PostgresSink
from accessguard.audit.sinks import JsonlSink, read_events
from accessguard.cli.app import main
from accessguard.investigate.report import write_report
from accessguard.investigate.summary import summarize
from accessguard.investigate.sums import (
    cutoff,
    events_from_file,
    parse_since,
    render_table,
    verified_events,
    what_read,
    who_read,
)

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
AGENT = ["everyone", "support_agent"]
SPECIALIST = ["account_specialist", "everyone"]
MALLORY_CUSTOMERS = list(range(100, 120))

Event = dict[str, Any]


def ledger_event(
    *,
    user: str,
    roles: list[str],
    ticket: str | None,
    kind: str | None,
    subject: int | str,
    statements: int,
    rows: int,
    columns: list[str],
    at: dt.datetime,
    scope: str = "customer",
    watch: object = None,
) -> Event:
    """A ledger entry shaped like ``Ledger._event`` writes it."""
    tables = sorted({c.split(".")[0] for c in columns})
    event: Event = {
        "@timestamp": at.isoformat(),
        "event.kind": "event",
        "event.category": ["database"],
        "event.type": ["access", "allowed"],
        "event.action": "ledger",
        "event.outcome": "success",
        "accessguard.outcome": "allowed",
        "user.name": user,
        "user.roles": roles,
        "accessguard.ticket.id": ticket,
        "accessguard.ticket.kind": kind,
        "accessguard.subject.kind": scope,
        "accessguard.subject.id": subject,
        "accessguard.tables": tables,
        "accessguard.columns": columns,
        "accessguard.fingerprint": "f" * 16,
        "accessguard.statements": statements,
        "accessguard.rows": rows,
        "accessguard.first": (at - dt.timedelta(seconds=1)).isoformat(),
        "accessguard.last": at.isoformat(),
        "accessguard.policy.version": "test",
    }
    if watch is not None:
        event["accessguard.watch"] = watch
    return event


def refusal_event(
    *,
    user: str,
    roles: list[str],
    ticket: str | None,
    reason: str,
    at: dt.datetime,
    outcome: str = "denied",
) -> Event:
    """A refusal or throttle shaped like ``Guard._audit`` writes it."""
    event: Event = {
        "@timestamp": at.isoformat(),
        "event.kind": "event",
        "event.category": ["database", "iam"],
        "event.type": ["denied"],
        "event.action": "query",
        "event.outcome": "failure",
        "event.reason": reason,
        "message": "Refused.",
        "accessguard.outcome": outcome,
        "user.name": user,
        "user.roles": roles,
        "accessguard.ticket.id": ticket,
        "accessguard.ticket.kind": None,
        "db.query.text": "SELECT email FROM customers WHERE id = ?",
        "accessguard.tables": ["customers"],
        "accessguard.columns": ["customers.email"],
    }
    if outcome == "throttled":
        event["accessguard.limit"] = "distinct_customers: 20 per 1 hour"
    return event


def workload() -> list[Event]:
    """alice and erin on customer 42, mallory across 20 customers, carol on product 9, refusals."""
    orders = ["orders.customer_id", "orders.id", "orders.status"]
    names = ["customers.email", "customers.id", "customers.name"]
    flags = ["account_flags.banned", "account_flags.customer_id"]
    alice = [
        ledger_event(
            user="alice",
            roles=AGENT,
            ticket="T-100",
            kind="order_issue",
            subject=42,
            statements=statements,
            rows=rows,
            columns=columns,
            at=T0 + _m(minute),
        )
        for statements, rows, columns, minute in (
            (2, 3, orders, 0),
            (1, 3, names, 5),
            (2, 1, orders, 10),
        )
    ]
    events = [
        *alice,
        ledger_event(
            user="erin",
            roles=SPECIALIST,
            ticket="T-300",
            kind="account_recovery",
            subject=42,
            statements=2,
            rows=2,
            columns=flags,
            at=T0 + _m(180),
        ),
        ledger_event(
            user="carol",
            roles=["everyone", "trust_safety"],
            ticket="T-200",
            kind="review_abuse",
            subject=9,
            scope="product",
            statements=1,
            rows=4,
            columns=["reviews.body", "reviews.product_id"],
            at=T0 + _m(20),
        ),
    ]
    for i, customer in enumerate(MALLORY_CUSTOMERS):
        events.append(
            ledger_event(
                user="mallory",
                roles=AGENT,
                ticket=f"T-{400 + i}",
                kind="order_issue",
                subject=customer,
                statements=1,
                rows=3,
                columns=orders,
                at=T0 + _m(60 + 2 * i),
            )
        )
    events += [
        refusal_event(
            user="alice", roles=AGENT, ticket="T-100", reason="row_scope.other_subject", at=T0
        ),
        refusal_event(user="bob", roles=AGENT, ticket=None, reason="ticket.required", at=T0),
        refusal_event(
            user="mallory",
            roles=AGENT,
            ticket="T-400",
            reason="column.not_allowed",
            at=T0 + _m(61),
        ),
        refusal_event(
            user="mallory",
            roles=AGENT,
            ticket="T-420",
            reason="throttle.distinct_customers",
            outcome="throttled",
            at=T0 + _m(100),
        ),
    ]
    return events


def _m(minutes: int) -> dt.timedelta:
    return dt.timedelta(minutes=minutes)


class TestParseSince:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("30d", dt.timedelta(days=30)),
            ("1h", dt.timedelta(hours=1)),
            ("15m", dt.timedelta(minutes=15)),
            ("90s", dt.timedelta(seconds=90)),
            ("2w", dt.timedelta(weeks=2)),
            (" 7d ", dt.timedelta(days=7)),
            ("1 hour", dt.timedelta(hours=1)),
            ("2 weeks", dt.timedelta(weeks=2)),
            ("90 seconds", dt.timedelta(seconds=90)),
        ],
    )
    def test_units(self, text: str, expected: dt.timedelta) -> None:
        """Durations with unit letters or words (limits.toml's syntax) parse to timedeltas."""
        assert parse_since(text) == expected

    @pytest.mark.parametrize(
        "text", ["", "30", "d", "1.5h", "-1d", "0d", "3y", "1 fortnight", "1h30m", "99999999999w"]
    )
    def test_rejects(self, text: str) -> None:
        """Anything but a positive whole number and one unit is a ValueError naming the forms."""
        with pytest.raises(ValueError, match="invalid duration") as info:
            parse_since(text)
        assert "30d" in str(info.value)

    def test_cutoff(self) -> None:
        """cutoff() subtracts the duration from the given now; no text means no cutoff."""
        assert cutoff("1h", now=T0) == T0 - dt.timedelta(hours=1)
        assert cutoff(None, now=T0) is None
        assert cutoff("200000w", now=T0) == dt.datetime.min.replace(tzinfo=dt.UTC)


class TestWhoRead:
    def test_names_exactly_alice_and_erin(self) -> None:
        """Customer 42 was read by alice (T-100) and erin (T-300), with exact sums."""
        readers = who_read(workload(), customer=42, since=None)
        assert [(r.user, r.ticket) for r in readers] == [("alice", "T-100"), ("erin", "T-300")]
        alice, erin = readers
        assert (alice.statements, alice.rows) == (5, 7)
        assert (erin.statements, erin.rows) == (2, 2)
        assert alice.columns == (
            "customers.email",
            "customers.id",
            "customers.name",
            "orders.customer_id",
            "orders.id",
            "orders.status",
        )
        assert alice.first == T0 - dt.timedelta(seconds=1)
        assert alice.last == T0 + _m(10)
        assert alice.ticket_kind == "order_issue"
        assert alice.roles == ("everyone", "support_agent")

    def test_as_dict_has_the_contract_keys(self) -> None:
        """The JSON form carries user, ticket, statements, rows, columns, first and last."""
        row = who_read(workload(), customer=42, since=None)[0].as_dict()
        assert {"user", "ticket", "statements", "rows", "columns", "first", "last"} <= set(row)
        assert row["first"] == (T0 - dt.timedelta(seconds=1)).isoformat()
        assert json.loads(json.dumps(row)) == row

    def test_since_filters_on_last(self) -> None:
        """Only entries whose last statement is at or after since count."""
        readers = who_read(workload(), customer=42, since=T0 + _m(60))
        assert [r.user for r in readers] == ["erin"]
        partial = who_read(workload(), customer=42, since=T0 + _m(5))
        assert (partial[0].statements, partial[0].rows) == (3, 4)

    def test_scope_separates_products_from_customers(self) -> None:
        """Product 9 is found with scope='product', never as customer 9."""
        assert who_read(workload(), customer=9, since=None) == []
        (carol,) = who_read(workload(), customer=9, since=None, scope="product")
        assert (carol.user, carol.rows) == ("carol", 4)

    def test_pseudonymised_subject(self) -> None:
        """A keyed-hash pseudonym is looked up by its text."""
        event = ledger_event(
            user="alice",
            roles=AGENT,
            ticket="T-100",
            kind="order_issue",
            subject="ab" * 32,
            statements=1,
            rows=1,
            columns=["customers.name"],
            at=T0,
        )
        assert [r.user for r in who_read([event], customer="ab" * 32, since=None)] == ["alice"]

    def test_ids_as_text(self) -> None:
        """A sink that returns ids as digits is read like one that returns integers."""
        events = [
            {**e, "accessguard.subject.id": str(e["accessguard.subject.id"])}
            if "accessguard.subject.id" in e
            else e
            for e in workload()
        ]
        assert [r.user for r in who_read(events, customer=42, since=None)] == ["alice", "erin"]
        touches = what_read(events, user="mallory", since=None)
        assert [t.customer for t in touches] == MALLORY_CUSTOMERS

    def test_refusals_are_not_reads(self) -> None:
        """Customer 7, only ever refused, has no readers."""
        assert who_read(workload(), customer=7, since=None) == []


class TestWhatRead:
    def test_mallory_touched_twenty_customers(self) -> None:
        """mallory's rows list her twenty customers, one ticket each, in order."""
        touches = what_read(workload(), user="mallory", since=None)
        assert [t.customer for t in touches] == MALLORY_CUSTOMERS
        assert [t.ticket for t in touches] == [f"T-{400 + i}" for i in range(20)]
        assert all((t.statements, t.rows, t.scope) == (1, 3, "customer") for t in touches)
        keys = set(touches[0].as_dict())
        assert {"customer", "ticket", "statements", "rows", "columns"} <= keys

    def test_since(self) -> None:
        """since keeps the customers read from then on."""
        touches = what_read(workload(), user="mallory", since=T0 + _m(60 + 2 * 15))
        assert [t.customer for t in touches] == MALLORY_CUSTOMERS[15:]

    def test_unknown_user(self) -> None:
        """An employee with no reads gets an empty list."""
        assert what_read(workload(), user="bob", since=None) == []


class TestRenderTable:
    def test_aligned_columns(self) -> None:
        """Every line of the table starts its columns at the same offsets."""
        text = render_table(who_read(workload(), customer=42, since=None))
        head, rule, *lines = text.splitlines()
        assert head.split()[:4] == ["USER", "ROLES", "TICKET", "KIND"]
        assert set(rule) <= {"-", " "}
        assert len(lines) == 2
        assert lines[0].startswith("alice ")
        assert head.index("TICKET") == lines[0].index("T-100") == lines[1].index("T-300")

    def test_what_read_table(self) -> None:
        """A what-read table names the scope and id of each subject."""
        text = render_table(what_read(workload(), user="mallory", since=None))
        assert text.splitlines()[0].split()[:3] == ["SCOPE", "ID", "TICKET"]
        assert len(text.splitlines()) == 22

    def test_empty(self) -> None:
        """No rows is said in words."""
        assert render_table([]) == "(no matching accesses)"


class TestSummarize:
    def test_mallory_is_the_outlier(self) -> None:
        """mallory (20 customers) is far above her peers; alice (1) is not."""
        summary = summarize(workload(), since=None)
        assert summary.outliers == ("mallory",)
        by_user = {e.user: e for e in summary.employees}
        assert by_user["mallory"].customers == 20
        assert by_user["mallory"].tickets == 20
        assert "20 distinct customers" in by_user["mallory"].why
        assert not by_user["alice"].outlier
        assert by_user["alice"].customers == 1
        assert by_user["carol"].products == 1

    def test_totals_and_refusals(self) -> None:
        """Totals add up exactly; refusals and throttles are counted by reason and employee."""
        summary = summarize(workload(), since=None)
        assert (summary.statements, summary.rows) == (5 + 2 + 1 + 20, 7 + 2 + 4 + 60)
        assert summary.customers == 21
        assert summary.refusals == 3
        assert dict(summary.refusals_by_employee) == {"alice": 1, "bob": 1, "mallory": 1}
        assert dict(summary.refusals_by_reason)["ticket.required"] == 1
        assert summary.throttles == 1
        assert summary.throttles_by_reason == (("throttle.distinct_customers", 1),)
        assert summary.throttle_events[0].user == "mallory"

    def test_role_medians(self) -> None:
        """Roles group employees other than 'everyone'; medians include every member."""
        roles = {r.role: r for r in summarize(workload(), since=None).roles}
        assert roles["support_agent"].employees == 3  # alice, bob (refused only), mallory
        assert roles["support_agent"].median_customers == 1.0

    def test_top_customers(self) -> None:
        """Customer 42, read by two employees, tops the list."""
        top = summarize(workload(), since=None).top_customers[0]
        assert (top.customer, top.readers, top.statements, top.rows) == (
            42,
            ("alice", "erin"),
            7,
            9,
        )

    def test_timeline_buckets(self) -> None:
        """Hourly buckets hold each employee's distinct customers and rows."""
        summary = summarize(workload(), since=None)
        assert summary.bucket == dt.timedelta(hours=1)
        assert summary.buckets[0] == T0  # entries count in the hour of their last statement
        mallory = [b for b in summary.timeline if b.user == "mallory"]
        assert sum(b.customers for b in mallory) == 20
        assert sum(b.rows for b in mallory) == 60
        assert all(b.start in summary.buckets for b in summary.timeline)

    def test_since(self) -> None:
        """since drops earlier events from every count."""
        summary = summarize(workload(), since=T0 + _m(120))
        assert [e.user for e in summary.employees] == ["erin"]
        assert summary.refusals == 0

    def test_watch_touches(self) -> None:
        """Events marked accessguard.watch are listed as watch-list touches."""
        canary = ledger_event(
            user="mallory",
            roles=AGENT,
            ticket="T-400",
            kind="order_issue",
            subject=999,
            statements=1,
            rows=1,
            columns=["customers.email"],
            at=T0,
            watch="canary",
        )
        summary = summarize([*workload(), canary], since=None)
        assert [(w.user, w.detail) for w in summary.watch] == [("mallory", "canary: customer 999")]
        assert {e.user: e.watch for e in summary.employees}["mallory"] == 1
        assert summarize(workload(), since=None).watch == ()

    def test_no_events(self) -> None:
        """An empty trail summarises to zeros, no outliers."""
        summary = summarize([], since=None)
        assert (summary.employees, summary.outliers, summary.buckets) == ((), (), ())


class TestRealGuard:
    """The scripted workload through the real guard on SQLite, read back from the audit file."""

    def test_counts_are_exact(self, tmp_path: Path) -> None:
        """who-read and what-read report exactly the statements executed and the rows fetched."""
        path = run_workload(tmp_path)
        events = events_from_file(path)
        readers = who_read(events, customer=42, since=None)
        assert [(r.user, r.ticket) for r in readers] == [("alice", "T-100"), ("erin", "T-300")]
        assert [(r.statements, r.rows) for r in readers] == [(5, 11), (2, 2)]
        assert "customers.email" in readers[0].columns
        assert readers[1].columns == ("account_flags.banned", "account_flags.customer_id")
        touches = what_read(list(read_events(path)), user="mallory", since=None)
        assert [t.customer for t in touches] == MALLORY_CUSTOMERS
        expected = _mallory_rows()
        assert [(t.statements, t.rows) for t in touches] == [(1, expected[c]) for c in range(20)]
        summary = summarize(events, since=None)
        assert summary.outliers == ("mallory",)
        assert dict(summary.refusals_by_employee) == {"alice": 1, "mallory": 1}


def _mallory_rows() -> list[int]:
    """Rows in the seed's orders for customers 100..119."""
    shop = sqlite3.connect(":memory:")
    scenario.load_sqlite(shop)
    counts = [
        shop.execute("SELECT count(*) FROM orders WHERE customer_id = ?", (c,)).fetchone()[0]
        for c in MALLORY_CUSTOMERS
    ]
    shop.close()
    return [int(n) for n in counts]


def run_workload(tmp_path: Path) -> Path:
    """Run alice, erin, mallory and two refusals through a guard without limits; return the file."""
    policies = tmp_path / "policies"
    shutil.copytree(scenario.policies_dir(), policies)
    (policies / "limits.toml").unlink(missing_ok=True)
    path = tmp_path / "audit.jsonl"
    guard = Guard.from_directory(policies, tickets=scenario.tickets(), audit=path)
    shop = sqlite3.connect(":memory:")
    scenario.load_sqlite(shop)
    try:
        alice = guard.wrap(shop, user="alice", ticket="T-100")
        fetched = 0
        for _ in range(3):  # 3 statements, 3 orders each
            fetched += len(
                alice.execute("SELECT id, status FROM orders WHERE customer_id = 42").fetchall()
            )
        fetched += len(
            alice.execute("SELECT name, email FROM customers WHERE id = ?", (42,)).fetchall()
        )
        cur = alice.execute("SELECT id FROM orders WHERE customer_id = 42")
        fetched += 0 if cur.fetchone() is None else 1  # one row handed over, two left unread
        assert fetched == 11
        with pytest.raises(AccessDenied):
            alice.execute("SELECT email FROM customers WHERE id = 7")
        erin = guard.wrap(shop, user="erin", ticket="T-300")
        for _ in range(2):
            assert (
                len(
                    erin.execute(
                        "SELECT banned FROM account_flags WHERE customer_id = 42"
                    ).fetchall()
                )
                == 1
            )
        for i, customer in enumerate(MALLORY_CUSTOMERS):
            mallory = guard.wrap(shop, user="mallory", ticket=f"T-{400 + i}")
            mallory.execute(
                "SELECT id, status FROM orders WHERE customer_id = ?", (customer,)
            ).fetchall()
        with pytest.raises(AccessDenied):
            mallory.execute("SELECT card_token FROM payments WHERE customer_id = 119")
    finally:
        guard.close()
        shop.close()
    return path


@pytest.mark.db
class TestScriptedWorkloadOnPostgres:
    def test_who_read_what_read_and_report(self, scenario_dsn: str, tmp_path: Path) -> None:
        """On real PostgreSQL: alice and erin read 42, mallory twenty customers, a few refusals."""
        policies = tmp_path / "policies"
        shutil.copytree(scenario.policies_dir(), policies)
        audit = tmp_path / "audit.jsonl"
        guard = Guard.from_directory(policies, tickets=scenario.tickets(), audit=audit)
        with guard.connect(scenario_dsn, user="alice", ticket="T-100") as alice:
            for _ in range(3):
                alice.execute("SELECT name, email FROM customers WHERE id = %s", [42]).fetchall()
            alice.execute("SELECT id, status FROM orders WHERE customer_id = 42").fetchall()
            with pytest.raises(AccessDenied):
                alice.execute("SELECT email FROM customers")
        with guard.connect(scenario_dsn, user="erin", ticket="T-300") as erin:
            erin.execute("SELECT banned FROM account_flags WHERE customer_id = 42").fetchall()
        with (
            guard.connect(scenario_dsn, user="mallory", ticket=None) as mallory,
            pytest.raises(AccessDenied),
        ):
            mallory.execute("SELECT card_token FROM payments WHERE customer_id = 100")
        for i in range(20):
            with guard.connect(scenario_dsn, user="mallory", ticket=f"T-4{i:02d}") as conn:
                conn.execute(
                    "SELECT name, email FROM customers WHERE id = %s", [100 + i]
                ).fetchall()
        guard.close()
        events = events_from_file(audit)
        readers = who_read(events, customer=42, since=None)
        assert [(r.user, r.ticket, r.statements, r.rows) for r in readers] == [
            ("alice", "T-100", 4, 6),
            ("erin", "T-300", 1, 1),
        ]
        touched = what_read(events, user="mallory", since=None)
        assert sorted(t.customer for t in touched) == list(range(100, 120))
        assert all(t.statements == 1 and t.rows == 1 for t in touched)
        summary = summarize(events, since=None)
        assert [e.user for e in summary.employees if e.outlier] == ["mallory"]
        report = tmp_path / "report.html"
        write_report(events, report)
        assert "far above peers" in report.read_text()


KEY = bytes(range(32))


def keyed_trail(path: Path, events: list[Event]) -> Path:
    """Events written through a keyed JSON-lines sink (chained, with a checkpoint)."""
    JsonlSink(path, key=KEY, fsync=False).write([dict(e) for e in events])
    return path


def _who_read(source: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["audit", "who-read", *source, "--customer", "42", "--format", "json"])
    out = capsys.readouterr()
    return code, out.out, out.err


class TestVerifiedReading:
    @pytest.fixture
    def trail(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
        monkeypatch.setenv(KEY_ENV, KEY.hex())
        return keyed_trail(tmp_path / "audit.jsonl", workload())

    def test_intact_trail_answers_with_exit_zero(
        self, trail: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """who-read on an intact keyed trail answers and exits 0, with nothing on stderr."""
        code, out, err = _who_read(["--audit", str(trail)], capsys)
        assert code == 0
        assert err == ""
        assert [r["user"] for r in json.loads(out)] == ["alice", "erin"]

    @pytest.mark.parametrize("damage", ["corrupt-line", "edited-line", "cut-tail"])
    def test_damaged_trail_is_reported_with_exit_one(
        self, trail: Path, damage: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A corrupt, edited or cut trail is named on stderr and the command exits 1."""
        lines = trail.read_text().splitlines(keepends=True)
        if damage == "corrupt-line":
            lines.insert(1, "{not json\n")
        elif damage == "edited-line":
            lines[1] = lines[1].replace('"alice"', '"bob"')
        else:
            lines = lines[:-1]
        trail.write_text("".join(lines))
        code, out, err = _who_read(["--audit", str(trail)], capsys)
        assert code == 1
        assert "chain broken" in err
        if damage != "cut-tail":
            assert f"{trail}:2:" in err
        json.loads(out)  # the answer is still printed, flagged by the exit code

    def test_report_on_a_broken_trail_exits_one(
        self, trail: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """audit report writes its file but exits 1 when the trail does not verify."""
        with trail.open("a") as fh:
            fh.write("garbage\n")
        out = tmp_path / "report.html"
        assert main(["audit", "report", "--audit", str(trail), "--out", str(out)]) == 1
        assert out.exists()
        assert "chain broken" in capsys.readouterr().err

    def test_verified_events_keeps_reading_past_a_break(self, trail: Path) -> None:
        """verified_events returns every readable event and the verdict naming the break."""
        lines = trail.read_text().splitlines(keepends=True)
        lines.insert(2, "{not json\n")
        trail.write_text("".join(lines))
        events, verdict = verified_events(trail, key=KEY)
        assert not verdict.ok
        assert verdict.broken_line == 3
        assert len(events) == len(lines) - 1

    @pytest.mark.db
    def test_tampered_postgres_trail_exits_one(
        self, scenario_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """who-read --dsn verifies as it reads: an updated user_name column fails the command."""
        monkeypatch.setenv(KEY_ENV, KEY.hex())
        sink = PostgresSink(scenario_dsn, key=KEY)
        sink.setup()
        sink.write([dict(e) for e in workload()])
        sink.close()
        assert _who_read(["--dsn", scenario_dsn], capsys)[0] == 0
        with psycopg.connect(scenario_dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE accessguard.events SET user_name = 'bob' WHERE user_name = 'alice'"
            )
        code, _out, err = _who_read(["--dsn", scenario_dsn], capsys)
        assert code == 1
        assert "user_name column differs" in err
