"""The access ledger: exact counts under concurrency, flushed on close and at exit."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from accessguard import Guard, scenario
from accessguard.audit.sinks import read_events, verify
from accessguard.guard import Session


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """The scenario's policy without volume limits (thousands of statements)."""
    target = tmp_path / "policies"
    shutil.copytree(scenario.policies_dir(), target)
    (target / "limits.toml").unlink()
    return target


def ledger_events(path: Path) -> list[dict[str, object]]:
    return [e for e in read_events(path) if e.get("event.action") == "ledger"]


class TestExactness:
    def test_eight_threads_ten_thousand_statements_each(
        self, policies: Path, tmp_path: Path
    ) -> None:
        """8 x 10,000 statements with fetched rows: totals are exact and the chain verifies."""
        audit = tmp_path / "audit.jsonl"
        guard = Guard.from_directory(
            policies, tickets=scenario.tickets(), audit=audit, ledger_interval=0.005
        )
        executed: list[tuple[int, int]] = []
        lock = threading.Lock()

        def work(worker: int) -> None:
            rng = random.Random(worker)  # noqa: S311 - reproducible test data
            statements = rows = 0
            for i in range(10_000):
                if worker % 2:
                    customer = 100 + (i % 20)
                    session = Session(user="mallory", ticket=f"T-4{customer - 100:02d}")
                else:
                    customer = 42
                    session = Session(user="alice", ticket="T-100")
                ok = guard.authorize(
                    "SELECT id, status FROM orders WHERE customer_id = $1",
                    [customer],
                    session,
                    dialect="postgres",
                )
                fetched = rng.randint(0, 3)
                assert ok.tally is not None
                ok.tally.add(fetched)
                statements += 1
                rows += fetched
            with lock:
                executed.append((statements, rows))

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        guard.close()
        events = ledger_events(audit)
        assert sum(int(e["accessguard.statements"]) for e in events) == 80_000  # type: ignore[call-overload]
        assert sum(int(e["accessguard.rows"]) for e in events) == sum(r for _s, r in executed)  # type: ignore[call-overload]
        assert len(events) > 8  # flushed in many batches while the threads ran
        assert verify(audit).ok
        mallory = {e["accessguard.subject.id"] for e in events if e["user.name"] == "mallory"}
        assert mallory == set(range(100, 120))


class TestFlushing:
    def test_full_buffer_flushes_in_the_caller(self, policies: Path, tmp_path: Path) -> None:
        """With max_pending reached, recording flushes synchronously rather than dropping."""
        audit = tmp_path / "audit.jsonl"
        guard = Guard.from_directory(
            policies, tickets=scenario.tickets(), audit=audit, ledger_interval=3600
        )
        guard.ledger._max_pending = 2
        for i in range(3):
            guard.authorize(
                f"SELECT name FROM customers WHERE id = {100 + i}",
                None,
                Session(user="mallory", ticket=f"T-4{i:02d}"),
                dialect="postgres",
            )
        assert len(ledger_events(audit)) >= 2
        guard.close()
        assert sum(int(e["accessguard.statements"]) for e in ledger_events(audit)) == 3  # type: ignore[call-overload]

    def test_interpreter_exit_flushes(self, policies: Path, tmp_path: Path) -> None:
        """Entries still pending when the program exits are written by the atexit hook."""
        audit = tmp_path / "audit.jsonl"
        script = textwrap.dedent(f"""
            from accessguard import Guard, scenario
            from accessguard.guard import Session
            guard = Guard.from_directory({str(policies)!r}, tickets=scenario.tickets(),
                                         audit={str(audit)!r}, ledger_interval=3600)
            for _ in range(4):
                guard.authorize("SELECT name FROM customers WHERE id = 42", None,
                                Session(user="alice", ticket="T-100"), dialect="postgres")
        """)
        subprocess.run([sys.executable, "-c", script], check=True, timeout=60)  # noqa: S603
        events = ledger_events(audit)
        assert [e["accessguard.statements"] for e in events] == [4]

    def test_pseudonymised_subjects(self, policies: Path, tmp_path: Path) -> None:
        """With a pseudonym key the ledger stores a keyed hash instead of the customer id."""
        audit = tmp_path / "audit.jsonl"
        guard = Guard.from_directory(
            policies, tickets=scenario.tickets(), audit=audit, ledger_pseudonym_key=b"k" * 32
        )
        guard.authorize(
            "SELECT name FROM customers WHERE id = 42",
            None,
            Session(user="alice", ticket="T-100"),
            dialect="postgres",
        )
        guard.close()
        (event,) = ledger_events(audit)
        subject = str(event["accessguard.subject.id"])
        assert subject != "42"
        assert len(subject) == 64


class TestRowsWritten:
    @pytest.mark.db
    def test_an_update_ledgers_the_rows_it_changed(
        self, policies: Path, tmp_path: Path, scenario_dsn: str
    ) -> None:
        """An UPDATE of two orders (no RETURNING) is in the ledger with 2 rows, not 0."""
        audit = tmp_path / "audit.jsonl"
        with (
            Guard.from_directory(policies, tickets=scenario.tickets(), audit=audit) as guard,
            guard.connect(scenario_dsn, user="alice", ticket="T-100") as conn,
        ):
            cur = conn.execute(
                "UPDATE orders SET status = 'pending' WHERE customer_id = 42 AND id IN (421, 422)"
            )
            assert cur.rowcount == 2
        entries = ledger_events(audit)  # the update is the only statement
        assert sum(int(str(e["accessguard.rows"])) for e in entries) == 2

    def test_an_update_through_dbapi_ledgers_its_rows(self, policies: Path, tmp_path: Path) -> None:
        """The same on a wrapped sqlite3 connection, executemany included."""
        import sqlite3

        audit = tmp_path / "audit.jsonl"
        db = sqlite3.connect(":memory:")
        scenario.load_sqlite(db)
        with Guard.from_directory(policies, tickets=scenario.tickets(), audit=audit) as guard:
            conn = guard.wrap(db, user="alice", ticket="T-100")
            conn.execute("UPDATE orders SET status = 'x' WHERE customer_id = 42 AND id = 421")
            cur = conn.cursor()
            cur.executemany(
                "UPDATE orders SET status = ? WHERE customer_id = 42 AND id = ?",
                [("y", 422), ("z", 423)],
            )
        entries = ledger_events(audit)  # the updates are the only statements
        assert sum(int(str(e["accessguard.statements"])) for e in entries) == 3
        assert sum(int(str(e["accessguard.rows"])) for e in entries) == 3
