"""The commands: each parses nothing, takes the parsed arguments and returns an exit code."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accessguard.cli.output import DATABASE_ERROR, EXIT_OK, EXIT_REFUSED, USAGE, fail, print_json

if TYPE_CHECKING:
    from accessguard.audit.verification import Verification


def scenario_load(args: argparse.Namespace) -> int:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from accessguard.scenario import load_postgres

    as_json, created = args.format == "json", False
    try:
        try:
            conn = psycopg.connect(args.dsn)
        except psycopg.OperationalError as exc:
            # a missing database is created (through the server's maintenance database)
            name = conninfo_to_dict(args.dsn).get("dbname")
            if not name or "does not exist" not in str(exc):
                raise
            with psycopg.connect(make_conninfo(args.dsn, dbname="postgres"), autocommit=True) as m:
                m.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(name))))
            created = True
            if not as_json:
                print(f"created database {name}")
            conn = psycopg.connect(args.dsn)
        with conn:
            load_postgres(conn)
            database = conn.info.dbname
    except psycopg.Error as exc:
        if as_json:
            error = RuntimeError(f"scenario load: {type(exc).__name__}: {exc}")
            return fail(error, as_json=as_json, reason=DATABASE_ERROR, code=EXIT_REFUSED)
        print(f"accessguard: scenario load: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if as_json:
        print_json({"created": created, "database": database, "tables": _scenario_tables()})
    else:
        print("loaded the reference scenario (9 tables) into the database")
    return EXIT_OK


def _scenario_tables() -> list[str]:
    """The tables ``scenario load`` (re)creates, schema-qualified, as its SQL declares them."""
    import re

    from accessguard import scenario

    text = (Path(scenario.__file__).parent / "schema_postgres.sql").read_text(encoding="utf-8")
    return re.findall(r"CREATE TABLE (\w+\.\w+)", text)


def schema_pull(args: argparse.Namespace) -> int:
    import psycopg

    from accessguard.authoring.schema_pull import pull, render

    try:
        with psycopg.connect(args.dsn) as conn:
            tables = pull(conn, args.schema)
            source = conn.info.dbname
    except psycopg.Error as exc:
        print(f"accessguard: schema pull: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if not tables:
        print(f"accessguard: schema pull: no tables in schema {args.schema!r}", file=sys.stderr)
        return EXIT_REFUSED
    text = render(tables, schema=args.schema, source=source)
    if args.out is None:
        print(text, end="")
    else:
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out} ({sum(1 for t in tables if t.name)} tables): review it")
    return EXIT_OK


def _explain(args: argparse.Namespace) -> tuple[int, str]:
    from accessguard.cli.tools import explain_command

    params = None if args.param is None else [parse_value(v) for v in args.param]
    return explain_command(args, params=params)


def _test(args: argparse.Namespace) -> tuple[int, str]:
    from accessguard.cli.tools import policy_test_command

    return policy_test_command(args)


def _lint(args: argparse.Namespace) -> tuple[int, str]:
    from accessguard.cli.tools import lint_command

    return lint_command(args)


def _replay(args: argparse.Namespace) -> tuple[int, str]:
    from accessguard.cli.tools import replay_command

    return replay_command(args)


def _learn(args: argparse.Namespace) -> tuple[int, str]:
    from accessguard.cli.tools import learn_command

    return learn_command(args)


TOOLS: dict[str, Callable[[argparse.Namespace], tuple[int, str]]] = {
    "explain": _explain,
    "test": _test,
    "lint": _lint,
    "replay": _replay,
    "learn": _learn,
}


def check(args: argparse.Namespace) -> int:
    from accessguard.guard import Guard
    from accessguard.testing import MemoryAuditSink
    from accessguard.tickets.stores import FileTicketStore

    # a dry run for the security team: its refusals are shown, not audited
    guard = Guard.from_directory(
        args.policies, tickets=FileTicketStore(args.tickets), audit=MemoryAuditSink()
    )
    params = None if args.param is None else [parse_value(v) for v in args.param]
    decision = guard.check(
        args.sql, params, user=args.user, ticket=args.ticket, dialect=args.dialect
    )
    if args.format == "json":
        out: dict[str, Any] = {
            "outcome": decision.outcome,
            "reason": str(decision.reason) if decision.reason else None,
            "message": decision.message,
            "kind": decision.kind,
            "tables": list(decision.tables),
            "columns": list(decision.columns),
            "subjects": [{"scope": s, "id": i} for s, i in decision.subjects],
            "masked": [{"column": c, "mask": m} for c, m in decision.masked],
            "policy_version": guard.policy.version,
        }
        print(json.dumps(out, indent=2))
    else:
        print(f"{decision.outcome}" + (f" ({decision.reason})" if decision.reason else ""))
        if decision.message:
            print(decision.message)
        if decision.tables:
            print(f"tables:  {', '.join(decision.tables)}")
        if decision.columns:
            print(f"columns: {', '.join(decision.columns)}")
        if decision.masked:
            print(f"masked:  {', '.join(f'{c} ({m})' for c, m in decision.masked)}")
    return EXIT_OK if decision.allowed else EXIT_REFUSED


def _subject_id(text: str, scope: str) -> int:
    """A --customer (or --product) id: a whole number, or a usage error that says so."""
    if not text.strip().isdigit():
        raise ValueError(f"--customer takes a {scope} id, a whole number (not {text!r})")
    return int(text)


def parse_value(text: str) -> Any:
    """A --param value: JSON when it parses (42, 4.2, "x", null), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def audit_verify(args: argparse.Namespace) -> int:
    from accessguard.audit.chain import KEY_ENV, load_key
    from accessguard.audit.verification import verify

    if (args.file is None) == (args.dsn is None):
        usage = ValueError("audit verify takes a FILE or --dsn")
        return fail(usage, as_json=args.format == "json", reason=USAGE)
    key = load_key()
    if args.dsn is not None:
        from accessguard.audit.pgverify import verify as verify_pg

        name = "accessguard.events"
        result = verify_pg(args.dsn, key=key)
    else:
        name = str(args.file)
        result = verify(args.file, key=key)
    if args.format == "json":
        print_json(verification_dict(name, result))
    else:
        print(describe(name, result, key_env=KEY_ENV))
    return EXIT_OK if result.ok else EXIT_REFUSED


