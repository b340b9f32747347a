"""The side-by-side benchmark (benchmarks/sidebyside.py), run tiny: shape and rows, no timing."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

from accessguard import Guard, scenario
from benchmarks import rls, sidebyside
from benchmarks.contenders import ORDER, WORKLOADS, opened, sql_data_guard
from benchmarks.environment import bench_database, policy_copy
from benchmarks.statements import POINT

if TYPE_CHECKING:
    from collections.abc import Iterator

    from casefiles import PgServerLike

pytestmark = pytest.mark.db

#: contenders a run has here (sql-data-guard only where it is installed)
EXPECTED = [c for c in ORDER if c != "sql_data_guard" or sql_data_guard() is not None]


class Side:
    def __init__(self, dsn: str, db: rls.RlsDatabase, guard: Guard, tmp: Path) -> None:
        self.dsn, self.db, self.guard, self.tmp = dsn, db, guard, tmp


@pytest.fixture
def side(pg_server: PgServerLike, tmp_path: Path) -> Iterator[Side]:
    """The plain scenario database, its RLS copy with roles, and a guard without limits."""
    name = f"ag_side_{uuid.uuid4().hex[:8]}"
    with (
        bench_database(pg_server.dsn(), name) as dsn,
        rls.rls_database(pg_server.dsn(), name) as db,
        Guard.from_directory(
            policy_copy(tmp_path), tickets=scenario.tickets(), audit=tmp_path / "audit"
        ) as guard,
    ):
        yield Side(dsn, db, guard, tmp_path)


class TestRows:
    def test_every_contender_returns_raw_psycopgs_rows(self, side: Side) -> None:
        """Every contender returns exactly raw psycopg's rows for alice on T-100, per workload."""
        with opened(dsn=side.dsn, db=side.db, guard=side.guard, tmp=side.tmp) as contenders:
            assert [c.name for c in contenders] == EXPECTED
            for w in WORKLOADS:
                raw = contenders[0].make(w)
                assert raw is not None
                expected = raw(7)
                assert expected, w.name
                for c in contenders[1:]:
                    step = c.make(w)
                    assert step is not None, (w.name, c.name)
                    assert step(7) == expected, (w.name, c.name)

    def test_rls_roles_filter_and_refuse(self, side: Side) -> None:
        """The RLS roles see nothing of customer 42 without the right context, nor card_token."""
        with rls.connect_customer(side.db, 7) as other:
            assert other.execute(POINT, [42]).fetchall() == []
        with rls.connect_customer(side.db, None) as unset:
            assert unset.execute(POINT, [42]).fetchall() == []
        for user, ticket in (("alice", "T-101"), ("bob", "T-100"), ("alice", "T-999")):
            with rls.connect_ticket(side.db, user, ticket) as conn:
                assert conn.execute(POINT, [42]).fetchall() == [], (user, ticket)
        with (
            rls.connect_customer(side.db, 42) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            conn.execute("SELECT card_token FROM payments WHERE customer_id = 42")


class TestHarness:
    def test_tiny_run_writes_a_well_formed_result(
        self, pg_server: PgServerLike, tmp_path: Path
    ) -> None:
        """A tiny run writes JSON rows per workload and contender, loads, and a Markdown table."""
        out, md = tmp_path / "side.json", tmp_path / "side.md"
        name = f"ag_side_{uuid.uuid4().hex[:8]}"
        args = ["--dsn", pg_server.dsn(), "--dbname", name, "--count", "3", "--rounds", "1"]
        sidebyside.main([*args, "--runs", "2", "--json", str(out), "--markdown", str(md)])
        data = json.loads(out.read_text(encoding="utf-8"))
        assert data["benchmark"] == "sidebyside"
        assert len(data["settings"]["loads"]) == 2
        assert all(len(load["start"]) == 3 for load in data["settings"]["loads"])
        assert "load_avg_start" in data["machine"]
        got = {(r["details"]["workload"], r["details"]["contender"]) for r in data["results"]}
        wanted = {(w.name, c) for w in WORKLOADS for c in EXPECTED[1:]}
        wanted |= {("first_sight", "accessguard")}
        if "sql_data_guard" in EXPECTED:
            wanted |= {("first_sight", "sql_data_guard")}
        assert got == wanted
        for r in data["results"]:
            assert r["ratio"] > 0
            assert r["n"] == 6
            assert len(r["details"]["run_ratios"]) == 2
        table = md.read_text(encoding="utf-8")
        assert table.startswith("| workload | raw psycopg (median) |")
        labels = [line.split(" | ")[0][2:] for line in table.splitlines() if line.startswith("| ")]
        assert labels == ["workload", *(w.label for w in WORKLOADS), sidebyside.FIRST_SIGHT[1]]
        with psycopg.connect(pg_server.dsn()) as admin:
            left = admin.execute(
                "SELECT count(*) FROM pg_roles WHERE rolname LIKE %s", [f"{name}%"]
            ).fetchone()
        assert left == (0,)
