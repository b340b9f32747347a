"""Policy authoring: policy tests with coverage, explain, lint and replay."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from accessguard import scenario
from accessguard.authoring.cases import load_case_file, run_policy_tests
from accessguard.authoring.explain import explain
from accessguard.authoring.lint import Finding, lint
from accessguard.cli.tools import explain_command, lint_command, policy_test_command
from accessguard.errors import AccessGuardError
from accessguard.guard import Guard, Session
from accessguard.investigate.replay import (
    MAY_ALLOW,
    NEWLY_ALLOWED,
    NEWLY_DENIED,
    ReplayReport,
    replay,
)
from accessguard.testing import MemoryAuditSink
from accessguard.tickets.stores import Ticket

if TYPE_CHECKING:
    from collections.abc import Iterator

EXAMPLES = Path(__file__).parent / "cases" / "policy-tests"
ALICE_T100 = "{id: T-100, assignee: alice, kind: order_issue, status: open, customer_id: 42}"


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """A copy of the scenario's policy directory."""
    target = tmp_path / "policies"
    shutil.copytree(scenario.policies_dir(), target)
    return target


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(textwrap.dedent(text).lstrip())


def case_file(tmp_path: Path, expect: str, reason: str = "") -> Path:
    """One file: alice reads customer 42's e-mail (allowed), then the card token (``expect``)."""
    lines = [
        "tickets:",
        f"  - {ALICE_T100}",
        "cases:",
        "  - name: e-mail of the ticket's customer",
        "    user: alice",
        "    ticket: T-100",
        "    sql: SELECT email FROM customers WHERE id = %s",
        "    params: [42]",
        "    expect: allowed",
        "  - name: card token",
        "    user: alice",
        "    ticket: T-100",
        "    sql: SELECT card_token FROM payments WHERE customer_id = 42",
        f"    expect: {expect}",
        *([f"    reason: {reason}"] if reason else []),
    ]
    path = tmp_path / "support.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class TestPolicyTests:
    def test_passing_file_exits_zero(self, policies: Path, tmp_path: Path) -> None:
        """A file whose cases all meet their expectation passes with exit 0."""
        report = run_policy_tests(policies, [case_file(tmp_path, "denied", "column.not_allowed")])
        assert report.exit_code == 0
        assert [r.passed for r in report.results] == [True, True]
        assert report.render().endswith("ok: 2 cases passed")

    def test_wrong_expectation_fails_with_a_diff(self, policies: Path, tmp_path: Path) -> None:
        """A wrong expectation exits 1 and the diff names the case, expected and actual."""
        path = case_file(tmp_path, "allowed")
        report = run_policy_tests(policies, [path])
        text = report.render()
        assert report.exit_code == 1
        assert f"FAIL {path}:10 case 2 (card token)" in text
        assert "  expected: allowed\n  actual:   denied (column.not_allowed)" in text
        assert "No rule lets support_agent read payments.card_token." in text
        assert text.endswith("FAILED: 1 of 2 cases failed")

    def test_wrong_reason_fails(self, policies: Path, tmp_path: Path) -> None:
        """The right outcome with the wrong reason code is a failure too."""
        report = run_policy_tests(policies, [case_file(tmp_path, "denied", "ticket.required")])
        assert report.exit_code == 1
        assert "expected: denied (ticket.required)" in report.render()

    def test_coverage_lists_unexercised_lines(self, policies: Path, tmp_path: Path) -> None:
        """Policy lines that no passing allowed case used are listed by file:line."""
        report = run_policy_tests(policies, [case_file(tmp_path, "denied")])
        text = report.render()
        assert "coverage: 2 of 25 policy lines" in text
        assert "  policy.csv:26  p, support_agent, order_issue, orders.status, update" in text
        assert "policy.csv:15 " not in text  # customers.id, in the WHERE clause
        assert "policy.csv:17 " not in text  # customers.email

    def test_failing_allowed_case_does_not_cover(self, policies: Path, tmp_path: Path) -> None:
        """A case expected denied that is allowed fails and exercises nothing."""
        path = write(
            tmp_path / "t.yaml",
            f"""
            tickets: [{ALICE_T100}]
            cases:
              - {{user: alice, ticket: T-100, sql: SELECT email FROM customers WHERE id = 42,
                  expect: denied}}
            """,
        )
        report = run_policy_tests(policies, [path])
        assert report.exit_code == 1
        assert len(report.uncovered) == report.policy_lines

    def test_malformed_yaml_exits_two_naming_the_file(self, policies: Path, tmp_path: Path) -> None:
        """A file that is not YAML exits 2 with its path and the line of the fault."""
        bad = write(
            tmp_path / "bad.yaml",
            """
            cases:
              - user: alice
                sql: SELECT 1
                expect: allowed
               - user: bob
            """,
        )
        report = run_policy_tests(policies, [bad])
        assert report.exit_code == 2
        assert f"error: {bad}:5: not valid YAML" in report.render()

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ("cases:\n  - {user: a, sql: SELECT 1, expected: allowed}\n", "unknown key 'expected'"),
            ("cases:\n  - {user: a, sql: SELECT 1, expect: maybe}\n", "expect: must be one of"),
            ("cases:\n  - {user: a, sql: SELECT 1, expect: denied, reason: nope}\n", "reason:"),
            ("cases:\n  - {sql: SELECT 1, expect: allowed}\n", "user: must name"),
            ("cases: []\n", "cases: must be a non-empty list"),
            (
                "tickets:\n  - {id: T-1}\ncases:\n  - {user: a, sql: x, expect: denied}\n",
                "ticket 1",
            ),
        ],
        ids=["typo-key", "bad-expect", "bad-reason", "no-user", "no-cases", "bad-ticket"],
    )
    def test_malformed_case_exits_two(
        self, policies: Path, tmp_path: Path, body: str, message: str
    ) -> None:
        """A case file with a wrong shape exits 2 and names the file and problem."""
        path = write(tmp_path / "case.yaml", body)
        report = run_policy_tests(policies, [path])
        assert report.exit_code == 2
        assert f"error: {path}:" in report.render()
        assert message in report.render()

    def test_case_lines_point_at_the_case(self, tmp_path: Path) -> None:
        """Each case carries the line its entry starts on."""
        _tickets, cases = load_case_file(case_file(tmp_path, "denied"))
        assert [c.line for c in cases] == [4, 10]
        assert cases[0].params == (42,)

    def test_throttled_expectation(self, policies: Path, tmp_path: Path) -> None:
        """Cases run in file order through the throttle: the customer past the limit waits."""
        (policies / "limits.toml").write_text(
            '[roles.support_agent]\ndistinct_customers = { count = 2, per = "1 hour" }\n'
        )
        tickets = "\n".join(
            f"  - {{id: T-{i}, assignee: mallory, kind: order_issue, status: open, "
            f"customer_id: {i}}}"
            for i in (1, 2, 3)
        )
        expect = {1: "allowed", 2: "allowed", 3: "throttled, reason: throttle.distinct_customers"}
        cases = "\n".join(
            f"  - {{user: mallory, ticket: T-{i}, sql: SELECT email FROM customers WHERE id = {i},"
            f" expect: {expect[i]}}}"
            for i in (1, 2, 3)
        )
        path = write(tmp_path / "t.yaml", f"tickets:\n{tickets}\ncases:\n{cases}\n")
        report = run_policy_tests(policies, [path])
        assert report.exit_code == 0, report.render()
        assert [r.outcome for r in report.results] == ["allowed", "allowed", "throttled"]

    def test_many_cases_stay_under_the_statement_rate(self, policies: Path, tmp_path: Path) -> None:
        """Cases run a second apart: 150 cases of one employee pass a 120-per-minute limit."""
        case = "  - {user: dave, sql: SELECT units FROM sales_metrics, expect: allowed}\n"
        path = write(tmp_path / "many.yaml", "cases:\n" + case * 150)
        report = run_policy_tests(policies, [path])
        assert report.exit_code == 0, report.render()

    def test_shipped_examples_pass_and_cover_every_line(self) -> None:
        """The example policy tests pass against the shipped policies and use every p line."""
        files = sorted(EXAMPLES.glob("*.yaml"))
        report = run_policy_tests(scenario.policies_dir(), files)
        assert len(files) >= 4
        assert report.exit_code == 0, report.render()
        assert report.uncovered == ()

    def test_command_returns_code_and_text(self, policies: Path, tmp_path: Path) -> None:
        """The CLI entry point returns the exit code and the rendered report."""
        args = argparse.Namespace(policies=policies, files=[case_file(tmp_path, "allowed")])
        code, text = policy_test_command(args)
        assert code == 1
        assert "FAIL" in text


