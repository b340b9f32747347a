"""The attack corpus (tests/cases/attacks.yaml) and the properties that back it up.

Every case is decided by ``guard.check()`` (no database) and run on real
PostgreSQL through ``guard.connect()``: a denied case raises AccessGuardError,
an allowed case returns exactly what the same statement returns on a database
holding only that employee's view (non-interference). Cases marked
``known_bug`` are the guard's known failures, xfail(strict=True) until fixed.

Properties: analysis never raises; generated SELECTs that the guard allows
for alice leak nothing on PostgreSQL; removing a policy rule or a ticket never
turns a refusal into an allow.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
import yaml
from casefiles import CASES_DIR, PgServerLike, database_copy, load_redteam_cases
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from psycopg import sql as pgsql
from strategies import alice_selects, arbitrary_sql, mutated_sql

import accessguard.scenario
from accessguard import AccessGuardError, Guard
from accessguard.analysis import Facts, analyze
from accessguard.decision import Context, decide
from accessguard.engine.paramstyle import convert_query
from accessguard.errors import Reason
from accessguard.guard import LIMITS_FILE
from accessguard.policy.rules import POLICY_FILE, Policy, load_policy
from accessguard.testing import MemoryAuditSink
from accessguard.tickets.stores import Ticket

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from _pytest.mark.structures import ParameterSet

ATTACKS_FILE = CASES_DIR / "attacks.yaml"
DEFAULT_USER, DEFAULT_TICKET = "alice", "T-100"
PARTS = frozenset({"check", "db"})
#: A statement never runs longer than this on the test server.
TIMEOUT = "-c statement_timeout=10000"

Params = list[Any] | dict[str, Any] | None
Rows = list[tuple[Any, ...]]
Principal = tuple[str, str | None]

_REASON = re.compile(r"^[a-z_]+\.[a-z_]+$")
_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)
_REQUIRED = {"id", "category", "sql", "expect", "why"}
_OPTIONAL = {"user", "ticket", "params", "reason", "twin_of", "known_bug", "known_bug_in"}

#: What the issue asks the corpus to cover, as categories of attacks.yaml.
# fmt: off
REQUIRED_CATEGORIES = frozenset({
    "comment-quoting", "dollar-quoting", "unicode-escape", "identifier-case",
    "schema-qualification", "search-path", "cte", "cte-data-modifying", "subquery",
    "set-operation", "lateral", "window", "table-values", "whole-row", "aggregate", "blind-read",
    "error-leak", "scope-escape", "function", "into-ctas", "cursor", "listen-notify", "set-config",
    "transaction-role", "multi-statement", "placeholder",
})
# fmt: on


# ---------------------------------------------------------------------- the case file


@dataclass(frozen=True, slots=True, kw_only=True)
class AttackCase:
    """One entry of attacks.yaml."""

    id: str
    category: str
    user: str
    ticket: str | None
    sql: str
    params: Params
    expect: str
    reason: str | None
    why: str
    twin_of: str | None
    known_bug: str | None
    known_bug_in: frozenset[str]

    @property
    def allowed(self) -> bool:
        """Whether the case expects the statement to be allowed."""
        return self.expect == "allowed"

    @property
    def principal(self) -> Principal:
        """(employee, ticket) the case runs as."""
        return self.user, self.ticket


def _text(entry: Mapping[str, Any], key: str, case_id: str) -> str | None:
    """An optional non-empty single-line string field."""
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or (key != "sql" and "\n" in value):
        raise TypeError(f"{case_id}: {key} must be a non-empty one-line string")
    return value


def _params(raw: object, case_id: str) -> Params:
    """A case's params: absent, a list, or a mapping with string keys."""
    if raw is None:
        return None
    if isinstance(raw, list):
        return list(raw)
    if isinstance(raw, dict) and all(isinstance(k, str) for k in raw):
        return dict(raw)
    raise TypeError(f"{case_id}: params must be a list or a mapping")


