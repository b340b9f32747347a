"""accessguard learn: a least-privilege proposal from a scripted workload run through the guard."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from accessguard import scenario
from accessguard.audit.pgsink import PostgresSink
from accessguard.audit.pgtables import read_events as read_pg
from accessguard.audit.sinks import read_events
from accessguard.authoring.learn import Period
from accessguard.authoring.learn_report import Learned, learn
from accessguard.cli.app import main
from accessguard.errors import AccessGuardError
from accessguard.guard import Guard, Session
from accessguard.investigate.replay import NEWLY_DENIED, replay
from accessguard.policy.rules import load_policy

MONTH = dt.timedelta(days=30)
PLANTED = "p, trust_safety, review_abuse, reviews.customer_id, read"

#: (employee, ticket, statement): what the support desk did in the period
WORKLOAD: list[tuple[str, str | None, str]] = [
    ("alice", "T-100", "SELECT name, email FROM customers WHERE id = 42"),
    ("alice", "T-100", "SELECT phone FROM customers WHERE id = 42"),
    ("alice", "T-100", "SELECT id, status, total_cents FROM orders WHERE customer_id = 42"),
    ("alice", "T-100", "UPDATE orders SET status = 'refunded' WHERE customer_id = 42 AND id = 1"),
    ("alice", "T-100", "SELECT amount_cents, card_last4 FROM payments WHERE customer_id = 42"),
    ("mallory", "T-400", "SELECT name FROM customers WHERE id = 100"),
    ("mallory", "T-400", "SELECT id, status FROM orders WHERE customer_id = 100"),
    ("carol", "T-200", "SELECT id, rating, body, hidden FROM reviews WHERE product_id = 9"),
    ("carol", "T-200", "UPDATE reviews SET hidden = true WHERE product_id = 9 AND id = 3"),
    ("erin", "T-300", "SELECT banned, reason FROM account_flags WHERE customer_id = 42"),
    ("erin", "T-300", "UPDATE account_flags SET banned = false WHERE customer_id = 42"),
    ("erin", "T-300", "UPDATE account_flags SET reason = 'appeal' WHERE customer_id = 42"),
    ("erin", "T-300", "SELECT name FROM customers WHERE id = 42"),
    ("dave", None, "SELECT product_id, day, units FROM sales_metrics"),
    ("dave", None, "SELECT title FROM products"),
    ("bob", None, "SELECT phone FROM customers WHERE id = 42"),  # refused: no ticket
]

SA, TS, AS = "support_agent", "trust_safety", "account_specialist"
#: (role, ticket kind, table, column, action): exactly what WORKLOAD needs
NEEDED = {
    *((SA, "order_issue", "public.customers", c, "read") for c in ("id", "name", "email", "phone")),
    *(
        (SA, "order_issue", "public.orders", c, "read")
        for c in ("id", "customer_id", "status", "total_cents")
    ),
    (SA, "order_issue", "public.orders", "status", "update"),
    *(
        (SA, "order_issue", "public.payments", c, "read")
        for c in ("customer_id", "amount_cents", "card_last4")
    ),
    *(
        (TS, "review_abuse", "public.reviews", c, "read")
        for c in ("id", "product_id", "rating", "body", "hidden")
    ),
    (TS, "review_abuse", "public.reviews", "hidden", "update"),
    *(
        (AS, "account_recovery", "public.account_flags", c, "read")
        for c in ("customer_id", "banned", "reason")
    ),
    *((AS, "account_recovery", "public.account_flags", c, "update") for c in ("banned", "reason")),
    *((AS, "account_recovery", "public.customers", c, "read") for c in ("id", "name")),
    *(("analyst", "-", "public.sales_metrics", c, "read") for c in ("product_id", "day", "units")),
    ("everyone", "-", "public.products", "title", "read"),
}


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """The scenario's policies (no volume limits) with one planted grant nobody uses."""
    target = tmp_path / "policies"
    shutil.copytree(scenario.policies_dir(), target)
    (target / "limits.toml").unlink()
    with (target / "policy.csv").open("a", encoding="utf-8") as fh:
        fh.write(PLANTED + "\n")
    return target


def audited(policies: Path, audit: Path, *, audit_allowed: bool) -> None:
    """Run WORKLOAD through a guard that writes its audit (and ledger) to ``audit``."""
    with Guard.from_directory(
        policies, tickets=scenario.tickets(), audit=audit, audit_allowed=audit_allowed
    ) as guard:
        for user, ticket, sql in WORKLOAD:
            try:
                guard.authorize(sql, None, Session(user=user, ticket=ticket), dialect="postgres")
            except AccessGuardError:
                assert user == "bob"