@pytest.fixture
def guard() -> Iterator[Guard]:
    """A guard on the scenario's policies and tickets, auditing to memory."""
    with Guard.from_directory(
        scenario.policies_dir(), tickets=scenario.tickets(), audit=MemoryAuditSink()
    ) as guard:
        yield guard


class TestExplain:
    def test_allowed_shows_rule_and_sent_sql(self, guard: Guard) -> None:
        """An allowed read names the policy line behind each column and the scoped SQL."""
        text = explain(
            guard,
            "SELECT email FROM customers WHERE id = 42 AND name = 'Ann'",
            user="alice",
            ticket="T-100",
        )
        assert "read customers.email  allowed by policy.csv:17" in text
        assert "p, support_agent, order_issue, customers.email, read" in text
        assert "customers: customer id = 42 (literal) (ticket's customer: 42)" in text
        assert "decision:  allowed" in text
        assert '(SELECT "id", "name", "email" FROM public.customers WHERE id = 42)' in text
        assert "Ann" not in text

    def test_denied_shows_missing_grant(self, guard: Guard) -> None:
        """A refused read shows which grant is missing and the SQL with its markers."""
        text = explain(
            guard,
            "SELECT card_token FROM payments WHERE customer_id = %s",
            user="alice",
            ticket="T-100",
            params=[42],
        )
        assert "payments: customer id = $1 = 42" in text
        assert "MISSING: no rule lets support_agent read it" in text
        assert "p, support_agent, order_issue, payments.card_token, read" in text
        assert "decision:  denied (column.not_allowed)" in text
        assert "__ag_subject_customer__" in text

    def test_missing_ticket_names_the_rule_that_needs_it(self, guard: Guard) -> None:
        """Without a ticket, each access names the ticket kind and line that would allow it."""
        text = explain(guard, "SELECT email FROM customers WHERE id = 42", user="bob", ticket=None)
        assert "needs an open order_issue ticket assigned to bob (policy.csv:17)" in text
        assert "decision:  denied (ticket.required)" in text

    def test_unanalyzable_statement(self, guard: Guard) -> None:
        """A forbidden statement shows the analyser's refusal and nothing to send."""
        text = explain(guard, "DELETE FROM orders", user="alice", ticket="T-100")
        assert "analysis:  refused (statement.forbidden)" in text
        assert "sent:      (nothing" in text

    def test_command_exit_codes(self) -> None:
        """The CLI entry point exits 0 when allowed and 1 when refused."""
        args = argparse.Namespace(
            policies=scenario.policies_dir(),
            tickets=scenario.tickets_file(),
            user="dave",
            ticket=None,
            dialect="postgres",
            sql="SELECT units FROM sales_metrics",
        )
        assert explain_command(args)[0] == 0
        args.sql = "SELECT email FROM customers"
        assert explain_command(args)[0] == 1


