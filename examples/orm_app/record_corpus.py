"""Record the SQL the support desk's ORM patterns send, into tests/cases/orm.yaml.

Runs every pattern of patterns_sqlalchemy.py and patterns_django.py on a plain
(unguarded) PostgreSQL holding the reference scenario, once for alice's ticket
customer (42: the legitimate statements) and once for a bad twin (customer 43
or 7: the same code on another customer's keys, which the guard must refuse).
Each pattern runs in a transaction that is rolled back. Regenerating gives the
same file (stable ids, sorted keys); ``known`` marks are kept by case id, or,
with ``--mark-known``, set from what the guard decides today (each case run through
``guard.wrap`` on the database, where key-bound statements are probed).

    python examples/orm_app/record_corpus.py [--dsn DSN] [--mark-known]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import yaml
from demo import prepare
from sqlalchemy import create_engine, event
from sqlalchemy.orm import Session
from subject import ALICE, TWINS, Pattern, Subject

from accessguard import AccessGuardError, Guard, scenario
from accessguard.testing import MemoryAuditSink

HERE = Path(__file__).resolve().parent
OUT = HERE.parents[1] / "tests" / "cases" / "orm.yaml"
ALICE_T100 = {"user": "alice", "ticket": "T-100"}
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/accessguard_orm_corpus"

HEADER = """\
# ORM corpus (issue 16): the SQL a support-desk app written with SQLAlchemy 2 and
# Django 5 (examples/orm_app/) sends for alice on T-100 (customer 42), recorded
# on a plain PostgreSQL by examples/orm_app/record_corpus.py. GENERATED: edit the
# patterns and regenerate rather than editing cases (``known`` lines are kept).
# tests/test_orm_corpus.py replays every case through guard.wrap() as alice on T-100.
#
# Keys of a case:
#   id        stable: <orm>-<pattern>[-<n-th statement>][-twin]
#   orm       sqlalchemy | django
#   pattern   the ORM pattern (a function of the patterns_<orm>.py module)
#   sql       the statement text the ORM handed to the driver, byte-exact
#   params    what it handed with it: a mapping (%(name)s), a list (%s), or for
#             executemany a list of those
#   binding   server (psycopg sends $n parameters: SQLAlchemy) or client (psycopg's
#             ClientCursor merges values into the text: Django's default)
#   many      present and true for executemany
#   expected  allow (alice's legitimate statement) | deny (a bad twin)
#   twin_of   deny only: the legitimate case whose code ran on another customer's keys
#   known     allow only, one line: "over-refusal: <reason code>": refused today
#             (issue 16); the test is xfail(strict=True) until the guard accepts it
"""


class Recorder:
    """Collects (sql, params, many) of what each ORM hands its psycopg cursor."""

    def __init__(self) -> None:
        self.statements: list[dict[str, Any]] = []

    def add(self, statement: str, params: Any, *, many: bool) -> None:
        """Record one statement; params are copied to plain lists and dicts."""
        if statement.startswith(("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT")):
            return
        self.statements.append({"sql": statement, "params": _plain(params), "many": many})

    def take(self) -> list[dict[str, Any]]:
        """The statements recorded since the last take."""
        taken, self.statements = self.statements, []
        return taken


def _plain(params: Any) -> Any:
    """Params as YAML-safe plain values (tuples to lists, psycopg's Int8 to int, ...).

    Django wraps bigint values in psycopg's Int8; a ClientCursor merges it into
    the text exactly as it merges an int, so nothing is lost for client binding.
    """
    if isinstance(params, dict):
        return {str(k): _plain(v) for k, v in params.items()}
    if isinstance(params, (list, tuple)):
        return [_plain(v) for v in params]
    if params is None or isinstance(params, (bool, float, date)):
        return params
    if isinstance(params, int):
        return int(params)
    if isinstance(params, str):
        return str(params)
    raise TypeError(f"cannot record a parameter of type {type(params).__name__}")


def run_sqlalchemy(dsn: str, recorder: Recorder) -> list[tuple[str, Pattern, Any]]:
    """The SQLAlchemy patterns, with a runner taking (pattern, subject)."""
    import patterns_sqlalchemy
    import patterns_sqlalchemy_public
    import patterns_sqlalchemy_relations
    import patterns_sqlalchemy_writes

    engine = create_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1))

    @event.listens_for(engine, "before_cursor_execute")
    def _record(_conn: Any, _cur: Any, statement: str, params: Any, _ctx: Any, many: bool) -> None:
        recorder.add(statement, params, many=many)

    def run(func: Pattern, subject: Subject) -> None:
        with Session(engine) as session:
            try:
                func(session, subject)
            finally:
                session.rollback()

    patterns = (
        patterns_sqlalchemy.PATTERNS
        + patterns_sqlalchemy_writes.PATTERNS
        + patterns_sqlalchemy_public.PATTERNS
        + patterns_sqlalchemy_relations.PATTERNS
    )
    return [(name, func, run) for name, func in patterns]


def run_django(dsn: str, recorder: Recorder) -> list[tuple[str, Pattern, Any]]:
    """The Django patterns, with a runner taking (pattern, subject)."""
    import settings

    settings.configure(dsn)
    import patterns_django  # after settings.configure: the models need the app registry
    import patterns_django_relations
    import patterns_django_writes
    from django.db import connection, transaction

    def wrapper(execute: Any, statement: str, params: Any, many: bool, context: Any) -> Any:
        recorder.add(statement, params, many=many)
        return execute(statement, params, many, context)

    def run(func: Pattern, subject: Subject) -> None:
        with connection.execute_wrapper(wrapper), transaction.atomic():
            func(connection, subject)
            transaction.set_rollback(True)

    patterns = (
        patterns_django.PATTERNS
        + patterns_django_writes.PATTERNS
        + patterns_django_relations.PATTERNS
    )
    return [(name, func, run) for name, func in patterns]


def cases_of(
    orm: str, name: str, legit: list[dict[str, Any]], twin: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One allow case per legitimate statement, one deny case per statement its twin changed."""
    if len(legit) != len(twin):
        raise RuntimeError(f"{orm}/{name}: the twin sent {len(twin)} statements, not {len(legit)}")
    binding = "client" if orm == "django" else "server"
    cases: list[dict[str, Any]] = []
    for n, (good, bad) in enumerate(zip(legit, twin, strict=True), start=1):
        case_id = f"{'sa' if orm == 'sqlalchemy' else 'dj'}-{name}" + (
            f"-{n}" if len(legit) > 1 else ""
        )
        base = {"orm": orm, "pattern": name, "binding": binding}
        if good["many"]:
            base["many"] = True
        cases.append(
            {
                **base,
                "id": case_id,
                "sql": good["sql"],
                "params": good["params"],
                "expected": "allow",
            }
        )
        if (bad["sql"], bad["params"]) != (good["sql"], good["params"]):
            cases.append(
                {
                    **base,
                    "id": f"{case_id}-twin",
                    "sql": bad["sql"],
                    "params": bad["params"],
                    "expected": "deny",
                    "twin_of": case_id,
                }
            )
    return cases


def record(dsn: str) -> list[dict[str, Any]]:
    """Every case, in pattern order (SQLAlchemy first)."""
    recorder = Recorder()
    cases: list[dict[str, Any]] = []
    for orm, runners in (
        ("sqlalchemy", run_sqlalchemy(dsn, recorder)),
        ("django", run_django(dsn, recorder)),
    ):
        for index, (name, func, run) in enumerate(runners):
            run(func, ALICE)
            legit = recorder.take()
            run(func, TWINS[index % len(TWINS)])
            cases += cases_of(orm, name, legit, recorder.take())
    return cases


def mark_known(cases: list[dict[str, Any]], dsn: str) -> None:
    """Set ``known`` on the allow cases the guard refuses today.

    Each case runs through ``guard.wrap`` on ``dsn`` as the replay test runs it
    (key-bound statements are decided only there: their probe needs the
    database), in a transaction rolled back; the policy without volume limits.
    """
    with tempfile.TemporaryDirectory() as tmp:
        policies = Path(tmp) / "policies"
        shutil.copytree(scenario.policies_dir(), policies)
        (policies / "limits.toml").unlink(missing_ok=True)
        with Guard.from_directory(
            policies, tickets=scenario.tickets(), audit=MemoryAuditSink()
        ) as guard:
            for case in cases:
                case.pop("known", None)
                if case["expected"] == "allow":
                    reason = _refused(guard, dsn, case)
                    if reason is not None:
                        case["known"] = f"over-refusal: {reason} (issue 16)"


def _refused(guard: Guard, dsn: str, case: dict[str, Any]) -> str | None:
    """The reason the guard refuses ``case`` on ``dsn`` today (None: accepted); rolled back."""
    factory = psycopg.ClientCursor if case["binding"] == "client" else psycopg.Cursor
    with psycopg.connect(dsn, cursor_factory=factory) as raw:
        conn = guard.wrap(raw, **ALICE_T100)
        try:
            cur = conn.cursor()
            if case.get("many"):
                cur.executemany(case["sql"], case["params"])
            else:
                cur.execute(case["sql"], case["params"])
        except AccessGuardError as exc:
            return str(exc.reason)
        finally:
            raw.rollback()
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="database to (re)load and record on")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--mark-known", action="store_true", help="set known from today's guard")
    parser.add_argument("--known-from", type=Path, help="keep known marks of this file (--out)")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    prepare(args.dsn)
    cases = record(args.dsn)
    if args.mark_known:
        mark_known(cases, args.dsn)
    elif (source := args.known_from or args.out).exists():
        old = {
            c["id"]: c.get("known")
            for c in yaml.safe_load(source.read_text(encoding="utf-8")) or []
        }
        for case in cases:
            if old.get(case["id"]) and case["expected"] == "allow":
                case["known"] = old[case["id"]]
    body = yaml.safe_dump(cases, sort_keys=True, allow_unicode=True, width=100_000)
    args.out.write_text(HEADER + "\n" + body, encoding="utf-8")
    allow = sum(c["expected"] == "allow" for c in cases)
    print(f"{args.out}: {allow} legitimate statements, {len(cases) - allow} bad twins")


if __name__ == "__main__":
    main()
