"""The public red-team cases (tests/cases/redteam-public.yaml), as alice on T-100.

An ``allow`` case must run and return exactly the rows the same statement
returns on a database holding only alice's view. A ``deny`` case must be
refused (AccessDenied: nothing reached the database), or, when the guard
allows it, return exactly what it returns on alice's view database: provably
nothing beyond her view. The deny cases allowed that way are pinned in
``ALLOWED_EQUIVALENT``, so a change that starts allowing more fails here.

Every case runs through guard.check() (no database), a guarded psycopg
connection (server-side binding), and a guarded ClientCursor connection
(client-side binding: placeholders substituted even inside comments).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from casefiles import (
    REDTEAM_FILE,
    SHARED_REDTEAM_FILE,
    PgServerLike,
    RedteamCase,
    database_copy,
    load_redteam_cases,
)

import accessguard.scenario
from accessguard import AccessDenied, AccessGuardError, Guard

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from _pytest.mark.structures import ParameterSet

CASES = load_redteam_cases()
USER, TICKET = "alice", "T-100"

#: Deny cases the guard allows because what they return stays inside alice's
#: view (checked against the view database on every run). Nothing else may be
#: allowed; a case leaving this set (now refused) must be removed from it too.
#:
#: - cs-group-by: ``SELECT count(*) FROM customers WHERE id = 42 GROUP BY phone``.
#:   The red-team file assumes a narrower column set, but scenario.md lets a
#:   support_agent on an order_issue ticket read customers.phone of the
#:   ticket's customer, so grouping customer 42's row by it reveals nothing.
#: - cs-json-build: ``jsonb_build_object('p', phone, 'a', address)`` of customer 42:
#:   the same two columns alice may read, in JSON (jsonb_build_object is a
#:   built-in that only formats its arguments; issue 16 allows it).
#: - wr-for-update-skip: ``... WHERE customer_id = 42 FOR NO KEY UPDATE SKIP LOCKED``:
#:   a locking read of alice's own orders, which she may update (orders.status);
#:   the lock reaches only customer 42's rows (the second wall's filter) and
#:   changes no data (issue 16 allows the ORMs' select-for-update).
ALLOWED_EQUIVALENT = frozenset({"cs-group-by", "cs-json-build", "wr-for-update-skip"})

#: Deny cases that name rows by a key only (issue 16): the guard probes the
#: database and refuses them (row_scope.other_subject) where the named row is
#: another customer's, as on the full scenario database. On alice's view that
#: row does not exist, so the probe finds nothing and the statement returns
#: nothing: the view-database test cannot see them refused.
KEY_BOUND = frozenset({"rs-orders-wrong-column"})

#: Cases the library gets wrong today: (test, case id) -> "known bug: ...",
#: where test is "check", "server", "client" or "leaks". Each is an xfail(strict=True).
KNOWN_BUGS: dict[tuple[str, str], str] = {}

#: A statement never runs longer than this on the test server (ra-generate-series).
TIMEOUT = "-c statement_timeout=10000"

#: Turns the scenario database into alice's view: only customer 42's rows of
#: the customer-scoped tables, no reviews (she has no review_abuse ticket), no
#: tickets, no account flags, sales metrics or sellers (no rule grants her any
#: of their columns), no archive schema, and NULL in the columns no rule
#: grants her (customers.created_at, payments.card_token). Products stay: everyone reads them.
ALICE_VIEW_SQL = """
DELETE FROM tickets;
DELETE FROM reviews;
DELETE FROM account_flags;
DELETE FROM sales_metrics;
DELETE FROM sellers;
DELETE FROM payments WHERE customer_id IS DISTINCT FROM 42;
DELETE FROM orders WHERE customer_id IS DISTINCT FROM 42;
DELETE FROM customers WHERE id <> 42;
UPDATE customers SET created_at = NULL;
UPDATE payments SET card_token = NULL;
DROP SCHEMA archive CASCADE;
"""

#: Distinctive seed values (accessguard/scenario/seed.sql): none may reach an
#: exception message or an audit event.
SEED_MARKERS = (
    "@mail.example",
    "c0007@mail.example",
    "tok_",
    "Name-00",
    "+1-555-",
    "Apt 0",
    "Flag-0",
    "Review-0",
    "@sellers.example",
    "@archive.example",
    "Archived-0",
    "kw-p",
)

#: Audit fields that are hashes or clock readings: they may contain any digits by chance.
_MACHINE_FIELDS = frozenset(
    {
        "@timestamp",
        "event.hash",
        "accessguard.chain.prev",
        "accessguard.fingerprint",
        "accessguard.policy.version",
        "accessguard.first",
        "accessguard.last",
    }
)

#: String literals of the SQL shorter than three characters ('p', ',') cannot be
#: told from the event's own text and are not checked; neither are words of the
#: guard's own vocabulary ("needs an open ... ticket"). Bound values all are.
_VOCABULARY = frozenset({"open"})

_STRING_LITERAL = re.compile(r"'((?:[^']|'')*)'")
_DOLLAR_QUOTED = re.compile(r"\$(\w*)\$(.*?)\$\1\$", re.DOTALL)
_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)

Rows = list[tuple[Any, ...]]


def reference_result(guard: Guard, dsn: str, case: RedteamCase) -> Rows | AccessGuardError:
    """What the sync psycopg adapter (tested against alice's view) returns for ``case``.

    The other integrations' red-team suites compare their results with it.
    """
    with guard.connect(dsn, user="alice", ticket="T-100", options=TIMEOUT) as conn:
        return run_case(conn, case)


def run_case(conn: Any, case: RedteamCase) -> Rows | AccessGuardError:
    """The case's rows on a guarded psycopg-like connection, or the refusal; rolled back."""
    try:
        cur = conn.execute(case.sql, case.params)
        return list(cur.fetchall()) if cur.description is not None else []
    except AccessGuardError as exc:
        return exc
    finally:
        conn.rollback()


def redteam_params(test: str, cases: list[RedteamCase] | None = None) -> list[ParameterSet]:
    """The cases as pytest parameters, with their ids, known bugs of ``test`` marked xfail."""
    cases = CASES if cases is None else cases
    return [
        pytest.param(
            case,
            id=case.id,
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[test, case.id])]
            if (test, case.id) in KNOWN_BUGS
            else [],
        )
        for case in cases
    ]


