"""The ``accessguard`` command line's parser: every command and option, declared once."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    pass


class UsageError(Exception):
    """argparse's usage error, raised instead of exiting so main() can answer in JSON."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


def _format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", default="text", choices=["text", "json"])


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("accessguard")
    except metadata.PackageNotFoundError:  # a checkout on sys.path, not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:  # noqa: PLR0915 - one declaration per option
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

    tried = audit_sub.add_parser(
        "who-tried",
        help="every employee refused while naming one customer (who tried and failed)",
    )
    _source_options(tried)
    tried.add_argument("--customer", required=True, help="the customer id")
    tried.add_argument("--product", action="store_true", help="--customer names a product")
    tried.add_argument("--since", help="only the last DURATION (90s, 15m, 1h, 30d, 2w)")
    tried.add_argument("--format", default="text", choices=["text", "json"])
    _engine_options(tried)

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

    late = audit_sub.add_parser(
        "after-close", help="customer data read after the ticket that allowed it had closed"
    )
    _source_options(late)
    late.add_argument("--customer", help="only this customer (default: every one)")
    late.add_argument("--product", action="store_true", help="--customer names a product")
    late.add_argument("--since", help="only the last DURATION (90s, 15m, 1h, 30d, 2w)")
    late.add_argument(
        "--grace",
        default="5s",
        help="a read this soon after its ticket closed is no finding (default 5s; 0: none)",
    )
    late.add_argument("--format", default="text", choices=["text", "json"])
    _engine_options(late)

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

    elevations = audit_sub.add_parser(
        "elevations", help="the break-glass review queue: who, why, when, what was read"
    )
    _source_options(elevations)
    elevations.add_argument("--since", help="only the last DURATION (90s, 15m, 1h, 30d, 2w)")
    _format_option(elevations)
    return parser


def _source_options(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--audit", type=Path, help="a JSON-lines audit file")
    source.add_argument("--dsn", help="the PostgreSQL sink")


def _engine_options(parser: argparse.ArgumentParser) -> None:
    """--from/--until and the trail index's options (accessguard.investigate)."""
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
