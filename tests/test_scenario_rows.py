"""Every row of the reference scenario (tests/cases/scenario.yaml), decided and enforced.

Each case is checked twice: by ``guard.check`` (no database) and through a
guarded psycopg connection on a copy of the scenario database (one copy for
the module, every test's transaction rolled back). The audit-chain test uses
a fresh copy (``scenario_dsn``). The case file is the specification; this
module only reads it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from casefiles import (
    SCENARIO_FILE,
    PgServerLike,
    ScenarioCase,
    database_copy,
    load_scenario_cases,
)

import accessguard.scenario
from accessguard import AccessDenied, Guard, Reason, load_policy, verify

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from _pytest.mark.structures import ParameterSet

CASES = load_scenario_cases()

#: Cases the library gets wrong today: case id -> "known bug: ...". Each one is
#: an xfail(strict=True), so fixing the bug turns the suite red until the entry
#: is removed here.
KNOWN_BUGS: dict[str, str] = {}

#: The employees and tickets of scenario.md "People and tickets".
EMPLOYEES = frozenset({"alice", "bob", "carol", "dave", "erin", "mallory"})

#: A guarded statement never runs longer than this on the test server.
TIMEOUT = "-c statement_timeout=10000"


def _params(cases: list[ScenarioCase]) -> list[ParameterSet]:
    """The cases as pytest parameters, with their ids, known bugs marked xfail."""
    return [
        pytest.param(
            case,
            id=case.id,
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[case.id])]
            if case.id in KNOWN_BUGS
            else [],
        )
        for case in cases
    ]


@pytest.fixture(scope="module")
def scenario_db(pg_server: PgServerLike, scenario_template: str) -> Iterator[str]:
    """DSN of one scenario copy for the module; each test rolls its transaction back.

    ``scenario_dsn`` clones per test (a third of a second each with fsync on):
    too slow for every row of the scenario, and nothing here needs to commit.
    """
    with database_copy(pg_server, scenario_template, prefix="ag_rows") as dsn:
        yield dsn


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    """The JSON-lines audit file of this test's guard."""
    return tmp_path / "audit.jsonl"


@pytest.fixture
def guard(audit_path: Path) -> Iterator[Guard]:
    """A guard on the scenario's policies and tickets, auditing to ``audit_path``; closed after."""
    with Guard.from_directory(
        accessguard.scenario.policies_dir(),
        tickets=accessguard.scenario.tickets(),
        audit=audit_path,
    ) as guard:
        yield guard


def _events(path: Path) -> list[dict[str, Any]]:
    """The audit events in ``path`` (none when the file does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _is_read(sql: str) -> bool:
    """Whether a statement is a query (its rows can be compared)."""
    return sql.lstrip().upper().startswith(("SELECT", "WITH"))


class TestCaseFile:
    def test_ids_name_user_and_ticket(self) -> None:
        """Every case id starts with its employee and ticket (or no-ticket), so ids read as rows."""
        for case in CASES:
            assert case.id.startswith(f"{case.user}-{case.ticket or 'no-ticket'}-"), case.id

    def test_employees_are_the_scenarios(self) -> None:
        """The cases name exactly the employees of scenario.md, each at least once."""
        assert {case.user for case in CASES} == EMPLOYEES

    def test_tickets_exist_or_are_deliberately_unknown(self) -> None:
        """Every ticket a case names is a scenario ticket, except the one deliberately unknown."""
        known = {t.id for t in accessguard.scenario.tickets()}
        named = {case.ticket for case in CASES if case.ticket is not None}
        assert named - known == {"T-999"}

    def test_reasons_are_reason_codes(self) -> None:
        """Every reason in the file is one of the library's stable reason codes."""
        codes = {str(r) for r in Reason}
        for case in CASES:
            assert case.reason is None or case.reason in codes, case.id

    def test_every_column_is_covered(self) -> None:
        """Every column of every reachable table is read by at least one case, column by column."""
        policy = load_policy(accessguard.scenario.policies_dir())
        columns = [
            f"{spec.name}.{column}"
            for spec in policy.catalog.tables.values()
            if spec.reachable
            for column in spec.columns
        ]
        missing = [c for c in columns if not any(f"-read-{c}" in case.id for case in CASES)]
        assert missing == []

    def test_allowed_updates_are_scoped(self) -> None:
        """Every allowed UPDATE in the file has a WHERE clause (the examples show scoped writes)."""
        for case in CASES:
            if case.allowed and case.sql.upper().startswith("UPDATE"):
                assert " WHERE " in case.sql.upper(), case.id

    def test_file_is_where_the_docs_say(self) -> None:
        """The case file lives in tests/cases/ and holds about a hundred or more cases."""
        assert SCENARIO_FILE.parent.name == "cases"
        assert len(CASES) >= 100