def verification_dict(name: str, result: Verification) -> dict[str, Any]:
    """What ``audit verify --format json`` prints for one trail."""
    return {
        "trail": name,
        "ok": result.ok,
        "events": result.events,
        "broken_line": result.broken_line,
        "problem": result.problem or None,
        "key_id": result.key,
        "keyed": result.keyed,
        "demo_key": result.demo,
        "checkpoint": result.checkpoint,
        "torn_line": result.torn_line,
    }


def describe(name: str, result: Verification, *, key_env: str = "ACCESSGUARD_AUDIT_KEY") -> str:
    """What ``audit verify`` prints for one trail."""
    lines = []
    if result.ok:
        if result.keyed:
            keyed = f"keyed (key id {result.key})"
        elif result.demo:
            keyed = "keyed with the public demo key: tamper-evident only against naive edits"
        else:
            keyed = f"unkeyed: tamper-evident only against naive edits (set {key_env})"
        checkpoint = (
            f", checkpoint at event {result.checkpoint}" if result.checkpoint is not None else ""
        )
        lines.append(f"{name}: chain intact, {result.events} events, {keyed}{checkpoint}")
    else:
        where = f"{name}:{result.broken_line}" if result.broken_line is not None else name
        lines.append(
            f"{where}: chain broken: {result.problem} ({result.events} events verified before it)"
        )
    if result.torn_line is not None:
        lines.append(
            f"{name}:{result.torn_line}: torn last line (an interrupted write, not tampering; "
            "the next write cuts it off)"
        )
    return "\n".join(lines)


def investigate(args: argparse.Namespace) -> int:
    import datetime as dt

    from accessguard.investigate import sums as investigate

    if args.audit_command != "report":
        return _ask_engine(args)
    since = investigate.cutoff(args.since, now=dt.datetime.now(dt.UTC))
    from accessguard.investigate import available

    if args.dsn is not None or available():  # served by the engine who-read asks
        return _engine_report(args, since)
    sys.stderr.write("accessguard: DuckDB is not installed: reading the trail into Python\n")
    if args.dsn is not None:
        from accessguard.audit.pgverify import verified_events

        name = "accessguard.events"
        verdicts: list[Verification] = []
        events = list(verified_events(args.dsn, problems=verdicts))
        verdict = verdicts[0]
    else:
        name = str(args.audit)
        events, verdict = investigate.verified_events(args.audit)
    code = EXIT_OK if verdict.ok else EXIT_REFUSED
    if not verdict.ok or verdict.torn_line is not None or not verdict.keyed:
        # verified as read: a broken trail is said so, and fails the command
        print(f"accessguard: {describe(name, verdict)}", file=sys.stderr)
    if args.audit_command == "report":
        from accessguard.investigate.report import write_report

        write_report(events, args.out, since=since)
        print(f"wrote {args.out}")
        return code
    rows: list[investigate.Reader] | list[investigate.Touch]
    if args.audit_command == "who-read":
        scope = "product" if args.product else "customer"
        customer = _subject_id(args.customer, scope)
        rows = investigate.who_read(events, customer=customer, since=since, scope=scope)
    else:
        rows = investigate.what_read(events, user=args.user, since=since)
    if args.format == "json":
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        print(investigate.render_table(rows) if rows else "no reads recorded")
    return code


