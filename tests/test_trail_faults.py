"""Faults around the trail: a full disk, an unwritable path, a ledger sink that is down."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest

from accessguard import AccessDenied, AuditError, Guard, scenario
from accessguard.audit.pgsink import PostgresSink
from accessguard.audit.sinks import read_events
from accessguard.audit.verification import verify
from accessguard.guard import Session

KEY = bytes(range(32))

# Runs in a child process: RLIMIT_FSIZE caps every file the process writes,
# a real EFBIG from the kernel, as a full disk gives ENOSPC.
_DISK_FULL = textwrap.dedent("""
    import json, os, resource, sys
    from accessguard.audit import Auditor, JsonlSink
    from accessguard.errors import AuditError

    path, key = sys.argv[1], bytes.fromhex(sys.argv[2])
    auditor = Auditor(JsonlSink(path, key=key))
    for n in range(3):
        auditor.emit(**{"event.action": "query", "n": n, "pad": "x" * 200})
    size = os.path.getsize(path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, hard))  # the disk fills mid-line
    refused = 0
    for n in range(3, 6):
        try:
            auditor.emit(**{"event.action": "query", "n": n, "pad": "x" * 200})
        except AuditError:
            refused += 1
    after_full = os.path.getsize(path)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # room again
    auditor.emit(**{"event.action": "query", "n": 6, "pad": "x" * 200})
    print(json.dumps({"size": size, "after_full": after_full, "refused": refused}))
""")


_SPOOL_FULL = textwrap.dedent("""
    import json, os, resource, sys
    from accessguard.audit.pgsink import PostgresSink
    from accessguard.errors import AuditError

    dsn, spool = sys.argv[1], sys.argv[2]
    sink = PostgresSink(dsn, spool=spool, retry_interval=3600)  # the database does not exist
    for n in range(3):
        sink.write([{"event.action": "query", "n": n, "pad": "x" * 200}])
    size = os.path.getsize(spool)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, hard))
    refused = 0
    for n in range(3, 6):
        try:
            sink.write([{"event.action": "query", "n": n, "pad": "x" * 200}])
        except AuditError:
            refused += 1
    after_full = os.path.getsize(spool)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    sink.write([{"event.action": "query", "n": 6, "pad": "x" * 200}])
    print(json.dumps({"size": size, "after_full": after_full, "refused": refused,
                      "spooled": sink.spooled}))
    sink._closed = True
