"""The ORM corpus (tests/cases/orm.yaml, issue 16), replayed as alice on T-100.

Each case is a statement a support-desk app on SQLAlchemy 2 or Django 5 sent
(recorded by examples/orm_app/record_corpus.py), run through
``guard.wrap(psycopg connection, user="alice", ticket="T-100")`` with the
recorded params and binding (server: psycopg's ``$n``; client: ``ClientCursor``).

- A deny case (a bad twin: the same ORM code on another customer's keys) must
  be refused (AccessDenied or Throttled), with nothing changed in the database.
- An allow case must run; its rows (or, for a write, its row count and the
  orders it leaves behind) equal what the same statement gives on a database
  holding only alice's view (tests/test_redteam.py's ALICE_VIEW_SQL), and
  nothing outside her customer's rows changes. The allow cases refused today
  carry ``known: "over-refusal: <reason> (issue 16)"``: xfail(strict=True), so
  a guard that starts accepting one fails here until the mark is removed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
import yaml
from casefiles import CASES_DIR, REPO_ROOT, PgServerLike, database_copy
from psycopg import sql as pgsql
from test_redteam import ALICE_VIEW_SQL, TIMEOUT

from accessguard import AccessDenied, AccessGuardError, Throttled

if TYPE_CHECKING:
    from _pytest.mark.structures import ParameterSet

    from accessguard import Guard

ORM_FILE = CASES_DIR / "orm.yaml"
RECORDER = REPO_ROOT / "examples" / "orm_app" / "record_corpus.py"
USER, TICKET, CUSTOMER = "alice", "T-100", 42

Params = list[Any] | dict[str, Any] | None
Rows = list[tuple[Any, ...]]

_REQUIRED = {"id", "orm", "pattern", "sql", "params", "binding", "expected"}
_OPTIONAL = {"many", "twin_of", "known"}
_KNOWN = re.compile(r"^over-refusal: [a-z_]+\.[a-z_]+ \(issue 16\)$")
_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)

#: Every table a guarded statement could change, as (table, key columns), for the
#: "nothing changed" checks; orders is also compared with alice's view after a write.
_TABLES = (
    ("customers", "id"),
    ("orders", "id"),
    ("payments", "id"),
    ("reviews", "id"),
    ("account_flags", "customer_id"),
    ("tickets", "id"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class OrmCase:
    """One entry of orm.yaml."""

    id: str
    orm: str
    pattern: str
    sql: str
    params: Params | list[Params]
    binding: str
    expected: str
    many: bool = False
    twin_of: str | None = None
    known: str | None = None

    @property
    def allowed(self) -> bool:
        """Whether the case is a legitimate statement (not a bad twin)."""
        return self.expected == "allow"


def _params(raw: object, case_id: str, *, many: bool) -> Params | list[Params]:
    """Validate params: None, a list or a string-keyed mapping; for executemany a list of those."""
    if many:
        if not isinstance(raw, list) or not raw:
            raise TypeError(f"{case_id}: executemany params must be a non-empty list")
        return [_params(p, case_id, many=False) for p in raw]
    if raw is None or isinstance(raw, list):
        return raw
    if isinstance(raw, dict) and all(isinstance(k, str) for k in raw):
        return dict(raw)
    raise TypeError(f"{case_id}: params must be null, a list or a mapping")


def _case(entry: Mapping[str, Any]) -> OrmCase:
    """Validate one entry strictly: a typo fails loudly instead of testing less."""
    case_id = str(entry.get("id", "?"))
    missing, unknown = _REQUIRED - set(entry), set(entry) - _REQUIRED - _OPTIONAL
    if missing or unknown:
        raise ValueError(f"{case_id}: missing {sorted(missing)}, unknown {sorted(unknown)}")
    checks = {
        "orm": entry["orm"] in ("sqlalchemy", "django"),
        "binding": entry["binding"] in ("server", "client"),
        "expected": entry["expected"] in ("allow", "deny"),
        "many": entry.get("many", True) is True,
        "twin_of": ("twin_of" in entry) == (entry["expected"] == "deny"),
        "known": "known" not in entry
        or (entry["expected"] == "allow" and bool(_KNOWN.match(str(entry["known"])))),
        "sql": isinstance(entry["sql"], str) and bool(entry["sql"].strip()),
    }
    for key, ok in checks.items():
        if not ok:
            raise ValueError(f"{case_id}: bad {key}")
    many = bool(entry.get("many", False))
    return OrmCase(
        id=case_id,
        orm=entry["orm"],
        pattern=str(entry["pattern"]),
        sql=entry["sql"],
        params=_params(entry["params"], case_id, many=many),
        binding=entry["binding"],
        expected=entry["expected"],
        many=many,
        twin_of=entry.get("twin_of"),
        known=entry.get("known"),
    )


def load_orm_cases(path: Path = ORM_FILE) -> list[OrmCase]:
    """Read and validate orm.yaml."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise TypeError(f"{path.name}: expected a list of mappings")
    cases = [_case(e) for e in data]
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path.name}: duplicate case ids")
    return cases


