"""The ``accessguard`` command. Exit codes: 0 ok, 1 denied/throttled/broken, 2 bad usage."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from accessguard.errors import AccessGuardError, PolicyError

if TYPE_CHECKING:
    from accessguard.verification import Verification

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:  # noqa: PLR0915 - one declaration per option
    parser = _Parser(
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
    _format_option(explain)
    explain.add_argument(
        "--param", action="append", default=None, metavar="VALUE", help="as in check"
    )
    explain.add_argument("sql", help="the statement (%%s placeholders with --param)")

    test = sub.add_parser("test", help="run policy test files (YAML cases) against a policy")
    test.add_argument("--policies", required=True, type=Path, help="policy directory")
    test.add_argument("files", nargs="+", type=Path, metavar="FILE", help="policy test files")
    _format_option(test)

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
    _format_option(replay)

    learn = sub.add_parser(
        "learn", help="propose a least-privilege policy.csv from what the audit says was used"
    )
    _source_options(learn)
    learn.add_argument("--policies", required=True, type=Path, help="the current policy")
    period = learn.add_mutually_exclusive_group()
    period.add_argument("--since", help="only the last DURATION (90s, 15m, 1h, 30d, 2w)")
    period.add_argument("--from", dest="from_", metavar="TIME", help="ISO 8601 start")
    learn.add_argument("--until", metavar="TIME", help="ISO 8601 end (default: now)")
    learn.add_argument("--out", type=Path, default=None, help="write the diff here")

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
    _format_option(load)

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
    _format_option(verify)

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
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except _UsageError as exc:
        if not _wants_json(argv):
            exc.parser.print_usage(sys.stderr)
            exc.parser.exit(EXIT_USAGE, f"{exc.parser.prog}: error: {exc}\n")
        return _fail(exc, as_json=_wants_json(argv), reason=USAGE)
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
        return _fail(exc, as_json=_wants_json(argv), reason=USAGE)
    except AccessGuardError as exc:
        return _fail(exc, as_json=_wants_json(argv), reason=str(exc.reason))
    except OSError as exc:
        return _fail(exc, as_json=_wants_json(argv), reason=FILE_ERROR)


# ---------------------------------------------------------------------- JSON output and errors

#: reason codes of the command's own errors (the library's come from ``Reason``)
USAGE, FILE_ERROR, DATABASE_ERROR = "usage.invalid", "file.unreadable", "database.error"


class _UsageError(Exception):
    """argparse's usage error, raised instead of exiting so main() can answer in JSON."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(self, message)


def _format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", default="text", choices=["text", "json"])


def _wants_json(argv: Sequence[str]) -> bool:
    """``--format json`` (or ``--format=json``) is on the command line, parsed or not."""
    pairs = zip(argv, [*argv[1:], ""], strict=True)
    return "--format=json" in argv or any(a == "--format" and b == "json" for a, b in pairs)