def _case(entry: Mapping[str, Any]) -> AttackCase:
    """Validate one entry strictly (a typo must fail loudly, not test less)."""
    case_id = str(entry.get("id", "?"))
    missing, unknown = _REQUIRED - set(entry), set(entry) - _REQUIRED - _OPTIONAL
    if missing or unknown:
        raise ValueError(f"{case_id}: missing {sorted(missing)}, unknown {sorted(unknown)}")
    for key in ("id", "category", "why"):
        _text(entry, key, case_id)
    if not isinstance(entry["sql"], str) or not entry["sql"]:
        raise TypeError(f"{case_id}: sql must be a non-empty string")
    expect = entry["expect"]
    if expect not in ("allowed", "denied"):
        raise ValueError(f"{case_id}: expect must be allowed or denied")
    reason = _text(entry, "reason", case_id)
    if reason is not None and (expect == "allowed" or not _REASON.match(reason)):
        raise ValueError(f"{case_id}: reason is a dotted code, and only for denied cases")
    if reason is not None and reason not in {str(r) for r in Reason}:
        raise ValueError(f"{case_id}: {reason} is not a reason code of accessguard.errors")
    twin_of = _text(entry, "twin_of", case_id)
    if twin_of is not None and expect != "allowed":
        raise ValueError(f"{case_id}: only an allowed case is the twin of an attack")
    ticket = entry.get("ticket", DEFAULT_TICKET)
    if ticket is not None and not isinstance(ticket, str):
        raise TypeError(f"{case_id}: ticket must be a string or null")
    parts = entry.get("known_bug_in", sorted(PARTS))
    if not isinstance(parts, list) or not set(parts) <= PARTS or not parts:
        raise ValueError(f"{case_id}: known_bug_in lists some of {sorted(PARTS)}")
    if "known_bug_in" in entry and "known_bug" not in entry:
        raise ValueError(f"{case_id}: known_bug_in without known_bug")
    return AttackCase(
        id=case_id,
        category=entry["category"],
        user=_text(entry, "user", case_id) or DEFAULT_USER,
        ticket=ticket,
        sql=entry["sql"],
        params=_params(entry.get("params"), case_id),
        expect=expect,
        reason=reason,
        why=entry["why"],
        twin_of=twin_of,
        known_bug=_text(entry, "known_bug", case_id),
        known_bug_in=frozenset(parts),
    )


def load_attack_cases(path: Path = ATTACKS_FILE) -> list[AttackCase]:
    """Read and validate attacks.yaml."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise TypeError(f"{path.name}: expected a list of mappings")
    cases = [_case(entry) for entry in data]
    ids = Counter(c.id for c in cases)
    if repeated := sorted(i for i, n in ids.items() if n > 1):
        raise ValueError(f"{path.name}: duplicate ids {repeated}")
    by_id = {c.id: c for c in cases}
    for case in cases:
        if case.twin_of is not None and (case.twin_of not in by_id or by_id[case.twin_of].allowed):
            raise ValueError(f"{case.id}: twin_of must name a denied case of the file")
    return cases


CASES = load_attack_cases()


def _marked(part: str, cases: Sequence[AttackCase]) -> list[ParameterSet]:
    """The cases as pytest parameters; known bugs of ``part`` are xfail(strict=True)."""
    return [
        pytest.param(
            case,
            id=case.id,
            marks=[pytest.mark.xfail(strict=True, reason=f"known bug: {case.known_bug}")]
            if case.known_bug is not None and part in case.known_bug_in
            else [],
        )
        for case in cases
    ]


# ---------------------------------------------------------------------- the guard


def policies_without_limits(dest: Path) -> Path:
    """A copy of the scenario's policy directory without limits.toml (no rate limits)."""
    target = dest / "policies"
    shutil.copytree(accessguard.scenario.policies_dir(), target)
    (target / LIMITS_FILE).unlink(missing_ok=True)
    return target


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scenario's policies, copied without volume limits."""
    return policies_without_limits(tmp_path_factory.mktemp("attacks"))


