"""The first-hour commands: --version, python -m accessguard, scenario load, schema pull."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

import psycopg
import pytest
from psycopg import sql

from accessguard import scenario
from accessguard.cli.app import main
from accessguard.policy.catalog import load_catalog

if TYPE_CHECKING:
    from pathlib import Path


class TestEntryPoints:
    def test_module_runs_the_command_and_prints_the_version(self) -> None:
        """`python -m accessguard --version` prints the installed version and exits 0."""
        done = subprocess.run(
            [sys.executable, "-m", "accessguard", "--version"],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "PYTHONWARNINGS": "error"},
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("accessguard ")
        assert done.stdout.split()[1][0].isdigit()

    def test_help_does_not_import_the_driver_or_the_parser(self) -> None:
        """`accessguard --help` loads neither sqlglot nor casbin (a fast first command)."""
        code = (
            "import sys\n"
            "from accessguard.cli import main\n"
            "try:\n"
            "    main(['--help'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "print(sorted(m for m in ('sqlglot', 'casbin', 'structlog') if m in sys.modules))\n"
        )
        done = subprocess.run(  # noqa: S603 - our own interpreter, our own code
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.fixture
def empty_db(unused_database: str) -> str:
    """DSN of a new, empty database (dropped after the test)."""
    name = unused_database.rsplit("/", 1)[1]
    with psycopg.connect(unused_database.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return unused_database


@pytest.mark.db
class TestScenarioLoad:
    def test_load_fills_an_empty_database(
        self, empty_db: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`scenario load DSN` creates the scenario's tables with its rows."""
        assert main(["scenario", "load", empty_db]) == 0
        assert "loaded" in capsys.readouterr().out
        with psycopg.connect(empty_db) as conn:
            orders = conn.execute("SELECT count(*) FROM orders WHERE customer_id = 42").fetchone()
        assert orders == (3,)  # seed.sql: customer 42 has three orders

    def test_missing_database_is_created(
        self, unused_database: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`scenario load` creates the database when it does not exist yet."""
        name = unused_database.rsplit("/", 1)[1]
        assert main(["scenario", "load", unused_database]) == 0
        assert f"created database {name}" in capsys.readouterr().out
        with psycopg.connect(unused_database) as conn:
            assert conn.execute("SELECT count(*) FROM customers").fetchone() != (0,)

    def test_unreachable_server_exits_one(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A server that cannot be reached is reported with exit code 1, no traceback."""
        dsn = "postgresql://postgres@127.0.0.1:1/ag_x?connect_timeout=2"
        assert main(["scenario", "load", dsn]) == 1
        assert "scenario load" in capsys.readouterr().err


@pytest.mark.db
class TestSchemaPull:
    def test_pulled_schema_loads_and_matches_the_declared_columns(
        self, scenario_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The pulled schema.toml loads, and every table has the columns the scenario declares."""
        out = tmp_path / "schema.toml"
        assert main(["schema", "pull", scenario_dsn, "--out", str(out)]) == 0
        assert "review it" in capsys.readouterr().out
        pulled = load_catalog(out)
        declared = load_catalog(scenario.policies_dir() / "schema.toml")
        for name, spec in declared.tables.items():
            assert pulled.tables[name].columns == spec.columns, name

    def test_keys_are_declared_and_scopes_are_marked_as_guesses(
        self, scenario_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Keys and foreign keys are declared as the scenario has them; guessed scopes say so."""
        out = tmp_path / "schema.toml"
        assert main(["schema", "pull", scenario_dsn, "--out", str(out)]) == 0
        pulled = load_catalog(out)
        declared = load_catalog(scenario.policies_dir() / "schema.toml")
        for name, spec in declared.tables.items():
            assert pulled.tables[name].key == (spec.key or pulled.tables[name].key), name
            assert set(spec.references) <= set(pulled.tables[name].references), name
        assert main(["schema", "pull", scenario_dsn]) == 0
        text = capsys.readouterr().out
        assert 'references = { order_id = "orders.id", customer_id = "customers.id" }' in text
        scope_lines = [line for line in text.splitlines() if line.startswith("scope =")]
        assert scope_lines
        assert all("# guessed: review" in line for line in scope_lines)
        orders = text.split("[tables.orders]")[1].split("[tables.")[0]
        assert 'scope = "customer"' in orders
        assert 'scope_column = "customer_id"' in orders

    def test_a_drifted_column_shows_up(self, scenario_dsn: str) -> None:
        """A column a DBA added (not in schema.toml) is in the pulled draft."""
        with psycopg.connect(scenario_dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE customers ADD COLUMN ssn text")
        with psycopg.connect(scenario_dsn) as conn:
            from accessguard.authoring.schema_pull import pull

            tables = {t.name: t for t in pull(conn)}
        assert tables["customers"].columns[-1] == "ssn"


class TestCheckParameters:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [("42", 0), ("7", 1), ('"42"', 1)],
        ids=["own-customer", "other-customer", "text-not-an-id"],
    )
    def test_param_values_are_bound(
        self, value: str, expected: int, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`check --param` binds values to %s: the ticket's customer is allowed, another is not."""
        code = main(
            [
                "check",
                "--policies",
                str(scenario.policies_dir()),
                "--tickets",
                str(scenario.tickets_file()),
                "--user",
                "alice",
                "--ticket",
                "T-100",
                "--param",
                value,
                "SELECT email FROM customers WHERE id = %s",
            ]
        )
        out = capsys.readouterr().out
        assert code == expected, out
        if expected:
            assert "denied" in out


class TestUsageErrors:
    def test_a_customer_that_is_not_a_number_is_a_usage_error(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`who-read --customer abc` exits 2 saying what --customer takes, not int()'s words."""
        trail = tmp_path / "audit.jsonl"
        trail.write_text("", encoding="utf-8")
        code = main(["audit", "who-read", "--audit", str(trail), "--customer", "abc"])
        err = capsys.readouterr().err
        assert code == 2
        assert "--customer takes a customer id, a whole number" in err
        assert "int()" not in err


class TestEventsNameTheirDatabase:
    def test_a_sqlite_refusal_says_sqlite(self) -> None:
        """An event of a statement on a wrapped sqlite3 connection says db.system.name sqlite."""
        import sqlite3

        from accessguard import AccessDenied, Guard
        from accessguard.testing import MemoryAuditSink

        sink = MemoryAuditSink()
        db = sqlite3.connect(":memory:")
        scenario.load_sqlite(db)
        with Guard.from_directory(
            scenario.policies_dir(), tickets=scenario.tickets(), audit=sink
        ) as guard:
            conn = guard.wrap(db, user="alice", ticket="T-100")
            with pytest.raises(AccessDenied):
                conn.execute("SELECT email FROM customers")
            decision = guard.check(
                "SELECT email FROM customers", user="alice", ticket="T-100", dialect="sqlite"
            )
        assert not decision.allowed
        assert [e["db.system.name"] for e in sink.events] == ["sqlite", "sqlite"]


class TestRefusalsNameTheirSubject:
    @pytest.mark.parametrize(
        ("sql", "params", "named"),
        [
            ("SELECT email FROM customers WHERE id = 7", None, [{"kind": "customer", "id": 7}]),
            ("SELECT email FROM customers WHERE id = %s", [3], [{"kind": "customer", "id": 3}]),
            ("SELECT card_token FROM payments WHERE customer_id = 42", None, None),
            ("SELECT email FROM customers", None, None),
        ],
        ids=["other-customer", "bound-parameter", "own-customer-forbidden-column", "unbound"],
    )
    def test_a_refusal_records_the_customer_it_named(
        self, sql: str, params: list[int] | None, named: list[dict[str, object]] | None
    ) -> None:
        """A refused statement's event names the customer its scope was bound to, if any."""
        from accessguard import Guard
        from accessguard.testing import MemoryAuditSink

        sink = MemoryAuditSink()
        with Guard.from_directory(
            scenario.policies_dir(), tickets=scenario.tickets(), audit=sink
        ) as guard:
            assert not guard.check(sql, params, user="alice", ticket="T-100").allowed
        (event,) = sink.events
        expected = (
            named
            if named is not None
            else ([{"kind": "customer", "id": 42}] if "42" in sql else None)
        )
        assert event.get("accessguard.subjects") == expected
