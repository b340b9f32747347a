"""The policy authors' commands: lint, test, explain, replay, learn.

Each takes the parsed arguments and returns (exit code, text to print); the
work is done by library functions that take plain values
(``accessguard.authoring`` and ``accessguard.investigate.replay``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

from accessguard.authoring.cases import EXIT_FAILED, EXIT_OK, run_policy_tests
from accessguard.authoring.explain import explain, explain_data
from accessguard.authoring.learn import Period
from accessguard.authoring.learn_report import learn
from accessguard.authoring.lint import exit_code, lint, render
from accessguard.guard import Guard
from accessguard.investigate.replay import replay
from accessguard.investigate.sums import Event, cutoff, events_from_file, parse_time
from accessguard.testing import MemoryAuditSink
from accessguard.tickets.stores import FileTicketStore

__all__ = [
    "explain_command",
    "learn_command",
    "lint_command",
    "policy_test_command",
    "replay_command",
]


def lint_command(args: argparse.Namespace) -> tuple[int, str]:
    """``accessguard lint --policies DIR [--strict] [--format json]``."""
    findings = lint(args.policies)
    code = exit_code(findings, strict=getattr(args, "strict", False))
    if getattr(args, "format", "text") == "json":
        return code, json.dumps([dataclasses.asdict(f) for f in findings], indent=2)
    return code, render(findings)


# ---------------------------------------------------------------------- reading


def policy_test_command(args: argparse.Namespace) -> tuple[int, str]:
    """``accessguard test --policies DIR FILE... [--format json]``."""
    report = run_policy_tests(args.policies, args.files)
    if getattr(args, "format", "text") == "json":
        return report.exit_code, json.dumps(report.as_dict(), indent=2)
    return report.exit_code, report.render()


def explain_command(
    args: argparse.Namespace, *, params: Sequence[Any] | Mapping[str, Any] | None = None
) -> tuple[int, str]:
    """``accessguard explain`` (the options of ``check``); exit 0 allowed, 1 refused."""
    guard = Guard.from_directory(
        args.policies, tickets=FileTicketStore(args.tickets), audit=MemoryAuditSink()
    )
    options: dict[str, Any] = {"user": args.user, "ticket": args.ticket, "dialect": args.dialect}
    try:
        if getattr(args, "format", "text") == "json":
            text = json.dumps(explain_data(guard, args.sql, params=params, **options), indent=2)
        else:
            text = explain(guard, args.sql, params=params, **options)
        allowed = guard.check(args.sql, params, **options)
    finally:
        guard.close()
    return (EXIT_OK if allowed.allowed else EXIT_FAILED), text


def replay_command(args: argparse.Namespace) -> tuple[int, str]:
    """``accessguard replay --audit FILE --policies DIR [--current DIR] [--tickets FILE]``.

    ``--format json`` prints :meth:`ReplayReport.as_dict`.
    """
    tickets = FileTicketStore(args.tickets) if args.tickets is not None else None
    report = replay(args.audit, args.current, args.policies, tickets=tickets)
    if getattr(args, "format", "text") == "json":
        return EXIT_OK, json.dumps(report.as_dict(), indent=2)
    return EXIT_OK, report.render()


def learn_command(args: argparse.Namespace) -> tuple[int, str]:
    """``accessguard learn --audit FILE|--dsn DSN --policies DIR [--since|--from] [--until]``."""
    if args.dsn is not None:
        from accessguard.audit.pgtables import read_events as read_pg

        events: list[Event] = list(read_pg(args.dsn))
    else:
        events = list(events_from_file(args.audit))
    now = dt.datetime.now(dt.UTC)
    start = _time(args.from_, "--from") if args.from_ else cutoff(args.since, now=now)
    end = _time(args.until, "--until") if args.until else None
    learned = learn(events, args.policies, period=Period(start=start, end=end), now=now)
    if args.out is not None:
        args.out.write_text(learned.proposal.diff(), encoding="utf-8")
    return EXIT_OK, learned.render(out=args.out)


def _time(text: str, option: str) -> dt.datetime:
    when = parse_time(text)
    if when is None:
        raise ValueError(f"invalid {option} {text!r}: use an ISO 8601 date or time")
    return when