@pytest.fixture(scope="module")
def guard(policy_dir: Path) -> Iterator[Guard]:
    """One guard for the module: scenario policies (no limits) and tickets, audit in memory."""
    with Guard.from_directory(
        policy_dir, tickets=accessguard.scenario.tickets(), audit=MemoryAuditSink()
    ) as guard:
        yield guard


# ---------------------------------------------------------------------- view databases


def valid_ticket(tickets: Sequence[Ticket], user: str, ticket_id: str | None) -> Ticket | None:
    """The ticket if it justifies access for ``user`` now (open, assigned), else None."""
    found = next((t for t in tickets if t.id == ticket_id), None)
    if found is None or not found.is_open or found.assignee != user:
        return None
    return found


def view_sql(policy: Policy, tickets: Sequence[Ticket], principal: Principal) -> str:
    """SQL that turns a scenario copy into what ``principal`` may see, and nothing else.

    A table keeps only the rows of the ticket's customer (or product) when it
    is scoped, and only if some rule grants the employee one of its columns;
    every column no rule grants is set to NULL; unreachable tables are emptied
    and the archive schema dropped.
    """
    user, ticket_id = principal
    ticket = valid_ticket(tickets, user, ticket_id)
    granted = policy.granted(policy.roles_of(user), ticket.kind if ticket else None)
    out = ["SET session_replication_role = replica;"]  # foreign keys off while cutting
    for spec in policy.catalog.tables.values():
        table = pgsql.Identifier(spec.schema, spec.name)
        readable = {c for t, c, a in granted if t == spec.qualified and a == "read"}
        subject = None
        if spec.scope is not None and ticket is not None:
            subject = getattr(ticket, f"{spec.scope}_id", None)
        if not spec.reachable or not readable or (spec.scope is not None and subject is None):
            out.append(pgsql.SQL("DELETE FROM {};").format(table).as_string(None))
            continue
        if spec.scope is not None:
            out.append(
                pgsql.SQL("DELETE FROM {} WHERE {} IS DISTINCT FROM {};")
                .format(
                    table,
                    pgsql.Identifier(spec.scope_column or ""),
                    pgsql.Literal(subject),
                )
                .as_string(None)
            )
        out.extend(
            pgsql.SQL("UPDATE {} SET {} = NULL;")
            .format(table, pgsql.Identifier(column))
            .as_string(None)
            for column in sorted(set(spec.columns) - readable)
        )
    out.append("DROP SCHEMA IF EXISTS archive CASCADE;")
    return "\n".join(out)


class Databases:
    """The scenario copy the guard runs on, and one view database per principal (lazily)."""

    def __init__(self, server: PgServerLike, template: str, policy: Policy) -> None:
        self._server, self._template, self._policy = server, template, policy
        self._stack = contextlib.ExitStack()
        self._tickets = accessguard.scenario.tickets()
        self.full = self._stack.enter_context(
            database_copy(server, template, prefix="ag_attacks_full")
        )
        self._views: dict[Principal, psycopg.Connection[Any]] = {}
        self._guarded: dict[Principal, Any] = {}

    def view(self, principal: Principal) -> psycopg.Connection[Any]:
        """A connection to ``principal``'s view database (built on first use; rolled back)."""
        conn = self._views.get(principal)
        if conn is None:
            setup = view_sql(self._policy, self._tickets, principal)
            dsn = self._stack.enter_context(
                database_copy(self._server, self._template, prefix="ag_view", setup=setup)
            )
            conn = psycopg.connect(dsn, options=TIMEOUT)
            self._stack.callback(conn.close)
            self._views[principal] = conn
        return conn

    def guarded(self, guard: Guard, principal: Principal) -> Any:
        """A guarded connection to the full scenario copy for ``principal``."""
        conn = self._guarded.get(principal)
        if conn is None:
            user, ticket = principal
            conn = guard.connect(self.full, user=user, ticket=ticket, options=TIMEOUT)
            self._stack.callback(conn.close)
            self._guarded[principal] = conn
        return conn

    def close(self) -> None:
        """Close every connection, drop every database."""
        self._stack.close()


