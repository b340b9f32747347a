"""The ``accessguard`` command. Exit codes: 0 ok, 1 denied/throttled/broken, 2 bad usage."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from accessguard.errors import AccessGuardError

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="accessguard",
        description="Ticket-bound access control and audit for database sessions.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="decide one statement without a database")
    check.add_argument("--policies", required=True, type=Path, help="policy directory")
    check.add_argument("--tickets", required=True, type=Path, help="tickets (YAML or JSON)")
    check.add_argument("--user", required=True, help="the employee")
    check.add_argument("--ticket", default=None, help="the ticket the employee works under")
    check.add_argument("--dialect", default="postgres", choices=["postgres", "sqlite"])
    check.add_argument("--format", default="text", choices=["text", "json"])
    check.add_argument("sql", help="the statement ($1, $2 ... for parameters)")

    demo = sub.add_parser("demo", help="run the reference scenario on an embedded SQLite")
    demo.add_argument(
        "--audit",
        type=Path,
        default=None,
        help="write the audit trail here (default: a temporary file)",
    )

    audit = sub.add_parser("audit", help="read and verify audit trails")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = audit_sub.add_parser("verify", help="check the hash chain of an audit file")
    verify.add_argument("file", type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            return _check(args)
        if args.command == "demo":
            from accessguard.demo import run

            return run(audit_path=args.audit)
        return _audit_verify(args)
    except AccessGuardError as exc:
        print(f"accessguard: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"accessguard: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE


def _check(args: argparse.Namespace) -> int:
    from accessguard.guard import Guard
    from accessguard.tickets import FileTicketStore

    guard = Guard.from_directory(args.policies, tickets=FileTicketStore(args.tickets))
    decision = guard.check(args.sql, user=args.user, ticket=args.ticket, dialect=args.dialect)
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


def _audit_verify(args: argparse.Namespace) -> int:
    from accessguard.audit import verify

    result = verify(args.file)
    if result.ok:
        print(f"{args.file}: chain intact, {result.events} events")
        return EXIT_OK
    print(
        f"{args.file}:{result.broken_line}: chain broken: {result.problem} "
        f"({result.events} events verified before it)"
    )
    return EXIT_REFUSED


if __name__ == "__main__":
    raise SystemExit(main())
