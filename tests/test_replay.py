"""``accessguard replay`` and throttled statements: refused by volume, never counted as allowed."""

from __future__ import annotations

import argparse
import contextlib
import shutil
from pathlib import Path

import pytest

from accessguard import AccessGuardError, Guard, scenario
from accessguard.cli.tools import replay_command
from accessguard.guard import Session
from accessguard.investigate.replay import NEWLY_DENIED, replay

PHONE_GRANT = "p, support_agent, order_issue, customers.phone, read\n"


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """The scenario's policies with one distinct customer per hour for support_agent."""
    target = tmp_path / "policies"
    shutil.copytree(scenario.policies_dir(), target)
    (target / "limits.toml").write_text(
        '[roles.support_agent]\ndistinct_customers = { count = 1, per = "1 hour" }\n',
        encoding="utf-8",
    )
    return target


@pytest.fixture
def audit(policies: Path, tmp_path: Path) -> Path:
    """mallory reads customer 100 (allowed), then 101 and 102 (throttled: one an hour)."""
    path = tmp_path / "audit.jsonl"
    with Guard.from_directory(policies, tickets=scenario.tickets(), audit=path) as guard:
        for n in range(3):
            session = Session(user="mallory", ticket=f"T-4{n:02d}")
            sql = f"SELECT phone FROM customers WHERE id = {100 + n}"
            with contextlib.suppress(AccessGuardError):
                guard.authorize(sql, None, session, dialect="postgres")
    return path


def without_phone(policies: Path, tmp_path: Path) -> Path:
    """A proposed copy of ``policies`` without support_agent's customers.phone grant."""
    target = tmp_path / "proposed"
    shutil.copytree(policies, target)
    policy = target / "policy.csv"
    text = policy.read_text(encoding="utf-8")
    assert PHONE_GRANT in text
    policy.write_text(text.replace(PHONE_GRANT, ""), encoding="utf-8")
    return target


class TestThrottledInReplay:
    def test_recorded_as_throttled_not_allowed(self, audit: Path, policies: Path) -> None:
        """The record counts 1 allowed and 2 throttled statements, not 3 allowed."""
        report = replay(audit, None, policies)
        assert report.recorded == (("allowed", 1), ("throttled", 2))
        assert report.statements == 3
        text = report.render()
        assert "(recorded: 1 allowed, 2 throttled)" in text
        assert "throttled: 2 (their grants and row scope passed" in text

    def test_unchanged_under_the_same_policy(self, audit: Path, policies: Path) -> None:
        """Re-decided under the policy that throttled them, throttled reads change nothing."""
        report = replay(audit, policies, policies)
        assert (report.unchanged, report.changes) == (3, ())

    def test_a_removed_grant_newly_denies_them(
        self, audit: Path, policies: Path, tmp_path: Path
    ) -> None:
        """Their grants had passed: without the grant, all three are newly denied."""
        report = replay(audit, None, without_phone(policies, tmp_path))
        assert [(c.change, c.user, c.reason, c.statements) for c in report.changes] == [
            (NEWLY_DENIED, "mallory", "column.not_allowed", 3)
        ]
        assert report.recorded == (("allowed", 1), ("throttled", 2))

    def test_never_newly_allowed(self, policies: Path, tmp_path: Path) -> None:
        """dave's third read of products in a minute was throttled: replayed, it is unchanged."""
        (policies / "limits.toml").write_text(
            '[roles.everyone]\nstatements = { count = 2, per = "1 minute" }\n', encoding="utf-8"
        )
        path = tmp_path / "dave.jsonl"
        with Guard.from_directory(policies, tickets=scenario.tickets(), audit=path) as guard:
            for _ in range(3):
                with contextlib.suppress(AccessGuardError):
                    guard.authorize(
                        "SELECT title FROM products", None, Session(user="dave"), dialect="postgres"
                    )
        report = replay(path, None, policies)  # products: allowed exactly, no row scope
        assert report.recorded == (("throttled", 1),)
        assert (report.unchanged, report.changes) == (1, ())

    def test_command_prints_the_throttled(self, audit: Path, policies: Path) -> None:
        """The CLI report names the throttled statements."""
        args = argparse.Namespace(audit=audit, current=None, policies=policies, tickets=None)
        code, text = replay_command(args)
        assert code == 0
        assert "recorded: 1 allowed, 2 throttled" in text
