"""Loaders for the SQL case files in tests/cases/ (data a security engineer reviews).

Also the database helper the case-file tests share (a module-wide scenario copy).

- ``scenario.yaml``: the reference scenario's rows, one case per entry (employee,
  ticket, SQL, optional params, expected outcome and reason code).
- ``redteam-public.yaml``: a byte-exact copy of shared/redteam-public.yaml, the
  public attack and legitimate cases, all run as alice on T-100.

The loaders validate the files strictly (unknown keys, duplicate ids, wrong
types) so a typo in a case file fails loudly instead of silently testing less.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg
import yaml
from psycopg import sql as pgsql

CASES_DIR = Path(__file__).resolve().parent / "cases"
REPO_ROOT = Path(__file__).resolve().parents[1]
SCENARIO_FILE = CASES_DIR / "scenario.yaml"
REDTEAM_FILE = CASES_DIR / "redteam-public.yaml"
#: The shared original of REDTEAM_FILE, beside the repository (absent on a clean clone).
SHARED_REDTEAM_FILE = REPO_ROOT.parent / "shared" / "redteam-public.yaml"

Params = list[Any] | dict[str, Any] | None

_REASON = re.compile(r"^[a-z_]+\.[a-z_]+$")


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioCase:
    """One row of scenario.yaml."""

    id: str
    user: str
    ticket: str | None
    sql: str
    params: Params = None
    expect: str
    reason: str | None = None

    @property
    def allowed(self) -> bool:
        """Whether the case expects the statement to be allowed."""
        return self.expect == "allowed"


@dataclass(frozen=True, slots=True, kw_only=True)
class RedteamCase:
    """One entry of redteam-public.yaml (principal: alice on T-100)."""

    id: str
    category: str
    expected: str
    sql: str
    why: str
    params: Params = None

    @property
    def allowed(self) -> bool:
        """Whether the case expects the statement to be allowed."""
        return self.expected == "allow"


def _entries(path: Path) -> list[Mapping[str, Any]]:
    """The list of mappings a case file holds."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise TypeError(f"{path.name}: expected a list of mappings")
    return data


def _params(raw: object, case_id: str) -> Params:
    """Validate a case's params: absent, a list, or a mapping with string keys."""
    if raw is None:
        return None
    if isinstance(raw, list):
        return list(raw)
    if isinstance(raw, dict) and all(isinstance(k, str) for k in raw):
        return dict(raw)
    raise TypeError(f"{case_id}: params must be a list or a mapping")


def _check_keys(entry: Mapping[str, Any], required: set[str], optional: set[str]) -> str:
    """Return the entry's id after checking it has exactly the keys a case may have."""
    case_id = str(entry.get("id", "?"))
    missing = required - set(entry)
    unknown = set(entry) - required - optional
    if missing or unknown:
        raise ValueError(f"{case_id}: missing {sorted(missing)}, unknown {sorted(unknown)}")
    for key in required - {"ticket"}:
        if not isinstance(entry[key], str) or not entry[key]:
            raise TypeError(f"{case_id}: {key} must be a non-empty string")
    return case_id


def _unique(ids: Sequence[str], path: Path) -> None:
    """Refuse a file whose case ids repeat (pytest ids must be unique and stable)."""
    seen: set[str] = set()
    for case_id in ids:
        if case_id in seen:
            raise ValueError(f"{path.name}: duplicate case id {case_id}")
        seen.add(case_id)


def load_scenario_cases(path: Path = SCENARIO_FILE) -> list[ScenarioCase]:
    """Read and validate scenario.yaml."""
    cases: list[ScenarioCase] = []
    for entry in _entries(path):
        case_id = _check_keys(
            entry, {"id", "user", "ticket", "sql", "expect"}, {"params", "reason"}
        )
        ticket = entry["ticket"]
        if ticket is not None and not isinstance(ticket, str):
            raise TypeError(f"{case_id}: ticket must be a string or null")
        if entry["expect"] not in ("allowed", "denied"):
            raise ValueError(f"{case_id}: expect must be allowed or denied")
        reason = entry.get("reason")
        if reason is not None and (not isinstance(reason, str) or not _REASON.match(reason)):
            raise ValueError(f"{case_id}: reason must be a dotted code like column.not_allowed")
        if reason is not None and entry["expect"] == "allowed":
            raise ValueError(f"{case_id}: an allowed case has no reason")
        cases.append(
            ScenarioCase(
                id=case_id,
                user=entry["user"],
                ticket=ticket,
                sql=entry["sql"],
                params=_params(entry.get("params"), case_id),
                expect=entry["expect"],
                reason=reason,
            )
        )
    _unique([c.id for c in cases], path)
    return cases


def load_redteam_cases(path: Path = REDTEAM_FILE) -> list[RedteamCase]:
    """Read and validate redteam-public.yaml."""
    cases: list[RedteamCase] = []
    for entry in _entries(path):
        case_id = _check_keys(entry, {"id", "category", "expected", "sql", "why"}, {"params"})
        if entry["expected"] not in ("allow", "deny"):
            raise ValueError(f"{case_id}: expected must be allow or deny")
        cases.append(
            RedteamCase(
                id=case_id,
                category=entry["category"],
                expected=entry["expected"],
                sql=entry["sql"],
                why=entry["why"],
                params=_params(entry.get("params"), case_id),
            )
        )
    _unique([c.id for c in cases], path)
    return cases


# ---------------------------------------------------------------------- databases


class PgServerLike(Protocol):
    """What the ``pg_server`` fixture (tests/conftest.py) offers."""

    def dsn(self, dbname: str | None = None) -> str:
        """A libpq URL for ``dbname`` (the maintenance database by default)."""
        ...

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        """An autocommit connection to the maintenance database."""
        ...


@contextlib.contextmanager
def database_copy(
    server: PgServerLike, template: str, *, prefix: str, setup: str | None = None
) -> Iterator[str]:
    """A database cloned from ``template`` (then ``setup`` run in it); its DSN; dropped after.

    Cloning costs a third of a second on a server with fsync on, so the
    case-file tests share one copy per module and roll every test's
    transaction back instead of cloning per case.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with server.admin() as admin:
        admin.execute(
            pgsql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                pgsql.Identifier(name), pgsql.Identifier(template)
            )
        )
    try:
        if setup is not None:
            with psycopg.connect(server.dsn(name)) as conn:
                conn.execute(setup.encode())  # bytes, no params: one simple query, many statements
        yield server.dsn(name)
    finally:
        with server.admin() as admin:
            admin.execute(
                pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name))
            )