@pytest.fixture(scope="module")
def databases(
    pg_server: PgServerLike, scenario_template: str, policy_dir: Path
) -> Iterator[Databases]:
    """The module's databases: the full scenario and the view databases."""
    dbs = Databases(pg_server, scenario_template, load_policy(policy_dir))
    try:
        yield dbs
    finally:
        dbs.close()


# ---------------------------------------------------------------------- outcomes


def _record_text(value: tuple[Any, ...]) -> str:
    """PostgreSQL's text form of a record that psycopg returned as a tuple."""

    def item(v: Any) -> str:
        if v is None:
            return ""
        text = _record_text(v) if isinstance(v, tuple) else str(v)
        if text == "" or any(ch in text for ch in ' ",()\\\t\n'):
            return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return text

    return "(" + ",".join(item(v) for v in value) + ")"


def _normal(rows: Rows) -> Rows:
    """Rows with anonymous records in text form: the guard's rewrite makes ``SELECT o
    FROM orders o`` return a record (a tuple) where the original returns text."""
    return [tuple(_record_text(v) if isinstance(v, tuple) else v for v in row) for row in rows]


Outcome = tuple[str, Any]


def run(conn: Any, sql: str | pgsql.Composable, params: Params, *, ordered: bool) -> Outcome:
    """What a statement does: ("rows", rows), ("count", rowcount) or ("error", SQLSTATE).

    Refusals (AccessGuardError) propagate. The transaction is rolled back.
    """
    try:
        cursor = conn.cursor()
        cursor.execute(sql, params)
        if cursor.description is None:
            return "count", cursor.rowcount
        rows = _normal(list(cursor.fetchall()))
        return "rows", rows if ordered else sorted(rows, key=repr)
    except AccessGuardError:
        raise
    except psycopg.Error as exc:
        return "error", exc.sqlstate
    finally:
        conn.rollback()


# ---------------------------------------------------------------------- tests: the file


class TestCaseFile:
    def test_size(self) -> None:
        """The corpus holds at least 200 cases, allowed twins among them."""
        assert len(CASES) >= 200
        assert sum(c.allowed for c in CASES) >= 50

    def test_categories_cover_the_issue(self) -> None:
        """Every family of attack the issue names has cases, and a denied one at least."""
        denied = {c.category for c in CASES if not c.allowed}
        assert denied >= REQUIRED_CATEGORIES

    def test_twins_point_at_attacks(self) -> None:
        """Every twin_of names a denied case; many attacks have an allowed twin."""
        twins = {c.twin_of for c in CASES if c.twin_of is not None}
        assert len(twins) >= 40

    def test_no_overlap_with_public_file(self) -> None:
        """The corpus adds to redteam-public.yaml: no id or statement of it is repeated."""
        public = load_redteam_cases()
        assert not {c.id for c in public} & {c.id for c in CASES}
        assert not {(c.sql, repr(c.params)) for c in public} & {
            (c.sql, repr(c.params))
            for c in CASES
            if c.user == DEFAULT_USER and c.ticket == DEFAULT_TICKET
        }

    def test_loader_rejects_typos(self, tmp_path: Path) -> None:
        """An unknown key or an unknown reason code fails loudly."""
        bad = tmp_path / "bad.yaml"
        bad.write_text(
            "- {id: x, category: c, sql: SELECT 1, expect: denied, why: w, reasn: a.b}\n"
        )
        with pytest.raises(ValueError, match="unknown"):
            load_attack_cases(bad)
        bad.write_text(
            "- {id: x, category: c, sql: SELECT 1, expect: denied, why: w, reason: no.such_code}\n"
        )
        with pytest.raises(ValueError, match="not a reason code"):
            load_attack_cases(bad)