def _fail(exc: BaseException, *, as_json: bool, reason: str, code: int = EXIT_USAGE) -> int:
    """Report an error: one JSON object on stdout with --format json, else a line on stderr."""
    path = line = None
    if isinstance(exc, PolicyError):  # its message starts with "path:line: ", given apart here
        path, line = exc.path, exc.line
        where = f"{path}:{line}: " if line is not None else f"{path}: "
        message = exc.message.removeprefix(where)
    elif isinstance(exc, AccessGuardError):
        message = exc.message
    elif isinstance(exc, OSError):
        message = exc.strerror or str(exc)
        path = None if exc.filename is None else str(exc.filename)
    else:
        message = str(exc)
    if as_json:
        error = {"reason": reason, "message": message, "path": path, "line": line}
        print(json.dumps({"error": error}, indent=2))
    elif isinstance(exc, OSError):
        print(f"accessguard: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
    else:
        print(f"accessguard: {exc}", file=sys.stderr)
    return code


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("accessguard")
    except metadata.PackageNotFoundError:  # a checkout on sys.path, not installed
        return "unknown"


def _scenario_load(args: argparse.Namespace) -> int:
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
            return _fail(error, as_json=as_json, reason=DATABASE_ERROR, code=EXIT_REFUSED)
        print(f"accessguard: scenario load: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if as_json:
        _print_json({"created": created, "database": database, "tables": _scenario_tables()})
    else:
        print("loaded the reference scenario (9 tables) into the database")
    return EXIT_OK


def _scenario_tables() -> list[str]:
    """The tables ``scenario load`` (re)creates, schema-qualified, as its SQL declares them."""
    import re

    from accessguard import scenario

    text = (Path(scenario.__file__).parent / "schema_postgres.sql").read_text(encoding="utf-8")
    return re.findall(r"CREATE TABLE (\w+\.\w+)", text)


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

    params = None if args.param is None else [_value(v) for v in args.param]
    return explain_command(args, params=params)


def _test(args: argparse.Namespace) -> tuple[int, str]:
    from accessguard.authoring import policy_test_command

    return policy_test_command(args)


def _lint(args: argparse.Namespace) -> tuple[int, str]:
    from accessguard.lint import lint_command

    return lint_command(args)


def _replay(args: argparse.Namespace) -> tuple[int, str]:
    from accessguard.replay import replay_command

    return replay_command(args)


def _learn(args: argparse.Namespace) -> tuple[int, str]:
    from accessguard.learn_report import run

    return run(args)


_TOOLS: dict[str, Callable[[argparse.Namespace], tuple[int, str]]] = {
    "explain": _explain,
    "test": _test,
    "lint": _lint,
    "replay": _replay,
    "learn": _learn,
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


def _value(text: str) -> Any:
    """A --param value: JSON when it parses (42, 4.2, "x", null), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _audit_verify(args: argparse.Namespace) -> int:
    from accessguard.chain import KEY_ENV, load_key
    from accessguard.verification import verify

    if (args.file is None) == (args.dsn is None):
        usage = ValueError("audit verify takes a FILE or --dsn")
        return _fail(usage, as_json=args.format == "json", reason=USAGE)
    key = load_key()
    if args.dsn is not None:
        from accessguard.pgverify import verify as verify_pg

        name = "accessguard.events"
        result = verify_pg(args.dsn, key=key)
    else:
        name = str(args.file)
        result = verify(args.file, key=key)
    if args.format == "json":
        _print_json(verification_dict(name, result))
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


def _investigate(args: argparse.Namespace) -> int:
    import datetime as dt

    from accessguard import investigate

    if args.audit_command != "report":
        return _ask_engine(args)
    since = investigate.cutoff(args.since, now=dt.datetime.now(dt.UTC))
    if args.dsn is not None:
        from accessguard.pgverify import verified_events

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
        from accessguard.report import write_report

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


def _ask_engine(args: argparse.Namespace) -> int:
    """who-read, what-read, subject-export (and index): answered by DuckDB or SQL.

    The trail is verified first, streaming (no event is kept), and a broken
    trail fails the command as before; the answer comes from the engine
    (accessguard.investigations), never from the events loaded into Python.
    """
    from accessguard.investigations.command import run

    if args.audit_command == "index":
        return run(args)
    if getattr(args, "customer", None) is not None:
        _subject_id(args.customer, "product" if args.product else "customer")
    if args.dsn is not None:
        from accessguard.pgverify import verified_events

        name = "accessguard.events"
        verdicts: list[Verification] = []
        for _event in verified_events(args.dsn, problems=verdicts):
            pass
        verdict = verdicts[0]
    else:
        from accessguard.verification import verify

        name, verdict = str(args.audit), verify(args.audit)
    if not verdict.ok or verdict.torn_line is not None or not verdict.keyed:
        print(f"accessguard: {describe(name, verdict)}", file=sys.stderr)
    code = run(args)
    return code if verdict.ok else EXIT_REFUSED


if __name__ == "__main__":
    raise SystemExit(main())
