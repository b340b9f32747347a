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
from accessguard.cli import main

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