# ---------------------------------------------------------------------- tests: decisions


class TestCheck:
    @pytest.mark.parametrize("case", _marked("check", CASES))
    def test_decision(self, case: AttackCase, guard: Guard) -> None:
        """guard.check() (no database) gives the case's outcome and reason code."""
        decision = guard.check(case.sql, case.params, user=case.user, ticket=case.ticket)
        assert decision.outcome == case.expect, f"{decision.reason}: {decision.message}"
        if case.reason is not None:
            assert str(decision.reason) == case.reason, decision.message


@pytest.mark.db
class TestPostgres:
    @pytest.mark.parametrize("case", _marked("db", CASES))
    def test_case(self, case: AttackCase, guard: Guard, databases: Databases) -> None:
        """Denied cases raise AccessGuardError; allowed ones return the view database's rows."""
        conn = databases.guarded(guard, case.principal)
        ordered = bool(_ORDER_BY.search(case.sql))
        if not case.allowed:
            with pytest.raises(AccessGuardError):
                run(conn, case.sql, case.params, ordered=ordered)
            return
        got = run(conn, case.sql, case.params, ordered=ordered)
        assert got[0] != "error", f"the allowed statement failed on the server: {got[1]}"
        expected = run(databases.view(case.principal), case.sql, case.params, ordered=ordered)
        assert got == expected


# ---------------------------------------------------------------------- tests: Composed


COMPOSED: list[tuple[str, pgsql.Composable, Params, bool]] = [
    (
        "identifiers-and-literal",
        pgsql.SQL("SELECT {} FROM {} WHERE {} = {}").format(
            pgsql.Identifier("email"),
            pgsql.Identifier("customers"),
            pgsql.Identifier("id"),
            pgsql.Literal(42),
        ),
        None,
        True,
    ),
    (
        "qualified-identifier",
        pgsql.SQL("SELECT {} FROM {} WHERE customer_id = {}").format(
            pgsql.SQL(", ").join([pgsql.Identifier("id"), pgsql.Identifier("status")]),
            pgsql.Identifier("public", "orders"),
            pgsql.Placeholder(),
        ),
        [42],
        True,
    ),
    (
        "named-placeholder",
        pgsql.SQL("SELECT name FROM customers WHERE id = {cid}").format(
            cid=pgsql.Placeholder("cid")
        ),
        {"cid": 42},
        True,
    ),
    (
        "forbidden-identifier",
        pgsql.SQL("SELECT {} FROM payments WHERE customer_id = 42").format(
            pgsql.Identifier("card_token")
        ),
        None,
        False,
    ),
    (
        "literal-injection-stays-literal",
        pgsql.SQL("SELECT name FROM customers WHERE id = {}").format(pgsql.Literal("42 OR true")),
        None,
        False,
    ),
    (
        "raw-sql-injection",
        pgsql.SQL("SELECT name FROM customers WHERE id = " + "42 OR true"),
        None,
        False,
    ),
    (
        "identifier-with-semicolon",
        pgsql.SQL("SELECT id FROM {} WHERE id = 42").format(
            pgsql.Identifier("customers; DROP TABLE payments; --")
        ),
        None,
        False,
    ),
    (
        "joined-statements",
        pgsql.SQL("; ").join(
            [
                pgsql.SQL("SELECT name FROM customers WHERE id = 42"),
                pgsql.SQL("DELETE FROM reviews"),
            ]
        ),
        None,
        False,
    ),
    (
        "other-customer-literal",
        pgsql.SQL("SELECT name FROM customers WHERE id = {}").format(pgsql.Literal(7)),
        None,
        False,
    ),
]