CASES = load_orm_cases()


def _orm_params() -> list[ParameterSet]:
    """The cases as pytest parameters; known over-refusals are xfail(strict=True)."""
    return [
        pytest.param(
            case,
            id=case.id,
            marks=[pytest.mark.xfail(strict=True, reason=case.known)] if case.known else [],
        )
        for case in CASES
    ]


@pytest.fixture(scope="module")
def orm_db(pg_server: PgServerLike, scenario_template: str) -> Iterator[str]:
    """DSN of one scenario copy for the module; each case rolls its transaction back."""
    with database_copy(pg_server, scenario_template, prefix="ag_orm") as dsn:
        yield dsn


@pytest.fixture(scope="module")
def orm_view_db(pg_server: PgServerLike, scenario_template: str) -> Iterator[str]:
    """DSN of a database holding only what alice may see on T-100."""
    with database_copy(
        pg_server, scenario_template, prefix="ag_orm_view", setup=ALICE_VIEW_SQL
    ) as dsn:
        yield dsn


def _connect(dsn: str, case: OrmCase) -> psycopg.Connection[Any]:
    """A psycopg connection binding parameters the way the case's ORM does."""
    factory = psycopg.ClientCursor if case.binding == "client" else psycopg.Cursor
    return psycopg.connect(dsn, options=TIMEOUT, cursor_factory=factory)


def _execute(conn: Any, case: OrmCase) -> tuple[Rows | None, int]:
    """Run the case on ``conn`` (guarded or not): (rows or None, rowcount)."""
    cur = conn.cursor()
    if case.many:
        cur.executemany(case.sql, case.params)
        return None, cur.rowcount
    cur.execute(case.sql, case.params)
    rows = list(cur.fetchall()) if cur.description is not None else None
    return rows, cur.rowcount


def _comparable(rows: Rows | None, case: OrmCase) -> Rows | None:
    """Rows in a comparable order: as returned under ORDER BY, else sorted."""
    if rows is None or _ORDER_BY.search(case.sql):
        return rows
    return sorted(rows, key=repr)


def _state(conn: psycopg.Connection[Any], *, outside: bool) -> dict[str, str | None]:
    """A digest per table, as this connection's transaction sees it.

    ``outside``: only the rows that are not customer 42's (for customers,
    orders and payments; the other tables whole).
    """
    digests: dict[str, str | None] = {}
    for table, key in _TABLES:
        where: pgsql.Composable = pgsql.SQL("")
        if outside and table in ("customers", "orders", "payments"):
            column = "id" if table == "customers" else "customer_id"
            where = pgsql.SQL(" WHERE {} IS DISTINCT FROM {}").format(
                pgsql.Identifier(column), pgsql.Literal(CUSTOMER)
            )
        query = pgsql.SQL("SELECT md5(string_agg(t::text, ',' ORDER BY t.{})) FROM {} t{}").format(
            pgsql.Identifier(key), pgsql.Identifier(table), where
        )
        row = conn.execute(query).fetchone()
        digests[table] = None if row is None else row[0]
    return digests


def _orders_of_alice(conn: psycopg.Connection[Any]) -> Rows:
    """Customer 42's orders as this connection's transaction sees them."""
    return list(conn.execute("SELECT * FROM orders WHERE customer_id = 42 ORDER BY id"))


def _reference(view_dsn: str, case: OrmCase) -> tuple[Rows | None, int, Rows]:
    """(rows, rowcount, customer 42's orders after it) on alice's view database; rolled back."""
    with _connect(view_dsn, case) as conn:
        try:
            rows, rowcount = _execute(conn, case)
            return rows, rowcount, _orders_of_alice(conn)
        finally:
            conn.rollback()


