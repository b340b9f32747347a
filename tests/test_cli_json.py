"""``--format json`` on every command that prints results, and errors as one JSON object."""

from __future__ import annotations

import json
import shutil
import textwrap
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from psycopg import sql

from accessguard import scenario
from accessguard.cli.app import main

if TYPE_CHECKING:
    from casefiles import PgServerLike

POLICIES = str(scenario.policies_dir())
TICKETS = str(scenario.tickets_file())
EXAMPLES = Path(__file__).parent / "cases" / "policy-tests"
ERROR_KEYS = {"reason", "message", "path", "line"}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    """Run the command; its exit code and stdout parsed as exactly one JSON document."""
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, json.loads(captured.out)


def explain(*args: str) -> list[str]:
    return ["explain", "--policies", POLICIES, "--tickets", TICKETS, "--format", "json", *args]


class TestExplain:
    def test_allowed_names_the_line_behind_each_access(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Allowed: the ticket, each access's policy line, the row scope and the sent SQL."""
        code, out = run(
            capsys,
            *explain("--user", "alice", "--ticket", "T-100"),
            "SELECT email FROM customers WHERE id = 42",
        )
        assert code == 0
        assert out["employee"] == "alice"
        assert "support_agent" in out["roles"]
        assert out["ticket"]["id"] == "T-100"
        assert out["ticket"]["customer"] == 42
        assert out["ticket"]["counts"] is True
        assert out["statement"] == "select"
        assert out["tables"] == ["customers"]
        assert out["reads"] == ["customers.email", "customers.id"]
        assert out["writes"] == []
        assert out["row_scope"] == [
            {
                "table": "customers",
                "scope": "customer",
                "bound": True,
                "values": [{"literal": 42}],
                "ticket_subject": 42,
            }
        ]
        email = next(a for a in out["accesses"] if a["column"] == "email")
        assert email["missing"] is None
        assert email["allowed_by"]["text"] == "p, support_agent, order_issue, customers.email, read"
        assert email["allowed_by"]["path"].endswith("policy.csv")
        assert isinstance(email["allowed_by"]["line"], int)
        assert out["decision"] == {"outcome": "allowed", "reason": None, "message": None}
        assert "WHERE id = 42" in out["sent"]
        assert "?" in out["sent"]  # the literal in the outer query is redacted

    def test_refused_names_the_missing_grant(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A refused explain exits 1 and names the grant that is missing."""
        code, out = run(
            capsys,
            *explain("--user", "alice", "--ticket", "T-100"),
            "SELECT card_token FROM payments WHERE customer_id = 42",
        )
        assert code == 1
        assert out["decision"]["outcome"] == "denied"
        assert out["decision"]["reason"] == "column.not_allowed"
        token = next(a for a in out["accesses"] if a["column"] == "card_token")
        assert token["allowed_by"] is None
        assert "p, support_agent, order_issue, payments.card_token, read" in token["missing"]

    def test_param_binds_the_placeholder(self, capsys: pytest.CaptureFixture[str]) -> None:
        """explain --param binds %s as check does: the scope shows $1 = 42 and it is allowed."""
        code, out = run(
            capsys,
            *explain("--user", "alice", "--ticket", "T-100", "--param", "42"),
            "SELECT email FROM customers WHERE id = %s",
        )
        assert code == 0
        assert out["row_scope"][0]["values"] == [{"param": "$1", "bound": 42}]
        assert out["decision"]["outcome"] == "allowed"

    def test_param_of_another_customer_is_refused(self, capsys: pytest.CaptureFixture[str]) -> None:
        """explain --param with another customer's id is refused on the row scope."""
        code, out = run(
            capsys,
            *explain("--user", "alice", "--ticket", "T-100", "--param", "7"),
            "SELECT email FROM customers WHERE id = %s",
        )
        assert code == 1
        assert out["decision"]["reason"] == "row_scope.other_subject"
        assert out["row_scope"][0]["values"] == [{"param": "$1", "bound": 7}]

    def test_unanalyzable_statement(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A statement the analyser refuses has analysis set, no accesses and nothing sent."""
        code, out = run(
            capsys, *explain("--user", "alice", "--ticket", "T-100"), "SELECT 1; SELECT 2"
        )
        assert code == 1
        assert out["analysis"]["reason"] == out["decision"]["reason"]
        assert out["accesses"] == []
        assert out["sent"] is None

    def test_text_stays_the_default(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Without --format, explain prints its text report."""
        capsys.readouterr()
        argv = ["explain", "--policies", POLICIES, "--tickets", TICKETS, "--user", "alice"]
        assert main([*argv, "--ticket", "T-100", "SELECT email FROM customers WHERE id = 42"]) == 0
        assert capsys.readouterr().out.startswith("employee:  alice")


def write_cases(path: Path, cases: str) -> Path:
    ticket = "{id: T-100, assignee: alice, kind: order_issue, status: open, customer_id: 42}"
    path.write_text(f"tickets:\n  - {ticket}\ncases:\n" + textwrap.dedent(cases))
    return path


class TestPolicyTests:
    def test_passing_file(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A passing file: ok, its counts, no failures, used and unused policy lines."""
        example = str(EXAMPLES / "support_agent.yaml")
        code, out = run(capsys, "test", "--policies", POLICIES, "--format", "json", example)
        assert code == 0
        assert out["ok"] is True
        assert out["errors"] == []
        assert out["failures"] == []
        [entry] = out["files"]
        assert entry["path"] == example
        assert entry["passed"] > 0
        assert entry["failed"] == 0
        coverage = out["coverage"]
        used, unused = coverage["used"], coverage["unused"]
        assert len(used) + len(unused) == coverage["policy_lines"]
        assert used
        assert {"path", "line", "text"} == set(used[0])
        assert all(line["text"].startswith("p,") for line in used + unused)

    def test_failing_case_names_file_and_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A failing case is listed with file:line, expected and actual outcome and reason."""
        cases = write_cases(
            tmp_path / "cases.yaml",
            """\
            - user: alice
              ticket: T-100
              sql: SELECT email FROM customers WHERE id = 42
              expect: allowed
            - name: wrongly expected
              user: alice
              ticket: T-100
              sql: SELECT card_token FROM payments WHERE customer_id = 42
              expect: allowed
            """,
        )
        code, out = run(capsys, "test", "--policies", POLICIES, "--format", "json", str(cases))
        assert code == 1
        assert out["ok"] is False
        assert out["files"] == [{"path": str(cases), "passed": 1, "failed": 1}]
        [failure] = out["failures"]
        assert failure["file"] == str(cases)
        assert failure["line"] == 8
        assert failure["name"] == "wrongly expected"
        assert failure["expected"] == {"outcome": "allowed", "reason": None}
        assert failure["actual"] == {"outcome": "denied", "reason": "column.not_allowed"}
        assert failure["message"]

    def test_malformed_file_exits_two(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A malformed test file exits 2 with the problem in errors."""
        bad = tmp_path / "bad.yaml"
        bad.write_text("cases: nope\n")
        code, out = run(capsys, "test", "--policies", POLICIES, "--format", "json", str(bad))
        assert code == 2
        assert out["ok"] is False
        assert len(out["errors"]) == 1
        assert f"{bad}:1:" in out["errors"][0]


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's audit trail (allowed reads and refusals of the scenario)."""
    audit = tmp_path_factory.mktemp("demo") / "audit.jsonl"
    assert main(["demo", "--audit", str(audit), "--report", str(audit.parent / "r.html")]) == 0
    return audit


class TestReplay:
    def test_numbers_and_rows(
        self, trail: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without alice's email grant: each statement counted once, alice newly denied."""
        proposed = tmp_path / "policies"
        shutil.copytree(POLICIES, proposed)
        csv = proposed / "policy.csv"
        grant = "p, support_agent, order_issue, customers.email, read"
        assert grant in csv.read_text()
        csv.write_text(csv.read_text().replace(grant + "\n", ""))
        argv = ["replay", "--audit", str(trail), "--policies", str(proposed), "--format", "json"]
        code, out = run(capsys, *argv)
        assert code == 0
        assert out["baseline"] == "the recorded outcomes"
        assert out["statements"] == sum(out["recorded"].values())
        changed = sum(c["statements"] for c in out["changes"])
        assert out["unchanged"] + out["unreplayable"] + changed == out["statements"]
        assert {"change", "user", "reason", "statements", "example"} == set(out["changes"][0])
        assert any(
            c["change"] == "newly denied" and c["user"] == "alice" and c["statements"] > 0
            for c in out["changes"]
        ), out["changes"]
        assert out["ledger"].startswith("ledger:")

    def test_missing_audit_file_is_a_json_error(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A missing audit file is one JSON error naming the file, exit 2."""
        missing = tmp_path / "none.jsonl"
        argv = ["replay", "--audit", str(missing), "--policies", POLICIES, "--format", "json"]
        code, out = run(capsys, *argv)
        assert code == 2
        assert set(out["error"]) == ERROR_KEYS
        assert out["error"]["reason"] == "file.unreadable"
        assert out["error"]["path"] == str(missing)


class TestAuditVerify:
    def test_intact_and_broken(
        self, trail: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """verify --format json: ok with the event count (exit 0), then the broken line (exit 1)."""
        code, out = run(capsys, "audit", "verify", str(trail), "--format", "json")
        assert code == 0
        assert out["ok"] is True
        assert out["events"] == len(trail.read_text().splitlines())
        assert out["broken_line"] is None
        assert out["problem"] is None
        assert {"key_id", "keyed", "demo_key", "checkpoint", "torn_line"} <= set(out)
        copy = tmp_path / "audit.jsonl"
        lines = trail.read_text().splitlines(keepends=True)
        lines[1] = lines[1].replace("alice", "bob__")
        copy.write_text("".join(lines))
        code, out = run(capsys, "audit", "verify", str(copy), "--format", "json")
        assert code == 1
        assert out["ok"] is False
        assert out["broken_line"] == 2
        assert out["events"] == 1
        assert out["problem"]

    def test_neither_file_nor_dsn_is_a_usage_error(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """verify with neither FILE nor --dsn is a JSON usage error, exit 2."""
        code, out = run(capsys, "audit", "verify", "--format", "json")
        assert code == 2
        assert out["error"]["reason"] == "usage.invalid"


@pytest.mark.db
class TestScenarioLoad:
    def test_creates_and_loads(
        self, pg_server: PgServerLike, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """scenario load --format json reports the created database and its tables."""
        name = f"ag_cli_{uuid.uuid4().hex[:10]}"
        try:
            code, out = run(capsys, "scenario", "load", pg_server.dsn(name), "--format", "json")
            assert code == 0
            assert out["created"] is True
            assert out["database"] == name
            assert "public.customers" in out["tables"]
            assert "archive.customers" in out["tables"]
            code, out = run(capsys, "scenario", "load", pg_server.dsn(name), "--format", "json")
            assert code == 0
            assert out["created"] is False
        finally:
            with pg_server.admin() as conn:
                drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                conn.execute(drop.format(sql.Identifier(name)))

    def test_unreachable_server_is_a_json_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A server that refuses the connection is one JSON error, exit 1."""
        dsn = "postgresql://postgres@127.0.0.1:1/none?connect_timeout=2"
        code, out = run(capsys, "scenario", "load", dsn, "--format", "json")
        assert code == 1
        assert out["error"]["reason"] == "database.error"
        assert out["error"]["message"].startswith("scenario load: OperationalError")


class TestErrors:
    @pytest.mark.db
    def test_an_unreachable_sink_is_a_database_error(
        self, unused_database: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A sink that cannot be reached: one JSON error (database.error) and exit 1."""
        capsys.readouterr()
        argv = ["audit", "who-read", "--dsn", unused_database, "--customer", "42"]
        code = main([*argv, "--format", "json"])
        captured = capsys.readouterr()
        assert code == 1
        assert json.loads(captured.out)["error"]["reason"] == "database.error"
        assert main(argv) == 1  # without JSON: one line on stderr, no traceback
        err = capsys.readouterr().err
        assert err.startswith("accessguard: ")
        assert "Traceback" not in err

    @pytest.mark.parametrize("flag", [["--format", "json"], ["--format=json"]])
    def test_argparse_usage_error(
        self, flag: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A missing argument with --format json: one JSON object on stdout, nothing else, 2."""
        capsys.readouterr()
        code = main(["check", "--user", "alice", *flag])
        captured = capsys.readouterr()
        assert code == 2
        assert captured.err == ""
        out = json.loads(captured.out)
        assert out["error"]["reason"] == "usage.invalid"
        assert "--policies" in out["error"]["message"]
        assert out["error"]["path"] is None

    def test_usage_error_without_json_stays_argparse(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without --format json, a usage error is argparse's: usage on stderr, exit 2."""
        with pytest.raises(SystemExit) as info:
            main(["check", "--user", "alice"])
        assert info.value.code == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert "usage: accessguard check" in captured.err

    def test_policy_error_names_file_and_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A malformed policy file is a JSON error with its path and line, exit 2."""
        target = tmp_path / "policies"
        shutil.copytree(POLICIES, target)
        with (target / "policy.csv").open("a") as fh:
            fh.write("p, analyst, -, sales_metrics.units\n")
        lines = (target / "policy.csv").read_text().count("\n")
        argv = ["--policies", str(target), "--tickets", TICKETS, "--user", "dave"]
        for command in ("check", "explain"):
            code, out = run(capsys, command, *argv, "--format", "json", "SELECT 1")
            assert code == 2
            assert out["error"]["reason"] == "policy.invalid"
            assert out["error"]["path"] == str(target / "policy.csv")
            assert out["error"]["line"] == lines
            assert not out["error"]["message"].startswith(str(target))

    def test_configuration_error(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A tickets file that cannot be read is a configuration error in JSON, exit 2."""
        argv = ["check", "--policies", POLICIES, "--tickets", str(tmp_path / "none.yaml")]
        code, out = run(capsys, *argv, "--user", "alice", "--format", "json", "SELECT 1")
        assert code == 2
        assert out["error"]["reason"] == "configuration.invalid"
        assert out["error"]["message"]

    def test_bad_since_is_a_usage_error(
        self, trail: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An unreadable --since with --format json is a JSON usage error, exit 2."""
        argv = ["audit", "what-read", "--audit", str(trail), "--user", "x", "--since", "soon"]
        code, out = run(capsys, *argv, "--format", "json")
        assert code == 2
        assert out["error"]["reason"] == "usage.invalid"

    def test_unreadable_file_is_a_json_error(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An OSError (a directory where a file is expected) is a JSON error with the path."""
        argv = ["replay", "--audit", str(tmp_path), "--policies", POLICIES, "--format", "json"]
        code, out = run(capsys, *argv)
        assert code == 2
        assert out["error"]["reason"] == "file.unreadable"
        assert out["error"]["path"] == str(tmp_path)