class TestCheck:
    @pytest.mark.parametrize("case", _params(CASES))
    def test_decision(self, case: ScenarioCase, guard: Guard, audit_path: Path) -> None:
        """guard.check() gives the case's outcome and reason; a refusal writes one event."""
        decision = guard.check(case.sql, case.params, user=case.user, ticket=case.ticket)
        assert decision.outcome == case.expect, decision.message
        if case.reason is not None:
            assert decision.reason == case.reason, decision.message
        events = [e for e in _events(audit_path) if e.get("event.action") == "query"]
        if case.allowed:
            assert decision.reason is None
            assert events == []
        else:
            assert [e["event.reason"] for e in events] == [decision.reason]


@pytest.mark.db
class TestPostgres:
    @pytest.mark.parametrize("case", _params(CASES))
    def test_guarded_connection(self, case: ScenarioCase, guard: Guard, scenario_db: str) -> None:
        """Through a guarded connection a denied case raises its reason; an allowed one runs."""
        expected: list[tuple[Any, ...]] | None = None
        if case.allowed and _is_read(case.sql):
            with psycopg.connect(scenario_db) as raw:
                expected = raw.execute(case.sql, case.params).fetchall()
        conn = guard.connect(scenario_db, user=case.user, ticket=case.ticket, options=TIMEOUT)
        try:
            if not case.allowed:
                with pytest.raises(AccessDenied) as info:
                    conn.execute(case.sql, case.params)
                if case.reason is not None:
                    assert info.value.reason == case.reason, info.value.message
                return
            cur = conn.execute(case.sql, case.params)
            # the statement reached rows of the ticket's subject (the scoped rewrite kept them)
            assert cur.rowcount >= 1
            if expected is not None:
                # an in-scope query returns exactly what unguarded psycopg returns
                assert sorted(cur.fetchall(), key=repr) == sorted(expected, key=repr)
        finally:
            conn.rollback()  # the module shares one database: leave it as the seed made it
            conn.close()

    def test_denials_audited_and_chained(
        self, guard: Guard, audit_path: Path, scenario_dsn: str
    ) -> None:
        """Every denied case writes exactly one matching audit event, and the file verifies."""
        denied = [c for c in CASES if not c.allowed and c.id not in KNOWN_BUGS]
        for number, case in enumerate(denied, 1):
            with (
                guard.connect(
                    scenario_dsn, user=case.user, ticket=case.ticket, options=TIMEOUT
                ) as conn,
                pytest.raises(AccessDenied),
            ):
                conn.execute(case.sql, case.params)
            events = _events(audit_path)
            assert len(events) == number, case.id
            event = events[-1]
            assert event["accessguard.outcome"] == "denied", case.id
            assert event["user.name"] == case.user, case.id
            assert event["accessguard.ticket.id"] == case.ticket, case.id
            if case.reason is not None:
                assert event["event.reason"] == case.reason, case.id
        result = verify(audit_path)
        assert result.ok, result.problem
        assert result.events == len(denied)