def codes(findings: list[Finding]) -> set[tuple[str, int | None, str]]:
    return {(Path(f.path).name, f.line, f.code) for f in findings}


class TestLint:
    def test_shipped_policies_have_no_errors(self) -> None:
        """The scenario's policies lint without errors."""
        findings = lint(scenario.policies_dir())
        assert [f for f in findings if f.severity == "error"] == []

    def test_shipped_policies_are_clean(self) -> None:
        """The shipped policies lint with no finding at all (not even a warning)."""
        assert lint(scenario.policies_dir()) == []

    def test_redundant_rule_is_a_warning(self, tmp_path: Path) -> None:
        """A role's rule already granted to everyone is reported as shadowed."""
        target = tmp_path / "policies"
        shutil.copytree(scenario.policies_dir(), target)
        path = target / "policy.csv"
        lines = path.read_text().splitlines()
        lines.insert(44, "p, analyst, -, products.*, read")
        path.write_text("\n".join(lines) + "\n")
        assert ("policy.csv", 45, "rule.shadowed") in codes(lint(target))

    @pytest.mark.parametrize(
        ("line", "code"),
        [
            ("p, support_agent, order_issue, customers.email, read", "rule.duplicate"),
            ("p, analyst, order_issue, sales_metrics.day, read", "rule.shadowed"),
            ("p, support_agent, order_issue, orders.status, read", "rule.shadowed"),
            ("p, auditor, -, sellers.name, read", "role.no_members"),
            ("p, analyst, -, *.*, read", "object.wildcard"),
            ("p, analyst, -, *, read", "object.wildcard"),
            ("p, analyst, -, *.email, read", "object.wildcard"),
            ("p, support_agent, order_issue, orders.*, update", "object.wildcard"),
            ("p, support_agent, order_issue, customers.ssn, read", "column.unknown"),
            ("p, support_agent, order_issue, refunds.id, read", "table.unknown"),
            ("p, support_agent, order_issue, tickets.id, read", "table.unreachable"),
            ("p, support_agent, order_issue, orders.status, delete", "action.unknown"),
            ("p, support_agent, orders.status, read", "policy.syntax"),
            ("x, alice, support_agent", "policy.syntax"),
        ],
        ids=[
            "duplicate",
            "kind-rule-shadowed-by-no-ticket-rule",
            "column-shadowed-by-table-wildcard",
            "role-without-members",
            "star-dot-star",
            "star",
            "star-dot-column",
            "wildcard-update",
            "unknown-column",
            "unknown-table",
            "unreachable-table",
            "unknown-action",
            "three-fields",
            "unknown-line-type",
        ],
    )
    def test_planted_problem(self, policies: Path, line: str, code: str) -> None:
        """A planted policy line is reported with its code on its own line number."""
        append(policies / "policy.csv", line + "\n")
        planted = len((policies / "policy.csv").read_text().splitlines())
        found = codes(lint(policies))
        assert ("policy.csv", planted, code) in found, found

    def test_every_faulty_line_is_reported(self, policies: Path) -> None:
        """Lint does not stop at the first error: each bad line has its own finding."""
        append(
            policies / "policy.csv",
            """
            p, analyst, -, *.*, read
            p, support_agent, order_issue, customers.ssn, read
            """,
        )
        found = codes(lint(policies))
        assert {
            ("policy.csv", 56, "object.wildcard"),
            ("policy.csv", 57, "column.unknown"),
        } <= found

    def test_rule_duplicated_by_inherited_role(self, policies: Path) -> None:
        """A role's rule that a role it inherits already grants is shadowed."""
        append(
            policies / "policy.csv",
            """
            g, zoe, lead_agent
            g, lead_agent, support_agent
            p, lead_agent, order_issue, customers.email, read
            """,
        )
        findings = lint(policies)
        shadowed = [f for f in findings if f.code == "rule.shadowed" and f.line == 58]
        assert shadowed
        assert "lead_agent holds support_agent, which line 17 grants it to" in shadowed[0].message

    def test_limits_naming_unknown_role(self, policies: Path) -> None:
        """limits.toml sections for roles no policy line names are errors at their header."""
        append(
            policies / "limits.toml",
            """

            [roles.auditors]
            statements = { count = 10, per = "1 minute" }

            [roles.support_agent.ticket_kinds.refund]
            rows_per_statement = 50
            """,
        )
        found = codes(lint(policies))
        assert ("limits.toml", 38, "limits.unknown_role") in found
        assert ("limits.toml", 41, "limits.unknown_ticket_kind") in found

    def test_broken_schema_is_reported(self, policies: Path) -> None:
        """A schema.toml that does not parse is an error naming its line."""
        append(policies / "schema.toml", "[tables.broken\n")
        found = [f for f in lint(policies) if f.code == "file.invalid"]
        assert found
        assert Path(found[0].path).name == "schema.toml"
        assert found[0].line is not None

    def test_command_output_and_exit(self, policies: Path) -> None:
        """The CLI entry point prints path:line: severity code: message and exits 1 on errors."""
        append(policies / "policy.csv", "p, analyst, -, *.*, read\n")
        code, text = lint_command(argparse.Namespace(policies=policies))
        assert code == 1
        assert f"{policies / 'policy.csv'}:56: error object.wildcard: '*.*' is wider" in text
        assert lint_command(argparse.Namespace(policies=scenario.policies_dir()))[0] == 0