@pytest.fixture(scope="module")
def scenario_db(pg_server: PgServerLike, scenario_template: str) -> Iterator[str]:
    """DSN of one scenario copy for the module; each test rolls its transaction back."""
    with database_copy(pg_server, scenario_template, prefix="ag_redteam") as dsn:
        yield dsn


@pytest.fixture(scope="module")
def alice_view_db(pg_server: PgServerLike, scenario_template: str) -> Iterator[str]:
    """DSN of a database holding only what alice may see on T-100 (read only in the tests)."""
    with database_copy(
        pg_server, scenario_template, prefix="ag_alice_view", setup=ALICE_VIEW_SQL
    ) as dsn:
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


def _fetch(cursor: Any) -> Rows | None:
    """The rows a cursor holds, or None for a statement without a result set."""
    if cursor.description is None:
        return None
    return list(cursor.fetchall())


def _comparable(rows: Rows | None, sql: str) -> Rows | None:
    """Rows in a comparable order: as returned under ORDER BY, else sorted."""
    if rows is None or _ORDER_BY.search(sql):
        return rows
    return sorted(rows, key=repr)


def _run_guarded(conn: Any, case: RedteamCase) -> Rows | AccessDenied | None:
    """Execute ``case`` through a guarded connection: its rows, or the refusal."""
    try:
        cursor = conn.cursor()
        cursor.execute(case.sql, case.params)
        return _fetch(cursor)
    except AccessDenied as denied:
        return denied
    finally:
        conn.rollback()  # the module shares one database: leave it as the seed made it