def _engine_report(args: argparse.Namespace, since: dt.datetime | None) -> int:
    """``audit report`` from the engine (accessguard.investigate.report_engine).

    The trail is verified first, resumed from its mark as who-read does; a
    broken one is said so and fails the command (the report is still written).
    """
    from accessguard.investigate import open_engine
    from accessguard.investigate.report_engine import write_engine_report

    engine = open_engine(audit=args.audit, dsn=args.dsn)
    try:
        name, verdict = _verified(args, engine)  # the sink: in the snapshot it answers from
        if not verdict.ok or verdict.torn_line is not None or not verdict.keyed:
            print(f"accessguard: {describe(name, verdict)}", file=sys.stderr)
        note = getattr(engine, "note", None)
        if note:
            print(f"accessguard: {note}", file=sys.stderr)
        write_engine_report(engine, args.out, since=since)
    finally:
        engine.close()
    print(f"wrote {args.out}")
    return EXIT_OK if verdict.ok else EXIT_REFUSED


def _ask_engine(args: argparse.Namespace) -> int:
    """who-read, who-tried, what-read, subject-export (and index): answered by DuckDB or SQL.

    The trail is verified first, streaming (no event is kept), and a broken
    trail fails the command as before; the answer comes from the engine
    (accessguard.investigate), never from the events loaded into Python. The
    PostgreSQL sink is verified inside the engine's own snapshot, so the rows
    answered from are the rows verified.
    """
    from accessguard.cli.investigate import run

    if args.audit_command == "index":
        return run(args)
    if getattr(args, "customer", None) is not None:
        _subject_id(args.customer, "product" if args.product else "customer")
    verdicts: list[Verification] = []

    def check(engine: object) -> None:
        name, verdict = _verified(args, engine)
        verdicts.append(verdict)
        if not verdict.ok or verdict.torn_line is not None or not verdict.keyed:
            print(f"accessguard: {describe(name, verdict)}", file=sys.stderr)

    code = run(args, check=check)
    return code if verdicts and verdicts[0].ok else EXIT_REFUSED


def _verified(args: argparse.Namespace, engine: object) -> tuple[str, Verification]:
    """The source's name and its verdict, resumed from the last verification's mark."""
    if args.dsn is not None:
        verify_here = getattr(engine, "verify", None)
        if callable(verify_here):  # the sink's engine: in the snapshot it answers from
            return "accessguard.events", verify_here(args.dsn)
        from accessguard.audit.pgresume import verify_resumed

        # resumed: rows a mark vouches for are proven unchanged in SQL, not read again
        return "accessguard.events", verify_resumed(args.dsn)
    from accessguard.audit.verification import verify

    # resumed: the bytes a mark vouches for are hashed, not parsed again
    return str(args.audit), verify(args.audit, resume=True)


def elevations_command(args: argparse.Namespace) -> tuple[int, str]:
    """``accessguard audit elevations``: (exit code, the queue to print); the trail verified first.

    A broken, torn or unkeyed trail is said so on stderr, and a broken one
    fails the command (exit 1), as the other audit commands do.
    """
    from accessguard.investigate import sums as investigate
    from accessguard.investigate.elevations import render_text, review

    since = investigate.cutoff(args.since, now=dt.datetime.now(dt.UTC))
    if args.dsn is not None:
        from accessguard.audit.pgverify import verified_events

        name = "accessguard.events"
        verdicts: list[Any] = []
        events = list(verified_events(args.dsn, problems=verdicts))
        verdict = verdicts[0]
    else:
        name = str(args.audit)
        events, verdict = investigate.verified_events(args.audit)
    if not verdict.ok or verdict.torn_line is not None or not verdict.keyed:
        sys.stderr.write(f"accessguard: {describe(name, verdict)}\n")
    items = review(events, since=since)
    text = (
        json.dumps([r.as_dict() for r in items], indent=2)
        if args.format == "json"
        else render_text(items)
    )
    return (EXIT_OK if verdict.ok else EXIT_REFUSED), text