def audited(policies: Path, audit: Path, statements: list[tuple[str, str | None, str]]) -> None:
    """Run statements through a guard that writes its audit (and ledger) to ``audit``."""
    with Guard.from_directory(policies, tickets=scenario.tickets(), audit=audit) as guard:
        for user, ticket, sql in statements:
            with contextlib.suppress(AccessGuardError):
                guard.authorize(sql, None, Session(user=user, ticket=ticket), dialect="postgres")


@pytest.fixture
def proposed(policies: Path, tmp_path: Path) -> Path:
    """The scenario's policy without alice's phone read, with card tokens and seller names."""
    (policies / "limits.toml").unlink()
    target = tmp_path / "proposed"
    shutil.copytree(policies, target)
    policy = target / "policy.csv"
    text = policy.read_text().replace("p, support_agent, order_issue, customers.phone, read\n", "")
    text += "p, support_agent, order_issue, payments.card_token, read\n"
    text += "p, analyst, -, sellers.name, read\n"
    policy.write_text(text)
    return target


STATEMENTS: list[tuple[str, str | None, str]] = [
    ("alice", "T-100", "SELECT card_token FROM payments WHERE customer_id = 42"),
    ("dave", None, "SELECT name FROM sellers"),
    ("dave", None, "SELECT name FROM sellers"),
    ("bob", None, "SELECT phone FROM customers WHERE id = 42"),
    ("alice", "T-100", "SELECT status FROM orders WHERE customer_id = 7"),
    ("alice", "T-100", "SELECT phone FROM customers WHERE id = 42"),
    ("alice", "T-100", "DELETE FROM orders"),
]


