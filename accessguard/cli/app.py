"""The ``accessguard`` command: parse, dispatch, answer errors (in JSON with --format json)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from accessguard.errors import AccessGuardError

if TYPE_CHECKING:
    pass

from accessguard.cli.commands import (
    TOOLS,
    audit_verify,
    check,
    elevations_command,
    investigate,
    scenario_load,
    schema_pull,
)
from accessguard.cli.output import (
    DATABASE_ERROR,
    EXIT_REFUSED,
    EXIT_USAGE,
    FILE_ERROR,
    USAGE,
    fail,
    wants_json,
)
from accessguard.cli.parser import UsageError, build_parser

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        if not wants_json(argv):
            exc.parser.print_usage(sys.stderr)
            exc.parser.exit(EXIT_USAGE, f"{exc.parser.prog}: error: {exc}\n")
        return fail(exc, as_json=wants_json(argv), reason=USAGE)
    try:
        if args.command == "check":
            return check(args)
        if args.command in TOOLS:
            code, text = TOOLS[args.command](args)
            print(text)
            return code
        if args.command == "scenario":
            return scenario_load(args)
        if args.command == "schema":
            return schema_pull(args)
        if args.command == "demo":
            from accessguard.scenario.demo import run

            return run(audit_path=args.audit, report_path=args.report)
        if args.audit_command == "verify":
            return audit_verify(args)
        if args.audit_command == "elevations":
            code, text = elevations_command(args)
            print(text)
            return code
        return investigate(args)
    except ValueError as exc:  # a bad --since, --customer
        return fail(exc, as_json=wants_json(argv), reason=USAGE)
    except AccessGuardError as exc:
        return fail(exc, as_json=wants_json(argv), reason=str(exc.reason))
    except OSError as exc:
        return fail(exc, as_json=wants_json(argv), reason=FILE_ERROR)
    except Exception as exc:  # the driver's errors, without importing the driver for --help
        if type(exc).__module__.split(".", 1)[0] != "psycopg":
            raise
        return fail(exc, as_json=wants_json(argv), reason=DATABASE_ERROR, code=EXIT_REFUSED)


# ---------------------------------------------------------------------- JSON output and errors

#: reason codes of the command's own errors (the library's come from ``Reason``)
