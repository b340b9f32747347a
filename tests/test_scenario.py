"""The reference scenario shipped in accessguard.scenario loads and matches scenario.md."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from accessguard import scenario
from accessguard.tickets.stores import Ticket

if TYPE_CHECKING:
    from collections.abc import Iterator

_TICKET_SQL = "SELECT id, assignee, kind, status, customer_id, product_id FROM tickets ORDER BY id"
_FIELDS = ("id", "assignee", "kind", "status", "customer_id", "product_id")


def _tickets_from_rows(rows: list[tuple[Any, ...]]) -> list[Ticket]:
    return [Ticket.from_mapping(dict(zip(_FIELDS, row, strict=True))) for row in rows]


@pytest.fixture
def sqlite_conn() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:")
    try:
        scenario.load_sqlite(conn)
        yield conn
    finally:
        conn.close()


class TestFiles:
    def test_policies_dir_exists(self) -> None:
        """policies_dir() finds the policy directory of a checkout or wheel."""
        assert scenario.policies_dir().is_dir()

    def test_tickets_match_scenario(self) -> None:
        """tickets() returns the 34 tickets of scenario.md with their people and kinds."""
        tickets = {t.id: t for t in scenario.tickets()}
        assert len(tickets) == 34
        assert tickets["T-100"] == Ticket(
            id="T-100", assignee="alice", kind="order_issue", status="open", customer_id=42
        )
        assert not tickets["T-101"].is_open
        assert tickets["T-101"].customer_id == 7
        assert tickets["T-200"] == Ticket(
            id="T-200", assignee="carol", kind="review_abuse", status="open", product_id=9
        )
        assert tickets["T-300"].kind == "account_recovery"
        assert tickets["T-300"].customer_id == 42
        mallory = sorted(t.customer_id or 0 for t in tickets.values() if t.assignee == "mallory")
        assert mallory == list(range(100, 130))


class TestSqlite:
    def test_counts(self, sqlite_conn: sqlite3.Connection) -> None:
        """The seed gives SQLite 150 customers, 450 orders and 34 tickets."""
        count = {
            table: sqlite_conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("customers", "orders", "payments", "tickets")
        }
        assert count == {"customers": 150, "orders": 450, "payments": 450, "tickets": 34}

    def test_tickets_equal_rows(self, sqlite_conn: sqlite3.Connection) -> None:
        """The tickets table holds exactly the tickets of tickets.yaml."""
        rows = sqlite_conn.execute(_TICKET_SQL).fetchall()
        assert _tickets_from_rows(rows) == sorted(scenario.tickets(), key=lambda t: t.id)

    def test_reload_is_idempotent(self, sqlite_conn: sqlite3.Connection) -> None:
        """Loading the scenario twice leaves one copy of the data."""
        scenario.load_sqlite(sqlite_conn)
        assert sqlite_conn.execute("SELECT count(*) FROM customers").fetchone()[0] == 150

    def test_booleans_are_integers(self, sqlite_conn: sqlite3.Connection) -> None:
        """TRUE/FALSE in the seed become 1/0 in SQLite."""
        banned = sqlite_conn.execute("SELECT banned FROM account_flags WHERE customer_id = 42")
        assert banned.fetchone()[0] == 1


@pytest.mark.db
class TestPostgres:
    def test_counts(self, scenario_dsn: str) -> None:
        """The seed gives PostgreSQL 150 customers (with 7, 42, 100..129) and 34 tickets."""
        with psycopg.connect(scenario_dsn) as conn:
            assert conn.execute("SELECT count(*) FROM customers").fetchone() == (150,)
            assert conn.execute("SELECT count(*) FROM tickets").fetchone() == (34,)
            ids = conn.execute(
                "SELECT count(*) FROM customers WHERE id IN (7, 42) OR id BETWEEN 100 AND 129"
            ).fetchone()
            assert ids == (32,)

    def test_closed_ticket(self, scenario_dsn: str) -> None:
        """T-101 is closed and has a closing time; T-100 is open."""
        with psycopg.connect(scenario_dsn) as conn:
            rows = conn.execute(
                "SELECT id, status, closed_at IS NOT NULL FROM tickets"
                " WHERE id IN ('T-100', 'T-101') ORDER BY id"
            ).fetchall()
        assert rows == [("T-100", "open", False), ("T-101", "closed", True)]

    def test_tickets_equal_rows(self, scenario_dsn: str) -> None:
        """tickets() returns the same 34 tickets as the tickets table."""
        with psycopg.connect(scenario_dsn) as conn:
            rows = conn.execute(_TICKET_SQL).fetchall()
        assert _tickets_from_rows(rows) == sorted(scenario.tickets(), key=lambda t: t.id)

    def test_attack_fixtures(self, scenario_dsn: str) -> None:
        """archive.customers and public.get_customer_email exist for the attack tests."""
        with psycopg.connect(scenario_dsn) as conn:
            row = conn.execute("SELECT email FROM archive.customers WHERE id = 42").fetchone()
            assert row == ("old0042@archive.example",)
            email = conn.execute("SELECT public.get_customer_email(7)").fetchone()
            assert email == ("c0007@mail.example",)

    def test_copy_is_fresh(self, scenario_dsn: str) -> None:
        """Each test gets its own copy: a write here is not seen by the template."""
        with psycopg.connect(scenario_dsn) as conn:
            conn.execute("DELETE FROM account_flags")
            conn.commit()
            assert conn.execute("SELECT count(*) FROM account_flags").fetchone() == (0,)

    def test_copy_is_fresh_again(self, scenario_dsn: str) -> None:
        """A later copy still has every account flag (13 rows)."""
        with psycopg.connect(scenario_dsn) as conn:
            assert conn.execute("SELECT count(*) FROM account_flags").fetchone() == (13,)

    def test_reload_is_idempotent(self, scenario_dsn: str) -> None:
        """load_postgres on a loaded database (autocommit too) leaves one copy of the data."""
        with psycopg.connect(scenario_dsn, autocommit=True) as conn:
            scenario.load_postgres(conn)
            assert conn.execute("SELECT count(*) FROM customers").fetchone() == (150,)
            assert conn.execute("SELECT count(*) FROM archive.customers").fetchone() == (2,)