def changes(report: ReplayReport) -> set[tuple[str, str, str, int]]:
    return {(c.change, c.user, c.reason, c.statements) for c in report.changes}


class TestReplay:
    def test_against_recorded_outcomes(
        self, policies: Path, proposed: Path, tmp_path: Path
    ) -> None:
        """Newly allowed, newly denied and may-allow statements, by employee and reason."""
        audit = tmp_path / "audit.jsonl"
        audited(policies, audit, STATEMENTS)
        report = replay(audit, None, proposed)
        assert changes(report) == {
            (NEWLY_ALLOWED, "dave", "column.not_allowed", 2),
            (MAY_ALLOW, "alice", "column.not_allowed", 1),
            (NEWLY_DENIED, "alice", "column.not_allowed", 1),
        }
        # bob (no ticket), alice's other customer and the DELETE stay refused
        assert report.unchanged == 3
        text = report.render()
        assert "e.g. SELECT card_token FROM payments WHERE customer_id = ?" in text
        assert "42" not in text

    def test_against_current_policy(self, policies: Path, proposed: Path, tmp_path: Path) -> None:
        """With the current policy as baseline, only the policy's difference shows."""
        audit = tmp_path / "audit.jsonl"
        audited(policies, audit, STATEMENTS)
        report = replay(audit, policies, proposed)
        assert (NEWLY_ALLOWED, "dave", "column.not_allowed", 2) in changes(report)
        assert f"compared with: the current policy ({policies})" in report.render()

    def test_same_policy_changes_nothing(self, policies: Path, tmp_path: Path) -> None:
        """Replaying under the policy that recorded the events changes nothing."""
        (policies / "limits.toml").unlink()
        audit = tmp_path / "audit.jsonl"
        audited(policies, audit, STATEMENTS)
        report = replay(audit, policies, policies)
        assert report.changes == ()
        assert report.unchanged == report.statements

    def test_ledger_entries_replayed_by_fingerprint(
        self, policies: Path, proposed: Path, tmp_path: Path
    ) -> None:
        """An allowed read (ledger, fingerprint only) is replayed with the text of a refusal."""
        audit = tmp_path / "audit.jsonl"
        audited(policies, audit, STATEMENTS)
        report = replay(audit, None, proposed)
        assert "1 statements replayed with the text of another event" in report.ledger_note
        assert report.statements == len(STATEMENTS)  # alice's phone read from the ledger
        assert "1 allowed" in report.render()

    def test_audited_allowed_statements_replace_the_ledger(
        self, policies: Path, proposed: Path, tmp_path: Path
    ) -> None:
        """When allowed statements are audited with text, ledger entries are not counted twice."""
        audit = tmp_path / "audit.jsonl"
        with Guard.from_directory(
            policies, tickets=scenario.tickets(), audit=audit, audit_allowed=True
        ) as guard:
            sql = "SELECT phone FROM customers WHERE id = 42"
            guard.authorize(sql, None, Session(user="alice", ticket="T-100"), dialect="postgres")
        report = replay(audit, None, proposed)
        assert changes(report) == {(NEWLY_DENIED, "alice", "column.not_allowed", 1)}
        assert "not replayed: the file audits allowed statements" in report.ledger_note

    def test_ticket_state_from_a_ticket_file(
        self, policies: Path, proposed: Path, tmp_path: Path
    ) -> None:
        """Given tickets, replay uses their state: a ticket closed since opens nothing."""
        audit = tmp_path / "audit.jsonl"
        audited(policies, audit, STATEMENTS[:1])
        closed = [Ticket(id="T-100", assignee="alice", kind="order_issue", status="closed")]
        assert changes(replay(audit, None, proposed, tickets=closed)) == set()
        assert changes(replay(audit, None, proposed)) == {
            (MAY_ALLOW, "alice", "column.not_allowed", 1)
        }

    def test_row_scope_refusal_stays_a_refusal(
        self, policies: Path, proposed: Path, tmp_path: Path
    ) -> None:
        """A read refused for its rows is not "newly denied" when a grant goes too."""
        audit = tmp_path / "audit.jsonl"
        audited(policies, audit, [STATEMENTS[4]])  # alice reads customer 7's orders on T-100
        policy = proposed / "policy.csv"
        policy.write_text(
            policy.read_text().replace("p, support_agent, order_issue, orders.*, read\n", "")
        )
        report = replay(audit, None, proposed)
        assert report.changes == ()
        assert report.unchanged == 1
        assert "1 denied by row scope" in report.render()

    def test_throttled_statements_replay_their_grants(
        self, policies: Path, proposed: Path, tmp_path: Path
    ) -> None:
        """A throttled read had its grants: removing the grant newly denies it (and its twin)."""
        (policies / "limits.toml").write_text(
            '[roles.support_agent]\ndistinct_customers = { count = 1, per = "1 hour" }\n'
        )
        audit = tmp_path / "audit.jsonl"
        audited(
            policies,
            audit,
            [
                ("mallory", "T-400", "SELECT phone FROM customers WHERE id = 100"),
                ("mallory", "T-401", "SELECT phone FROM customers WHERE id = 101"),
            ],
        )
        report = replay(audit, None, proposed)
        assert changes(report) == {(NEWLY_DENIED, "mallory", "column.not_allowed", 2)}
        assert "1 statements replayed with the text of another event" in report.ledger_note

    def test_event_without_text_is_not_replayed(self, proposed: Path, tmp_path: Path) -> None:
        """A refusal with no statement text is counted as not replayable, never guessed."""
        event = {
            "event.action": "query",
            "accessguard.outcome": "denied",
            "event.reason": "path.forbidden",
            "user.name": "alice",
            "db.query.text": None,
        }
        audit = tmp_path / "audit.jsonl"
        audit.write_text(json.dumps(event) + "\n")
        report = replay(audit, None, proposed)
        assert report.unreplayable == 1
        assert "could not replay: 1" in report.render()