""")


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(scenario.policies_dir(), target)
    (target / "limits.toml").unlink(missing_ok=True)
    return target


class TestDiskFull:
    def test_full_disk_refuses_cleanly_and_recovers(self, tmp_path: Path) -> None:
        """A batch that does not fit is cut back off (no torn line); with room the trail goes on."""
        path = tmp_path / "audit.jsonl"
        out = subprocess.run(  # noqa: S603 - our own interpreter and script
            [sys.executable, "-c", _DISK_FULL, str(path), KEY.hex()],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        report = json.loads(out.stdout)
        assert report["refused"] == 3
        assert report["after_full"] == report["size"]  # nothing half-written stays
        result = verify(path, key=KEY)
        assert result.ok, result.problem
        assert result.torn_line is None
        assert [e["n"] for e in read_events(path)] == [0, 1, 2, 6]

    @pytest.mark.db
    def test_full_disk_under_the_spool_refuses_cleanly_and_recovers(
        self, tmp_path: Path, scenario_dsn: str
    ) -> None:
        """The spool's batches are all or nothing too: no torn line, and it goes on with room."""
        dsn = scenario_dsn.rsplit("/", 1)[0] + "/accessguard_no_such_database"
        spool = tmp_path / "ledger.spool"
        out = subprocess.run(  # noqa: S603 - our own interpreter and script
            [sys.executable, "-c", _SPOOL_FULL, dsn, str(spool)],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        report = json.loads(out.stdout)
        assert report["refused"] == 3
        assert report["after_full"] == report["size"]
        assert report["spooled"] == 4
        lines = spool.read_text().splitlines()
        assert [json.loads(line).get("n") for line in lines[1:]] == [0, 1, 2, 6]


class TestConstruction:
    def test_unwritable_audit_path_fails_at_construction(
        self, policies: Path, tmp_path: Path
    ) -> None:
        """Guard(...) raises AuditError when the audit file cannot be written, not later."""
        with pytest.raises(AuditError, match="cannot write the audit file"):
            Guard.from_directory(
                policies, tickets=scenario.tickets(), audit=tmp_path / "missing" / "audit.jsonl"
            )

    def test_unwritable_ledger_path_fails_at_construction(
        self, policies: Path, tmp_path: Path
    ) -> None:
        """A ledger file that cannot be written fails construction too."""
        with pytest.raises(AuditError):
            Guard.from_directory(
                policies,
                tickets=scenario.tickets(),
                audit=tmp_path / "audit.jsonl",
                ledger=str(tmp_path / "missing" / "ledger.jsonl"),
            )

    @pytest.mark.db
    def test_unreachable_ledger_database_without_spool_fails_at_construction(
        self, policies: Path, tmp_path: Path, scenario_dsn: str
    ) -> None:
        """A PostgreSQL ledger that cannot be reached, with no spool, fails construction."""
        dsn = scenario_dsn.rsplit("/", 1)[0] + "/accessguard_no_such_database"
        with pytest.raises(AuditError, match="no spool"):
            Guard.from_directory(
                policies, tickets=scenario.tickets(), audit=tmp_path / "audit.jsonl", ledger=dsn
            )

    def test_tampered_trail_fails_at_construction(self, policies: Path, tmp_path: Path) -> None:
        """A guard does not start on a trail whose tail was cut below its checkpoint."""
        audit = tmp_path / "audit.jsonl"
        guard = Guard.from_directory(policies, tickets=scenario.tickets(), audit=audit)
        with pytest.raises(AccessDenied):
            guard.authorize(
                "SELECT email FROM customers",
                None,
                Session(user="alice", ticket="T-100"),
                dialect="postgres",
            )
        guard.close()
        audit.write_text("")
        with pytest.raises(AuditError, match="refusing to extend"):
            Guard.from_directory(policies, tickets=scenario.tickets(), audit=audit)


@pytest.mark.db
class TestLedgerRefusals:
    def test_ledger_refusal_is_audited_in_the_audit_sink(
        self, policies: Path, tmp_path: Path, scenario_dsn: str
    ) -> None:
        """With the ledger's database down and its spool gone, each refusal is in the audit file."""
        spool_dir = tmp_path / "spool"
        spool_dir.mkdir()
        ledger = PostgresSink(scenario_dsn, spool=spool_dir / "ledger.spool")
        ledger.setup()
        audit = tmp_path / "audit.jsonl"
        guard = Guard.from_directory(
            policies, tickets=scenario.tickets(), audit=audit, ledger=ledger, ledger_interval=3600
        )
        session = Session(user="alice", ticket="T-100")
        q = "SELECT name FROM customers WHERE id = 42"
        guard.authorize(q, None, session, dialect="postgres")
        name = scenario_dsn.rsplit("/", 1)[1]
        admin = scenario_dsn.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(
                    psycopg.sql.Identifier(name)
                )
            )
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                [name],
            )
        shutil.rmtree(spool_dir)  # the spool cannot be written either
        try:
            with pytest.raises(AuditError):
                guard.ledger.flush()
            for _ in range(3):
                with pytest.raises(AuditError) as info:
                    guard.authorize(q, None, session, dialect="postgres")
                assert info.value.reason == "audit.sink_unavailable"
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(
                    psycopg.sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
                        psycopg.sql.Identifier(name)
                    )
                )
        refusals = [e for e in read_events(audit) if e.get("event.action") == "query"]
        assert [e["event.reason"] for e in refusals] == ["audit.sink_unavailable"] * 3
        assert {e["user.name"] for e in refusals} == {"alice"}
        assert {e["accessguard.ticket.id"] for e in refusals} == {"T-100"}
        assert verify(audit, key=None).ok
        spool_dir.mkdir()
        guard.close()