class TestComposed:
    @pytest.mark.parametrize(
        ("query", "params", "allowed"), [pytest.param(*c[1:], id=c[0]) for c in COMPOSED]
    )
    def test_check(
        self, query: pgsql.Composable, params: Params, allowed: bool, guard: Guard
    ) -> None:
        """A psycopg Composed query is decided on the text it renders to."""
        decision = guard.check(query.as_string(None), params, user="alice", ticket="T-100")
        assert decision.allowed == allowed, decision.reason

    @pytest.mark.db
    @pytest.mark.parametrize(
        ("query", "params", "allowed"), [pytest.param(*c[1:], id=c[0]) for c in COMPOSED]
    )
    def test_connection(
        self,
        query: pgsql.Composable,
        params: Params,
        allowed: bool,
        guard: Guard,
        databases: Databases,
    ) -> None:
        """Through guard.connect() a Composed query is refused or returns the view's rows."""
        principal: Principal = ("alice", "T-100")
        conn = databases.guarded(guard, principal)
        if not allowed:
            with pytest.raises(AccessGuardError):
                run(conn, query, params, ordered=False)
            return
        text = query.as_string(None)
        got = run(conn, query, params, ordered=False)
        assert got == run(databases.view(principal), text, params, ordered=False)


# ---------------------------------------------------------------------- properties

CATALOG = load_policy(accessguard.scenario.policies_dir()).catalog


class TestAnalysisNeverRaises:
    @given(arbitrary_sql())
    def test_arbitrary_text(self, sql: str) -> None:
        """analyze() returns Facts for any text, with or without parameters."""
        assert isinstance(analyze(sql, catalog=CATALOG), Facts)
        assert isinstance(analyze(sql, catalog=CATALOG, params=True), Facts)

    @given(mutated_sql())
    def test_mutated_corpus(self, sql: str) -> None:
        """analyze() returns Facts for token mutations of every corpus statement."""
        facts = analyze(sql, catalog=CATALOG)
        assert isinstance(facts, Facts)
        assert facts.problem is not None or facts.kind in ("select", "update")

    @given(sql=mutated_sql())
    def test_check_never_raises(self, sql: str, guard: Guard) -> None:
        """guard.check() decides every mutation without raising (no parameters)."""
        assert guard.check(sql, user="alice", ticket="T-100").outcome in ("allowed", "denied")