def learned(policies: Path, tmp_path: Path, *, audit_allowed: bool = True) -> Learned:
    audit = tmp_path / "audit.jsonl"
    audited(policies, audit, audit_allowed=audit_allowed)
    now = dt.datetime.now(dt.UTC)  # after the workload: the period holds all of it
    return learn(read_events(audit), policies, period=Period(start=now - MONTH), now=now)


def rules_of(directory: Path) -> set[tuple[str, str, str, str, str]]:
    return {(r.role, r.kind, r.table, r.column, r.action) for r in load_policy(directory).rules}


def applied(policies: Path, result: Learned, tmp_path: Path) -> Path:
    """A copy of the policy directory with the proposal written in."""
    target = tmp_path / "applied"
    shutil.copytree(policies, target)
    (target / "policy.csv").write_text(result.proposal.proposed, encoding="utf-8")
    return target


class TestProposal:
    def test_proposes_exactly_the_rules_the_workload_used(
        self, policies: Path, tmp_path: Path
    ) -> None:
        """With allowed statements audited, the proposed policy grants exactly what was used."""
        result = learned(policies, tmp_path)
        assert rules_of(applied(policies, result, tmp_path)) == NEEDED
        assert rules_of(policies) > NEEDED

    def test_flags_the_planted_unused_grant(self, policies: Path, tmp_path: Path) -> None:
        """A grant never used is removed, its comment saying for how long it went unused."""
        diff = learned(policies, tmp_path).proposal.diff()
        assert f"\n-{PLANTED}\n" in diff
        assert f"+# learn: removed {PLANTED!r}: unused for 30 days (the whole period)\n" in diff
        assert "-p, support_agent, order_issue, customers.address, read\n" in diff

    def test_a_partly_used_wildcard_becomes_column_lines(
        self, policies: Path, tmp_path: Path
    ) -> None:
        """orders.* becomes the used columns' lines; a fully used account_flags.* stays."""
        result = learned(policies, tmp_path)
        diff = result.proposal.diff()
        assert "-p, support_agent, order_issue, orders.*, read\n" in diff
        assert "+p, support_agent, order_issue, orders.total_cents, read\n" in diff
        assert "unused for 30 days: orders.created_at" in diff
        assert "p, support_agent, order_issue, orders.created_at" not in diff
        assert "p, account_specialist, account_recovery, account_flags.*, read\n" in (
            result.proposal.proposed
        )
        assert "account_flags" not in diff

    def test_a_grant_read_by_few_members_is_flagged(self, policies: Path, tmp_path: Path) -> None:
        """A column only alice read, of the two agents who worked order_issue, is flagged, kept."""
        diff = learned(policies, tmp_path).proposal.diff()
        flag = "+# learn: read by 1 of 2 support_agents who worked order_issue tickets (alice)\n"
        assert flag + " p, support_agent, order_issue, customers.phone, read\n" in diff
        assert flag + " p, support_agent, order_issue, customers.name, read\n" not in diff

    def test_events_outside_the_period_are_not_evidence(
        self, policies: Path, tmp_path: Path
    ) -> None:
        """Over a later period every scoped grant is unused; unscoped ones, unobserved, stay."""
        audit = tmp_path / "audit.jsonl"
        audited(policies, audit, audit_allowed=True)
        now = dt.datetime.now(dt.UTC)
        later = Period(start=now + dt.timedelta(days=1), end=now + dt.timedelta(days=8))
        result = learn(read_events(audit), policies, period=later, now=now)
        assert result.usage.statements == 0
        assert {r[2] for r in rules_of(applied(policies, result, tmp_path))} == {
            "public.products",
            "public.sales_metrics",
        }
        assert "unused for 7 days" in result.proposal.diff()


class TestReplay:
    def test_the_proposal_refuses_nothing_the_workload_needed(
        self, policies: Path, tmp_path: Path
    ) -> None:
        """Replayed over the period, the proposal refuses none of the workload's statements."""
        result = learned(policies, tmp_path)
        assert result.replay.statements == len(WORKLOAD)
        assert result.replay.changes == ()
        assert result.refused == 0
        assert "the proposal refuses nothing" in result.render()

    def test_the_replay_would_show_a_needed_grant_removed(
        self, policies: Path, tmp_path: Path
    ) -> None:
        """Control: the same replay of the proposal minus a used rule reports alice refused."""
        result = learned(policies, tmp_path)
        target = applied(policies, result, tmp_path)
        policy = target / "policy.csv"
        policy.write_text(
            policy.read_text().replace("p, support_agent, order_issue, customers.phone, read\n", "")
        )
        report = replay(tmp_path / "audit.jsonl", policies, target)
        assert [(c.change, c.user, c.statements) for c in report.changes] == [
            (NEWLY_DENIED, "alice", 1)
        ]

    def test_a_refusal_is_stated_last(self, policies: Path, tmp_path: Path) -> None:
        """When the column check finds an entry no longer granted, the last line says so."""
        result = learned(policies, tmp_path, audit_allowed=False)
        refusing = replace(result, ledger_refused=("alice T-100: customers.email",))
        assert refusing.refused == 1
        assert refusing.render().endswith(
            "the proposal refuses 1 of what the period's workload ran "
            "(replayed statements and ledger shapes above): review before applying"
        )


