"""The ``accessguard`` command. Exit codes: 0 ok, 1 denied/throttled/broken, 2 bad usage."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from accessguard.errors import AccessGuardError

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:  # noqa: PLR0915 - one declaration per option
    parser = argparse.ArgumentParser(
        prog="accessguard",
        description="Ticket-bound access control and audit for database sessions.",
    )
    parser.add_argument("--version", action="version", version=f"accessguard {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="decide one statement without a database")
    check.add_argument("--policies", required=True, type=Path, help="policy directory")
    check.add_argument("--tickets", required=True, type=Path, help="tickets (YAML or JSON)")
    check.add_argument("--user", required=True, help="the employee")
    check.add_argument("--ticket", default=None, help="the ticket the employee works under")
    check.add_argument("--dialect", default="postgres", choices=["postgres", "sqlite"])
    check.add_argument("--format", default="text", choices=["text", "json"])
    check.add_argument(
        "--param",
        action="append",
        default=None,
        metavar="VALUE",
        help="a value bound to the next %%s placeholder (repeat; JSON such as 42 or "
        '"x", else plain text)',
    )
    check.add_argument("sql", help="the statement (%%s placeholders with --param)")

    explain = sub.add_parser("explain", help="what the guard sees in one statement, and why")
    explain.add_argument("--policies", required=True, type=Path, help="policy directory")
    explain.add_argument("--tickets", required=True, type=Path, help="tickets (YAML or JSON)")
    explain.add_argument("--user", required=True, help="the employee")
    explain.add_argument("--ticket", default=None, help="the ticket the employee works under")
    explain.add_argument("--dialect", default="postgres", choices=["postgres", "sqlite"])
    explain.add_argument("sql", help="the statement")

    test = sub.add_parser("test", help="run policy test files (YAML cases) against a policy")
    test.add_argument("--policies", required=True, type=Path, help="policy directory")
    test.add_argument("files", nargs="+", type=Path, metavar="FILE", help="policy test files")

    lint = sub.add_parser("lint", help="check a policy directory for mistakes")
    lint.add_argument("--policies", required=True, type=Path, help="policy directory")
    lint.add_argument("--strict", action="store_true", help="fail on warnings too")
    lint.add_argument("--format", default="text", choices=["text", "json"])

    replay = sub.add_parser("replay", help="re-decide audited statements under a new policy")
    replay.add_argument("--audit", required=True, type=Path, help="a JSON-lines audit file")
    replay.add_argument("--policies", required=True, type=Path, help="the proposed policy")
    replay.add_argument(
        "--current",
        type=Path,
        default=None,
        help="compare with this policy instead of the recorded outcomes",
    )
    replay.add_argument(
        "--tickets",
        type=Path,
        default=None,
        help="tickets as they are now (default: as the events describe them)",
    )

    demo = sub.add_parser("demo", help="run the reference scenario on an embedded SQLite")
    demo.add_argument(
        "--report",
        type=Path,
        default=None,
        help="write the HTML report here (default: in the temp directory)",
    )
    demo.add_argument(
        "--audit",
        type=Path,
        default=None,
        help="write the audit trail here (default: a temporary file)",
    )

    scenario = sub.add_parser("scenario", help="the reference scenario's data")
    scenario_sub = scenario.add_subparsers(dest="scenario_command", required=True, metavar="ACTION")
    load = scenario_sub.add_parser(
        "load",
        help="(re)create the scenario's tables and rows in a PostgreSQL database "
        "(drops the scenario's tables there first)",
    )
    load.add_argument("dsn", help="libpq connection string of the database to fill")

    schema = sub.add_parser("schema", help="draft schema.toml from a live database")
    schema_sub = schema.add_subparsers(dest="schema_command", required=True, metavar="ACTION")
    pull = schema_sub.add_parser(
        "pull", help="tables, columns, keys and foreign keys as a schema.toml to review"
    )
    pull.add_argument("dsn", help="libpq connection string (an administrator's, not a guarded one)")
    pull.add_argument("--schema", default="public", help="the database schema to read")
    pull.add_argument("--out", type=Path, default=None, help="write here instead of stdout")

    audit = sub.add_parser("audit", help="read and verify audit trails")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = audit_sub.add_parser("verify", help="check the hash chain of an audit trail")
    verify.add_argument("file", type=Path, nargs="?", help="a JSON-lines audit file")
    verify.add_argument("--dsn", help="read the PostgreSQL sink instead of a file")

    who = audit_sub.add_parser("who-read", help="every employee who read one customer's data")
    _source_options(who)
    who.add_argument("--customer", required=True, help="the customer id")
    who.add_argument(
        "--product",
        action="store_true",
        help="--customer names a product (reviews are scoped by product)",
    )
    who.add_argument("--since", help="only the last DURATION (90s, 15m, 1h, 30d, 2w)")
    who.add_argument("--format", default="text", choices=["text", "json"])
    _engine_options(who)

    what = audit_sub.add_parser("what-read", help="every customer one employee read")
    _source_options(what)
    what.add_argument("--user", required=True, help="the employee")
    what.add_argument("--since", help="only the last DURATION (90s, 15m, 1h, 30d, 2w)")
    what.add_argument("--format", default="text", choices=["text", "json"])
    _engine_options(what)

    export = audit_sub.add_parser(
        "subject-export", help="everything read about one customer (GDPR Art. 15), in one document"
    )
    _source_options(export)
    export.add_argument("--customer", required=True, help="the customer id")
    export.add_argument("--product", action="store_true", help="--customer names a product")
    export.add_argument("--since", help="only the last DURATION (90s, 15m, 1h, 30d, 2w)")
    export.add_argument("--format", default="text", choices=["text", "json", "html"])
    export.add_argument("--out", type=Path, default=None, help="write here instead of stdout")
    _engine_options(export)

    index = audit_sub.add_parser(
        "index",
        help="bring the trail's index (TRAIL.index) or the sink's hourly rollup up to date",
    )
    _source_options(index)
    index.add_argument("--index", type=Path, default=None, help="where the trail's index lives")

    report = audit_sub.add_parser("report", help="write a self-contained HTML report")
    _source_options(report)
    report.add_argument("--out", required=True, type=Path, help="the HTML file to write")
    report.add_argument("--since", help="only the last DURATION (90s, 15m, 1h, 30d, 2w)")
    return parser


def _source_options(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--audit", type=Path, help="a JSON-lines audit file")
    source.add_argument("--dsn", help="the PostgreSQL sink")


def _engine_options(parser: argparse.ArgumentParser) -> None:
    """--from/--until and the trail index's options (accessguard.investigations)."""
    parser.add_argument(
        "--from",
        dest="from_",
        metavar="WHEN",
        help="only entries at or after WHEN (ISO 8601 date or date-time; UTC unless it says)",
    )
    parser.add_argument("--until", metavar="WHEN", help="only entries before WHEN (ISO 8601)")
    parser.add_argument(
        "--index", type=Path, default=None, help="the trail's index (default: TRAIL.index)"
    )
    parser.add_argument(
        "--no-index", action="store_true", help="scan the trail's JSON lines, keep no index"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            return _check(args)
        if args.command in _TOOLS:
            code, text = _TOOLS[args.command](args)
            print(text)
            return code
        if args.command == "scenario":
            return _scenario_load(args)
        if args.command == "schema":
            return _schema_pull(args)
        if args.command == "demo":
            from accessguard.demo import run

            return run(audit_path=args.audit, report_path=args.report)
        if args.audit_command == "verify":
            return _audit_verify(args)
        return _investigate(args)
    except ValueError as exc:  # a bad --since, --customer
        print(f"accessguard: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AccessGuardError as exc:
        print(f"accessguard: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"accessguard: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("accessguard")
    except metadata.PackageNotFoundError:  # a checkout on sys.path, not installed
        return "unknown"


def _scenario_load(args: argparse.Namespace) -> int:
    import psycopg

    from accessguard.scenario import load_postgres

    try:
        with psycopg.connect(args.dsn) as conn:
            load_postgres(conn)
    except psycopg.Error as exc:
        print(f"accessguard: scenario load: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    print("loaded the reference scenario (9 tables) into the database")
    return EXIT_OK


def _schema_pull(args: argparse.Namespace) -> int:
    import psycopg

    from accessguard.schema_pull import pull, render

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
    from accessguard.authoring import explain_command

    return explain_command(args)


def _test(args: argparse.Namespace) -> tuple[int, str]:
    from accessguard.authoring import policy_test_command

    return policy_test_command(args)


def _lint(args: argparse.Namespace) -> tuple[int, str]:
    from accessguard.lint import lint_command

    return lint_command(args)


def _replay(args: argparse.Namespace) -> tuple[int, str]:
    from accessguard.replay import replay_command

    return replay_command(args)


_TOOLS: dict[str, Callable[[argparse.Namespace], tuple[int, str]]] = {
    "explain": _explain,
    "test": _test,
    "lint": _lint,
    "replay": _replay,
}


def _check(args: argparse.Namespace) -> int:
    from accessguard.guard import Guard
    from accessguard.testing import MemoryAuditSink
    from accessguard.tickets import FileTicketStore

    # a dry run for the security team: its refusals are shown, not audited
    guard = Guard.from_directory(
        args.policies, tickets=FileTicketStore(args.tickets), audit=MemoryAuditSink()
    )
    params = None if args.param is None else [_value(v) for v in args.param]
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
    return EXIT_OK if decision.allowed else EXIT_REFUSED


def _value(text: str) -> Any:
    """A --param value: JSON when it parses (42, 4.2, "x", null), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _audit_verify(args: argparse.Namespace) -> int:
    from accessguard.audit import verify, verify_events

    if (args.file is None) == (args.dsn is None):
        print("accessguard: audit verify takes a FILE or --dsn", file=sys.stderr)
        return EXIT_USAGE
    if args.dsn is not None:
        from accessguard.pgsink import read_events as read_pg

        name = "accessguard.events"
        result = verify_events(enumerate(read_pg(args.dsn), 1))
    else:
        name = str(args.file)
        result = verify(args.file)
    if result.ok:
        print(f"{name}: chain intact, {result.events} events")
        return EXIT_OK
    print(
        f"{name}:{result.broken_line}: chain broken: {result.problem} "
        f"({result.events} events verified before it)"
    )
    return EXIT_REFUSED


def _investigate(args: argparse.Namespace) -> int:
    import datetime as dt

    from accessguard import investigate

    if args.audit_command != "report":  # pushed down to an engine (DuckDB or SQL)
        from accessguard.investigations.command import run

        return run(args)
    if args.dsn is not None:
        from accessguard.pgsink import read_events as read_pg

        events = list(read_pg(args.dsn))
    else:
        events = investigate.events_from_file(args.audit)
    since = investigate.cutoff(args.since, now=dt.datetime.now(dt.UTC))
    if args.audit_command == "report":
        from accessguard.report import write_report

        write_report(events, args.out, since=since)
        print(f"wrote {args.out}")
        return EXIT_OK
    rows: list[investigate.Reader] | list[investigate.Touch]
    if args.audit_command == "who-read":
        scope = "product" if args.product else "customer"
        rows = investigate.who_read(events, customer=int(args.customer), since=since, scope=scope)
    else:
        rows = investigate.what_read(events, user=args.user, since=since)
    if args.format == "json":
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        print(investigate.render_table(rows) if rows else "no reads recorded")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