@pytest.mark.db
class TestGeneratedNonInterference:
    @settings(suppress_health_check=[HealthCheck.too_slow])
    @given(sql=alice_selects())
    def test_allowed_leaks_nothing(self, sql: str, guard: Guard, databases: Databases) -> None:
        """Whatever generated SELECT the guard allows alice returns only her view's rows."""
        principal: Principal = ("alice", "T-100")
        decision = guard.check(sql, user="alice", ticket="T-100")
        event(f"decision: {decision.reason or 'allowed'}")
        if not decision.allowed:
            return
        got = run(databases.guarded(guard, principal), sql, None, ordered=False)
        assert got == run(databases.view(principal), sql, None, ordered=False)

    @settings(
        derandomize=True,
        max_examples=1000,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(sql=alice_selects(tricks=True))
    def test_name_resolution_tricks_leak_nothing(
        self, sql: str, guard: Guard, databases: Databases
    ) -> None:
        """The same property over SELECTs with name-resolution tricks in scalar subqueries."""
        principal: Principal = ("alice", "T-100")
        if not guard.check(sql, user="alice", ticket="T-100").allowed:
            return
        got = run(databases.guarded(guard, principal), sql, None, ordered=False)
        assert got == run(databases.view(principal), sql, None, ordered=False)


# ---------------------------------------------------------------------- monotonicity


@dataclass(frozen=True, slots=True)
class _Probe:
    """A sample statement with its principal, analyzed once."""

    user: str
    ticket: str | None
    facts: Facts
    params: list[Any] | None


def _probes() -> list[_Probe]:
    """Every corpus case (attacks, public red team) for its principal, analyzed once."""
    cases = [(c.user, c.ticket, c.sql, c.params) for c in CASES]
    cases += [("alice", "T-100", c.sql, c.params) for c in load_redteam_cases()]
    out: list[_Probe] = []
    for user, ticket, text, params in cases:
        sql, values = text, None
        if params is not None:
            try:
                sql, values = convert_query(text, params)
            except psycopg.Error:
                continue
        facts = analyze(sql, catalog=CATALOG, params=params is not None)
        out.append(_Probe(user, ticket, facts, values))
    return out


def _decide_all(probes: Sequence[_Probe], policy: Policy, tickets: Sequence[Ticket]) -> list[bool]:
    """Whether each probe is allowed under ``policy`` and ``tickets``."""
    by_id = {t.id: t for t in tickets}
    return [
        decide(
            p.facts,
            Context(
                user=p.user,
                roles=policy.roles_of(p.user),
                ticket_id=p.ticket,
                ticket=by_id.get(p.ticket) if p.ticket is not None else None,
                params=p.params,
            ),
            policy,
        ).allowed
        for p in probes
    ]


@pytest.fixture(scope="module")
def baseline(policy_dir: Path) -> tuple[list[_Probe], list[bool], list[str]]:
    """(probes, their decisions under the full policy, the policy's rule lines)."""
    probes = _probes()
    allowed = _decide_all(probes, load_policy(policy_dir), accessguard.scenario.tickets())
    lines = (policy_dir / POLICY_FILE).read_text(encoding="utf-8").splitlines()
    return probes, allowed, lines


class TestMonotonic:
    def test_baseline_allows_something(
        self, baseline: tuple[list[_Probe], list[bool], list[str]]
    ) -> None:
        """The sample is not all refusals, so the property below can fail."""
        allowed = baseline[1]
        assert 50 < sum(allowed) < len(allowed)

    # derandomized, no example database: the same 30 subsets every run (a replayed example
    # once drew differently on a loaded machine: FlakyStrategyDefinition, not a finding)
    @settings(
        suppress_health_check=[HealthCheck.too_slow],
        max_examples=30,
        derandomize=True,
        database=None,
    )
    @given(data=st.data())
    def test_removing_rules_or_tickets_never_allows_more(
        self,
        data: st.DataObject,
        baseline: tuple[list[_Probe], list[bool], list[str]],
        tmp_path_factory: pytest.TempPathFactory,
    ) -> None:
        """Dropping policy lines (grants, role memberships) or tickets never turns deny to allow."""
        probes, allowed, lines = baseline
        rules = [i for i, line in enumerate(lines) if line.startswith(("p,", "g,"))]
        dropped = data.draw(st.sets(st.sampled_from(rules), max_size=len(rules)), label="lines")
        tickets = accessguard.scenario.tickets()
        kept = data.draw(
            st.lists(st.sampled_from(tickets), unique=True, max_size=len(tickets)), label="tickets"
        )
        directory = tmp_path_factory.mktemp("subset")
        for name in ("model.conf", "schema.toml"):
            shutil.copy(accessguard.scenario.policies_dir() / name, directory / name)
        (directory / POLICY_FILE).write_text(
            "\n".join(line for i, line in enumerate(lines) if i not in dropped) + "\n",
            encoding="utf-8",
        )
        after = _decide_all(probes, load_policy(directory), kept)
        more = [i for i, (a, b) in enumerate(zip(allowed, after, strict=True)) if b and not a]
        assert not more, f"now allowed: {[probes[i].facts.redacted for i in more]}"

    def test_removing_every_ticket_leaves_only_ticketless_reads(
        self, baseline: tuple[list[_Probe], list[bool], list[str]], policy_dir: Path
    ) -> None:
        """With no tickets at all, nothing that touches a scoped table is allowed."""
        probes, _allowed, _lines = baseline
        after = _decide_all(probes, load_policy(policy_dir), [])
        assert not any(ok and p.facts.scopes for ok, p in zip(after, probes, strict=True))