class TestLedgerOnly:
    def test_unscoped_tables_are_kept_without_evidence(
        self, policies: Path, tmp_path: Path
    ) -> None:
        """From the ledger alone, rules on tables without row scope are kept, not removed."""
        result = learned(policies, tmp_path, audit_allowed=False)
        kept = rules_of(applied(policies, result, tmp_path))
        assert ("analyst", "-", "public.sales_metrics", "top_keywords", "read") in kept
        assert ("everyone", "-", "public.products", "price_cents", "read") in kept
        assert f"-{PLANTED}\n" in result.proposal.diff()
        assert len(result.proposal.unobserved) == 2

    def test_scoped_uses_are_kept_and_checked_by_columns(
        self, policies: Path, tmp_path: Path
    ) -> None:
        """Every scoped grant used is kept, and the text-free entries check clean against it."""
        result = learned(policies, tmp_path, audit_allowed=False)
        kept = rules_of(applied(policies, result, tmp_path))
        scoped = {n for n in NEEDED if n[0] not in ("analyst", "everyone")}
        assert scoped <= kept
        assert ("support_agent", "order_issue", "public.payments", "order_id", "read") not in kept
        assert result.ledger_checked > 0
        assert result.ledger_refused == ()
        assert result.refused == 0

    def test_a_missing_column_in_a_ledger_entry_is_reported(
        self, policies: Path, tmp_path: Path
    ) -> None:
        """Control: checked against a policy without customers.email, alice's entry is refused."""
        from accessguard.authoring.learn_report import check_ledger

        audit = tmp_path / "audit.jsonl"
        audited(policies, audit, audit_allowed=False)
        policy = policies / "policy.csv"
        policy.write_text(
            policy.read_text().replace("p, support_agent, order_issue, customers.email, read\n", "")
        )
        _checked, refused = check_ledger(list(read_events(audit)), load_policy(policies))
        assert refused == ("alice T-100: customers.email",)


class TestCommand:
    def test_out_writes_a_patch_that_applies_and_nothing_else(
        self, policies: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--out writes the diff (patch applies it to a copy); the policy directory is untouched."""
        audit = tmp_path / "audit.jsonl"
        audited(policies, audit, audit_allowed=True)
        before = (policies / "policy.csv").read_text()
        out = tmp_path / "proposal.diff"
        code = main(
            ["learn", "--audit", str(audit), "--policies", str(policies), "--out", str(out)]
        )
        text = capsys.readouterr().out
        assert code == 0
        assert f"wrote {out}" in text
        assert "the proposal refuses nothing" in text
        assert (policies / "policy.csv").read_text() == before
        copy = tmp_path / "copy"
        shutil.copytree(policies, copy)
        subprocess.run(  # noqa: S603 - fixed arguments
            ["/usr/bin/patch", "-s", "-p1", "-d", str(copy), "-i", str(out)], check=True
        )
        assert rules_of(copy) == NEEDED

    def test_a_bad_from_is_a_usage_error(
        self, policies: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--from that is not a date exits 2 and says why."""
        audit = tmp_path / "audit.jsonl"
        audit.write_text("")
        code = main(["learn", "--audit", str(audit), "--policies", str(policies), "--from", "x"])
        assert code == 2
        assert "invalid --from 'x'" in capsys.readouterr().err

    @pytest.mark.db
    def test_reads_the_postgres_sink(
        self, policies: Path, scenario_dsn: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--dsn learns from the PostgreSQL sink's ledger as --audit does from a file."""
        sink = PostgresSink(scenario_dsn)
        sink.setup()
        with Guard.from_directory(policies, tickets=scenario.tickets(), audit=sink) as guard:
            for user, ticket, sql in WORKLOAD[:2]:
                guard.authorize(sql, None, Session(user=user, ticket=ticket), dialect="postgres")
        assert len(list(read_pg(scenario_dsn))) == 2
        code = main(["learn", "--dsn", scenario_dsn, "--policies", str(policies)])
        text = capsys.readouterr().out
        assert code == 0
        assert "learned from 2 allowed statements of 1 employees" in text
        assert "-p, support_agent, order_issue, orders.*, read\n" in text
        assert " p, support_agent, order_issue, customers.phone, read\n" in text