class TestCaseFile:
    def test_cases_load(self) -> None:
        """The file holds over 100 legitimate statements of both ORMs and a bad twin for each."""
        legit = [c for c in CASES if c.allowed]
        assert len(legit) >= 100
        assert {c.orm for c in legit} == {"sqlalchemy", "django"}
        twins = {c.twin_of for c in CASES if not c.allowed}
        assert twins == {c.id for c in legit}

    def test_twins_differ(self) -> None:
        """A bad twin sends the same statement shape with other keys, never the same values."""
        by_id = {c.id: c for c in CASES}
        for twin in (c for c in CASES if not c.allowed):
            good = by_id[str(twin.twin_of)]
            assert (twin.orm, twin.pattern, twin.binding) == (good.orm, good.pattern, good.binding)
            assert (twin.sql, twin.params) != (good.sql, good.params), twin.id

    def test_loader_refuses_typos(self, tmp_path: Path) -> None:
        """An unknown key, a known mark on a deny case or a malformed mark fails loudly."""
        base = {
            "id": "x",
            "orm": "django",
            "pattern": "p",
            "sql": "SELECT 1",
            "params": None,
            "binding": "client",
            "expected": "allow",
        }
        bad = [
            {**base, "expect": "allow"},
            {**base, "expected": "deny", "twin_of": "y", "known": "over-refusal: a.b (issue 16)"},
            {**base, "known": "refused"},
            {**base, "expected": "deny"},
        ]
        for entry in bad:
            path = tmp_path / "orm.yaml"
            path.write_text(yaml.safe_dump([entry]), encoding="utf-8")
            with pytest.raises((ValueError, TypeError)):
                load_orm_cases(path)


@pytest.mark.db
class TestReplay:
    @pytest.mark.parametrize("case", _orm_params())
    def test_case(self, case: OrmCase, unlimited: Guard, orm_db: str, orm_view_db: str) -> None:
        """Deny: refused, nothing changed. Allow: accepted, alice's view's result, nothing else."""
        raw = _connect(orm_db, case)
        try:
            before, outside = _state(raw, outside=False), _state(raw, outside=True)
            raw.rollback()
            conn = unlimited.wrap(raw, user=USER, ticket=TICKET)
            refusal: AccessGuardError | None = None
            try:
                rows, rowcount = _execute(conn, case)
            except (AccessDenied, Throttled) as exc:
                refusal = exc
            if not case.allowed:
                assert refusal is not None, "LEAK: a bad twin was accepted"
                assert _state(raw, outside=False) == before, "a refused statement changed data"
                return
            assert refusal is None, f"over-refusal: {refusal.reason}: {refusal}"
            assert _state(raw, outside=True) == outside, "rows beyond customer 42's changed"
            ref_rows, ref_count, ref_orders = _reference(orm_view_db, case)
            assert _comparable(rows, case) == _comparable(ref_rows, case)
            assert rowcount == ref_count
            assert _orders_of_alice(raw) == ref_orders
        finally:
            raw.rollback()
            raw.close()


@pytest.mark.db
class TestRegeneration:
    def test_recorder_reproduces_the_file(self, pg_server: PgServerLike, tmp_path: Path) -> None:
        """Running the recorder again writes orm.yaml byte for byte (stable ids, sorted keys)."""
        name = f"ag_orm_rec_{uuid.uuid4().hex[:10]}"
        out = tmp_path / "orm.yaml"
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        try:
            argv = [sys.executable, str(RECORDER), "--dsn", pg_server.dsn(name)]
            argv += ["--out", str(out), "--known-from", str(ORM_FILE)]
            done = subprocess.run(  # noqa: S603 - our own script, with this interpreter
                argv, check=False, capture_output=True, text=True, env=env, timeout=300
            )
            assert done.returncode == 0, done.stderr[-3000:]
        finally:
            with pg_server.admin() as admin:
                admin.execute(
                    pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        pgsql.Identifier(name)
                    )
                )
        assert out.read_bytes() == ORM_FILE.read_bytes(), (
            "orm.yaml is stale: regenerate it with examples/orm_app/record_corpus.py"
        )
