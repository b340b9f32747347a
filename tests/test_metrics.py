"""Prometheus metrics: decisions, rows, throttles and latencies are counted."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import prometheus_client
import pytest

from accessguard import AccessDenied, Guard, scenario
from accessguard.guard import Session
from accessguard.testing import MemoryAuditSink


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    value = prometheus_client.REGISTRY.get_sample_value(name, labels or {})
    return value or 0.0


def unlimited_guard(tmp_path: Path) -> Guard:
    """The scenario's guard without volume limits (thousands of statements)."""
    policies = tmp_path / "policies"
    shutil.copytree(scenario.policies_dir(), policies)
    (policies / "limits.toml").unlink()
    return Guard.from_directory(policies, tickets=scenario.tickets(), audit=MemoryAuditSink())


class TestMetrics:
    def test_decisions_and_latencies_are_counted(self, tmp_path: Path) -> None:
        """Allowed and denied decisions and first-sight analysis show up in the registry."""
        guard = unlimited_guard(tmp_path)
        allowed = sample("accessguard_decisions_total", {"outcome": "allowed", "reason": ""})
        denied = sample(
            "accessguard_decisions_total", {"outcome": "denied", "reason": "row_scope.unbound"}
        )
        analyses = sample("accessguard_analysis_seconds_count")
        session = Session(user="alice", ticket="T-100")
        for _ in range(3):
            guard.authorize(
                "SELECT name FROM customers WHERE id = 42 /* m */",
                None,
                session,
                dialect="postgres",
            )
        with pytest.raises(AccessDenied):
            guard.authorize(
                "SELECT email FROM customers /* m */", None, session, dialect="postgres"
            )
        assert (
            sample("accessguard_decisions_total", {"outcome": "allowed", "reason": ""})
            == allowed + 3
        )
        assert (
            sample(
                "accessguard_decisions_total", {"outcome": "denied", "reason": "row_scope.unbound"}
            )
            == denied + 1
        )
        assert sample("accessguard_analysis_seconds_count") == analyses + 2
        guard.close()

    def test_allowed_counts_add_up_across_threads(self, tmp_path: Path) -> None:
        """Each thread counts in its own cell; a scrape sees every thread's statements."""
        guard = unlimited_guard(tmp_path)
        before = sample("accessguard_decisions_total", {"outcome": "allowed", "reason": ""})
        session = Session(user="alice", ticket="T-100")

        def work() -> None:
            for _ in range(500):
                guard.authorize(
                    "SELECT name FROM customers WHERE id = $1", [42], session, dialect="postgres"
                )

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = sample("accessguard_decisions_total", {"outcome": "allowed", "reason": ""})
        assert after == before + 2000
        guard.close()