#: a locking clause (FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE)
_LOCKING = re.compile(r"\bFOR\s+(?:NO\s+KEY\s+UPDATE|UPDATE|KEY\s+SHARE|SHARE)\b", re.IGNORECASE)


def _run_on_view(view_dsn: str, case: RedteamCase, *, client: bool) -> Rows | None:
    """The result of ``case`` on alice's view database (read only, rolled back)."""
    factory = psycopg.ClientCursor if client else psycopg.Cursor
    with psycopg.connect(view_dsn, options=TIMEOUT, cursor_factory=factory) as conn:
        conn.read_only = not _LOCKING.search(case.sql)  # a locking read needs a writable one
        try:
            return _fetch(conn.cursor().execute(case.sql, case.params))
        finally:
            conn.rollback()


def _judge(
    case: RedteamCase, outcome: Rows | AccessDenied | None, view_dsn: str, *, client: bool
) -> None:
    """Assert the case's expectation on what the guarded connection did."""
    if isinstance(outcome, AccessDenied):
        assert not case.allowed, f"refused a legitimate statement: {outcome}"
        assert case.id not in ALLOWED_EQUIVALENT, "refused now: remove it from ALLOWED_EQUIVALENT"
        return
    if not case.allowed:
        assert case.id in ALLOWED_EQUIVALENT, (
            "a deny case was allowed; if it provably stays in alice's view, document it "
            "in ALLOWED_EQUIVALENT"
        )
    assert outcome is not None, "an allowed statement returned no result set"
    reference = _run_on_view(view_dsn, case, client=client)
    assert _comparable(outcome, case.sql) == _comparable(reference, case.sql)


def _literals(case: RedteamCase) -> list[str]:
    """The literal values of a case: its SQL's string and dollar-quoted literals, its params."""
    found = [m.replace("''", "'") for m in _STRING_LITERAL.findall(case.sql)]
    found += [body for _tag, body in _DOLLAR_QUOTED.findall(case.sql)]
    found = [v for v in found if len(v.strip()) >= 3 and v not in _VOCABULARY]
    params = case.params.values() if isinstance(case.params, dict) else case.params or []
    return found + [str(v) for v in params if not isinstance(v, bool)]


def _audit_texts(path: Path) -> tuple[list[str], list[str]]:
    """(refusal events, every event) of ``path`` as JSON, without hash and clock fields.

    Ledger events of allowed statements name the ticket's customer by design,
    so literal values are looked for in refusals only; seed data in every event.
    """
    if not path.exists():
        return [], []
    refusals: list[str] = []
    every: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        text = json.dumps(
            {k: v for k, v in event.items() if k not in _MACHINE_FIELDS}, ensure_ascii=False
        )
        every.append(text)
        if event.get("accessguard.outcome") != "allowed":
            refusals.append(text)
    return refusals, every


class TestCaseFile:
    def test_copy_is_byte_exact(self) -> None:
        """The case file is byte for byte ../shared/redteam-public.yaml, when that exists."""
        if not SHARED_REDTEAM_FILE.exists():
            pytest.skip(f"{SHARED_REDTEAM_FILE} is not beside this checkout")
        assert REDTEAM_FILE.read_bytes() == SHARED_REDTEAM_FILE.read_bytes()

    def test_cases_load(self) -> None:
        """The file holds both allow and deny cases with unique ids."""
        assert len({c.id for c in CASES}) == len(CASES) > 0
        assert {c.expected for c in CASES} == {"allow", "deny"}

    def test_documented_sets_name_real_cases(self) -> None:
        """ALLOWED_EQUIVALENT and KNOWN_BUGS name deny/real cases of the file only."""
        by_id = {c.id: c for c in CASES}
        assert all(not by_id[i].allowed for i in ALLOWED_EQUIVALENT)
        tests = ("check", "server", "client", "leaks")
        assert all(i in by_id and t in tests for t, i in KNOWN_BUGS)


