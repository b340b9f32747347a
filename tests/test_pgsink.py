"""The PostgreSQL audit/ledger sink: chained, partitioned, spooling through outages."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from accessguard import AuditError, Guard, scenario
from accessguard.audit.pgsink import PostgresSink
from accessguard.audit.pgtables import read_events
from accessguard.audit.sinks import verify_events
from accessguard.guard import Session
from accessguard.testing import MemoryAuditSink

pytestmark = pytest.mark.db


def _dbname(dsn: str) -> str:
    return dsn.rsplit("/", 1)[1]


def _outage(dsn: str, *, down: bool) -> None:
    """Refuse (or allow again) new connections to the sink's database: a real outage."""
    admin_dsn = dsn.rsplit("/", 1)[0] + "/postgres"
    name = _dbname(dsn)
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            psycopg.sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                psycopg.sql.Identifier(name), psycopg.sql.SQL("false" if down else "true")
            )
        )
        if down:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                [name],
            )


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(scenario.policies_dir(), target)
    (target / "limits.toml").unlink(missing_ok=True)
    return target


class TestPostgresSink:
    def test_events_are_chained_and_verifiable(self, scenario_dsn: str) -> None:
        """Batches written to the table link into one chain that verifies."""
        sink = PostgresSink(scenario_dsn)
        sink.setup()
        for n in range(3):
            sink.write(
                [{"event.action": "query", "n": n, "@timestamp": "2026-11-24T10:00:00+00:00"}]
            )
        sink.write([{"event.action": "query", "n": 9, "@timestamp": "2026-12-01T00:00:00+00:00"}])
        events = list(read_events(scenario_dsn))
        assert [e["n"] for e in events] == [0, 1, 2, 9]
        assert verify_events(enumerate(events, 1)).ok
        with psycopg.connect(scenario_dsn) as conn:
            parts = {
                r[0]
                for r in conn.execute(
                    "SELECT relname FROM pg_class "
                    "WHERE relkind = 'r' AND relname LIKE 'events_2026_%'"
                )
            }
        assert parts == {"events_2026_11", "events_2026_12"}
        sink.close()

    def test_outage_spools_and_delivers_everything(
        self, scenario_dsn: str, policies: Path, tmp_path: Path
    ) -> None:
        """With the server refusing connections mid-run, nothing is lost once it is back."""
        sink = PostgresSink(scenario_dsn, spool=tmp_path / "spool.jsonl")
        sink.setup()
        guard = Guard.from_directory(
            policies, tickets=scenario.tickets(), audit=sink, ledger_interval=3600
        )
        session = Session(user="alice", ticket="T-100")
        q = "SELECT name FROM customers WHERE id = $1"
        for _ in range(5):
            guard.authorize(q, [42], session, dialect="postgres")
        guard.ledger.flush()
        _outage(scenario_dsn, down=True)
        try:
            for _ in range(7):
                guard.authorize(q, [42], session, dialect="postgres")
            guard.ledger.flush()
            assert sink.spooled == 1
        finally:
            _outage(scenario_dsn, down=False)
        for _ in range(3):
            guard.authorize(q, [42], session, dialect="postgres")
        guard.close()
        events = [e for e in read_events(scenario_dsn) if e["event.action"] == "ledger"]
        assert sum(e["accessguard.statements"] for e in events) == 15
        assert verify_events(enumerate(read_events(scenario_dsn), 1)).ok
        assert sink.spooled == 0

    def test_no_spool_refuses_scoped_statements(self, scenario_dsn: str, policies: Path) -> None:
        """If ledger entries cannot be kept at all, statements on customer data are refused."""
        sink = PostgresSink(scenario_dsn)
        sink.setup()
        guard = Guard.from_directory(
            policies, tickets=scenario.tickets(), audit=sink, ledger_interval=3600
        )
        session = Session(user="alice", ticket="T-100")
        q = "SELECT name FROM customers WHERE id = 42"
        guard.authorize(q, None, session, dialect="postgres")
        _outage(scenario_dsn, down=True)
        try:
            with pytest.raises(AuditError):
                guard.ledger.flush()
            with pytest.raises(AuditError) as info:
                guard.authorize(q, None, session, dialect="postgres")
            assert info.value.reason == "audit.sink_unavailable"
            # a statement on no customer's data still runs
            guard.authorize(
                "SELECT title FROM products WHERE id = 1", None, session, dialect="postgres"
            )
        finally:
            _outage(scenario_dsn, down=False)
        guard.authorize(q, None, session, dialect="postgres")
        guard.close()
        events = [e for e in read_events(scenario_dsn) if e["event.action"] == "ledger"]
        assert sum(e["accessguard.statements"] for e in events) == 2

    def test_writer_role_may_only_insert_and_select(self, scenario_dsn: str) -> None:
        """setup(writer_role=...) grants insert and select, not update or delete."""
        with psycopg.connect(scenario_dsn, autocommit=True) as conn:
            conn.execute("DROP ROLE IF EXISTS ag_writer_test")
            conn.execute("CREATE ROLE ag_writer_test LOGIN")
        try:
            PostgresSink(scenario_dsn).setup(writer_role="ag_writer_test")
            with psycopg.connect(scenario_dsn, autocommit=True) as conn:
                privs = {
                    p: conn.execute(
                        "SELECT has_table_privilege('ag_writer_test', 'accessguard.events', %s)",
                        [p],
                    ).fetchone()[0]  # type: ignore[index]
                    for p in ("INSERT", "SELECT", "UPDATE", "DELETE", "TRUNCATE")
                }
            assert privs == {
                "INSERT": True,
                "SELECT": True,
                "UPDATE": False,
                "DELETE": False,
                "TRUNCATE": False,
            }
        finally:
            with psycopg.connect(scenario_dsn, autocommit=True) as conn:
                conn.execute("DROP OWNED BY ag_writer_test")
                conn.execute("DROP ROLE ag_writer_test")

    def test_ledger_dsn_names_the_postgres_sink(self, scenario_dsn: str, policies: Path) -> None:
        """ledger='postgresql://...' writes the ledger to the PostgreSQL sink (contract)."""
        guard = Guard.from_directory(
            policies, tickets=scenario.tickets(), ledger=scenario_dsn, audit=MemoryAuditSink()
        )
        guard.authorize(
            "SELECT name FROM customers WHERE id = 42",
            None,
            Session(user="alice", ticket="T-100"),
            dialect="postgres",
        )
        guard.close()
        (event,) = read_events(scenario_dsn)
        assert event["accessguard.subject.id"] == 42
        assert event["accessguard.statements"] == 1
