"""Prometheus metrics: decisions, rows, throttles and latencies are counted."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from accessguard import AccessDenied, Guard, metrics, scenario
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

    def test_audited_allowed_statements_are_counted_once(self, tmp_path: Path) -> None:
        """With audit_allowed, an allowed statement is counted once, not again by its audit."""
        policies = tmp_path / "policies"
        shutil.copytree(scenario.policies_dir(), policies)
        (policies / "limits.toml").unlink()
        guard = Guard.from_directory(
            policies, tickets=scenario.tickets(), audit=MemoryAuditSink(), audit_allowed=True
        )
        before = sample("accessguard_decisions_total", {"outcome": "allowed", "reason": ""})
        session = Session(user="alice", ticket="T-100")
        for _ in range(3):
            guard.authorize(
                "SELECT name FROM customers WHERE id = $1", [42], session, dialect="postgres"
            )
        after = sample("accessguard_decisions_total", {"outcome": "allowed", "reason": ""})
        assert after == before + 3
        guard.close()


#: one worker process: ``allowed`` allowed statements and ``denied`` refusals, then
#: (with ``fork``) a forked child that decides ``allowed`` more and flushes before _exit
WORKER = """
import os, shutil, sys, tempfile
from pathlib import Path
from accessguard import AccessDenied, Guard, metrics, scenario
from accessguard.guard import Session
from accessguard.testing import MemoryAuditSink
from accessguard import metrics

allowed, denied, fork = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "fork"
assert metrics.MULTIPROCESS
policies = Path(tempfile.mkdtemp()) / "policies"
shutil.copytree(scenario.policies_dir(), policies)
(policies / "limits.toml").unlink()
guard = Guard.from_directory(policies, tickets=scenario.tickets(), audit=MemoryAuditSink())
session = Session(user="alice", ticket="T-100")

def work():
    for _ in range(allowed):
        guard.authorize(
            "SELECT name FROM customers WHERE id = $1", [42], session, dialect="postgres"
        )

work()
for _ in range(denied):
    try:
        guard.authorize("SELECT email FROM customers", None, session, dialect="postgres")
    except AccessDenied:
        pass
if fork:
    pid = os.fork()
    if pid == 0:
        work()
        metrics.DECISIONS.flush()
        os._exit(0)
    os.waitpid(pid, 0)
guard.close()
"""


def run_workers(directory: Path, *args: tuple[int, int, str]) -> None:
    """Run worker processes at once with PROMETHEUS_MULTIPROC_DIR; each must exit 0."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    procs = [
        subprocess.Popen(  # noqa: S603 - our own interpreter and script
            [sys.executable, "-c", WORKER, str(allowed), str(denied), fork], env=env
        )
        for allowed, denied, fork in args
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * len(procs)


def scrape(directory: Path) -> dict[tuple[str, str], float]:
    """accessguard_decisions_total by (outcome, reason), as a multiprocess collector reads it."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return {
        (s.labels["outcome"], s.labels["reason"]): s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name == "accessguard_decisions_total"
    }


class Flushes(metrics.Decisions):
    """Decisions that tell when they have flushed (the flusher thread's work)."""

    def __init__(self, shared: prometheus_client.Counter) -> None:
        super().__init__(shared)
        self.flushed = threading.Event()

    def flush(self) -> None:
        super().flush()
        self.flushed.set()


class TestMultiprocess:
    def test_the_flusher_thread_flushes_while_the_process_runs(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Allowed statements reach the shared Counter without waiting for the process to exit."""
        registry = CollectorRegistry()
        shared = prometheus_client.Counter(
            "decisions", "test", ["outcome", "reason"], registry=registry
        )
        decisions = Flushes(shared)
        for _ in range(5):
            decisions.allowed()
        decisions.decided("denied", "row_scope.unbound")
        monkeypatch.setattr(metrics, "FLUSH_SECONDS", 0.001)
        flusher = metrics.Flusher(decisions)
        try:
            assert decisions.flushed.wait(timeout=30)
        finally:
            flusher.at_exit()
        assert (
            registry.get_sample_value("decisions_total", {"outcome": "allowed", "reason": ""}) == 5
        )
        assert (
            registry.get_sample_value(
                "decisions_total", {"outcome": "denied", "reason": "row_scope.unbound"}
            )
            == 1
        )

    def test_worker_processes_add_up_exactly(self, tmp_path: Path) -> None:
        """Two worker processes' allowed and denied decisions reach the multiprocess collector."""
        run_workers(tmp_path, (700, 2, "-"), (300, 1, "-"))
        totals = scrape(tmp_path)
        assert totals[("allowed", "")] == 1000
        assert totals[("denied", "row_scope.unbound")] == 3

    def test_a_forked_worker_counts_only_its_own(self, tmp_path: Path) -> None:
        """A child forked after 40 allowed statements adds its own 40, not the parent's again."""
        run_workers(tmp_path, (40, 0, "fork"))
        assert scrape(tmp_path)[("allowed", "")] == 80
