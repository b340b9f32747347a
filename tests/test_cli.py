"""The accessguard command: check, demo, audit verify; exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from accessguard import scenario
from accessguard.cli.app import main

POLICIES = str(scenario.policies_dir())
TICKETS = str(scenario.tickets_file())


def check(*args: str) -> list[str]:
    return ["check", "--policies", POLICIES, "--tickets", TICKETS, *args]


class TestCheck:
    def test_allowed_exits_zero(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An allowed statement prints 'allowed' and exits 0."""
        code = main(
            check(
                "--user", "alice", "--ticket", "T-100", "SELECT email FROM customers WHERE id = 42"
            )
        )
        assert code == 0
        assert capsys.readouterr().out.startswith("allowed")

    def test_denied_json_exits_one(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A refusal in JSON carries outcome, reason, tables and columns, and exits 1."""
        code = main(
            check(
                "--user",
                "alice",
                "--ticket",
                "T-100",
                "--format",
                "json",
                "SELECT card_token FROM payments WHERE customer_id = 42",
            )
        )
        out = json.loads(capsys.readouterr().out)
        assert code == 1
        assert out["outcome"] == "denied"
        assert out["reason"] == "column.not_allowed"
        assert out["tables"] == ["payments"]
        assert "payments.card_token" in out["columns"]

    def test_bad_usage_exits_two(self) -> None:
        """Missing arguments are a usage error (2)."""
        with pytest.raises(SystemExit) as info:
            main(["check", "--user", "alice"])
        assert info.value.code == 2

    def test_malformed_policy_exits_two_naming_the_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A broken policy file is reported with file and line, exit 2."""
        target = tmp_path / "policies"
        shutil.copytree(POLICIES, target)
        with (target / "policy.csv").open("a") as fh:
            fh.write("p, analyst, -, sales_metrics.units\n")
        lines = (target / "policy.csv").read_text().count("\n")
        code = main(
            ["check", "--policies", str(target), "--tickets", TICKETS, "--user", "dave", "SELECT 1"]
        )
        assert code == 2
        assert f"policy.csv:{lines}:" in capsys.readouterr().err


class TestAuditVerify:
    def test_verify_intact_and_broken(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """audit verify exits 0 on an intact chain and 1 naming the first broken line."""
        audit = tmp_path / "audit.jsonl"
        assert main(["demo", "--audit", str(audit)]) == 0
        capsys.readouterr()
        assert main(["audit", "verify", str(audit)]) == 0
        lines = audit.read_text().splitlines(keepends=True)
        lines[1] = lines[1].replace("alice", "bob__")
        audit.write_text("".join(lines))
        assert main(["audit", "verify", str(audit)]) == 1
        assert ":2: chain broken" in capsys.readouterr().out


class TestDemo:
    def test_demo_runs_from_any_directory(self, tmp_path: Path) -> None:
        """`accessguard demo` runs the scenario on SQLite from an unrelated directory."""
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = subprocess.run(
            [sys.executable, "-m", "accessguard.cli", "demo"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout
        assert "REFUSED row_scope.other_subject" in out
        assert "REFUSED column.not_allowed" in out
        assert "chain intact" in out
        assert "tok_" not in out


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's audit trail: alice and erin read customer 42, mallory twenty customers."""
    audit = tmp_path_factory.mktemp("demo") / "audit.jsonl"
    report = audit.parent / "report.html"
    assert main(["demo", "--audit", str(audit), "--report", str(report)]) == 0
    return audit


class TestAuditQuestions:
    def test_who_read_names_alice_and_erin(
        self, trail: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """who-read --customer 42 --format json lists exactly alice and erin with counts."""
        capsys.readouterr()
        assert (
            main(
                ["audit", "who-read", "--audit", str(trail), "--customer", "42", "--format", "json"]
            )
            == 0
        )
        rows = json.loads(capsys.readouterr().out)
        assert [(r["user"], r["ticket"]) for r in rows] == [("alice", "T-100"), ("erin", "T-300")]
        assert [r["statements"] for r in rows] == [2, 1]
        assert [r["rows"] for r in rows] == [4, 1]
        assert {"columns", "first", "last"} <= set(rows[0])

    def test_what_read_lists_mallorys_twenty_customers(
        self, trail: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """what-read --user mallory lists the twenty customers she was allowed to read."""
        capsys.readouterr()
        assert (
            main(
                [
                    "audit",
                    "what-read",
                    "--audit",
                    str(trail),
                    "--user",
                    "mallory",
                    "--since",
                    "1h",
                    "--format",
                    "json",
                ]
            )
            == 0
        )
        rows = json.loads(capsys.readouterr().out)
        assert sorted(r["customer"] for r in rows) == list(range(100, 120))

    def test_report_is_written(self, trail: Path, tmp_path: Path) -> None:
        """audit report writes one self-contained HTML file that highlights mallory."""
        out = tmp_path / "report.html"
        assert main(["audit", "report", "--audit", str(trail), "--out", str(out)]) == 0
        html = out.read_text()
        assert "far above peers" in html
        assert "mallory" in html
        assert "http://" not in html

    def test_bad_since_is_a_usage_error(self, trail: Path) -> None:
        """An unreadable --since exits 2."""
        assert (
            main(["audit", "what-read", "--audit", str(trail), "--user", "x", "--since", "soon"])
            == 2
        )