class TestCheck:
    @pytest.mark.parametrize("case", redteam_params("check", CASES))
    def test_decision(self, case: RedteamCase, guard: Guard) -> None:
        """guard.check() allows the allow cases, denies the deny cases bar the documented set."""
        decision = guard.check(case.sql, case.params, user=USER, ticket=TICKET)
        if case.allowed:
            assert decision.allowed, f"{decision.reason}: {decision.message}"
        else:
            assert decision.allowed == (case.id in ALLOWED_EQUIVALENT), decision.reason


@pytest.mark.db
class TestServerBinding:
    @pytest.mark.parametrize("case", redteam_params("server", CASES))
    def test_case(
        self, case: RedteamCase, guard: Guard, scenario_db: str, alice_view_db: str
    ) -> None:
        """Through guard.connect(), a case returns alice's view's rows or is refused as expected."""
        conn = guard.connect(scenario_db, user=USER, ticket=TICKET, options=TIMEOUT)
        try:
            outcome = _run_guarded(conn, case)
        finally:
            conn.close()
        _judge(case, outcome, alice_view_db, client=False)


@pytest.mark.db
class TestClientBinding:
    @pytest.mark.parametrize("case", redteam_params("client", CASES))
    def test_case(
        self, case: RedteamCase, guard: Guard, scenario_db: str, alice_view_db: str
    ) -> None:
        """Through a wrapped ClientCursor connection, the same expectations hold."""
        raw = psycopg.connect(scenario_db, options=TIMEOUT, cursor_factory=psycopg.ClientCursor)
        conn = guard.wrap(raw, user=USER, ticket=TICKET)
        try:
            outcome = _run_guarded(conn, case)
        finally:
            conn.close()
        _judge(case, outcome, alice_view_db, client=True)


@pytest.mark.db
class TestNoLeaks:
    @pytest.mark.parametrize("case", redteam_params("leaks", CASES))
    def test_no_literal_or_row_data(
        self, case: RedteamCase, guard: Guard, audit_path: Path, alice_view_db: str
    ) -> None:
        """No refusal message or audit event carries a literal of the case or any seed data."""
        messages: list[str] = []
        refused = 0
        for factory in (psycopg.Cursor, psycopg.ClientCursor):
            raw = psycopg.connect(alice_view_db, options=TIMEOUT, cursor_factory=factory)
            raw.read_only = not _LOCKING.search(case.sql)  # rolled back below either way
            conn = guard.wrap(raw, user=USER, ticket=TICKET)
            try:
                conn.cursor().execute(case.sql, case.params)
            except AccessGuardError as exc:
                refused += 1
                messages += [str(exc), exc.message, repr(exc.args)]
            finally:
                conn.rollback()
                conn.close()
        guard.close()  # flush the access ledger into the audit file too
        refusals, every = _audit_texts(audit_path)
        assert len(refusals) == refused, "each refusal writes exactly one audit event"
        for text in [*messages, *refusals]:
            for literal in _literals(case):
                assert literal not in text, f"literal {literal!r} leaked"
        for text in [*messages, *every]:
            for marker in SEED_MARKERS:
                assert marker not in text, f"seed data {marker!r} leaked"
        if not case.allowed and case.id not in ALLOWED_EQUIVALENT | KEY_BOUND:
            assert refused == 2, "a deny case was not refused"


@pytest.mark.db
class TestEscapeHatches:
    def test_transaction_hands_out_no_raw_connection(self, guard: Guard, scenario_db: str) -> None:
        """The object conn.transaction() returns gives no unguarded way to the database."""
        conn = guard.connect(scenario_db, user=USER, ticket=TICKET, options=TIMEOUT)
        try:
            with conn.transaction() as tx:
                inner = getattr(tx, "connection", None)
                assert not isinstance(inner, psycopg.Connection), (
                    "SELECT card_token FROM payments would run unchecked"
                )
                assert tx.connection is conn
        finally:
            conn.rollback()
            conn.close()
