"""A month of one support desk, driven through the real guard, with planted insiders (issue 20).

Every statement goes through ``accessguard.adapters.psycopg3.authorize_statement``
on the employee's lane, the path a guarded psycopg connection takes: the real
policy files (the scenario's, plus the generated employees), the real ticket
store (tickets opened, assigned and closed as the month goes), the real volume
limits on a simulated clock, the real ledger and the real sinks (a JSON-lines
trail and, with ``--dsn``, the PostgreSQL sink). Only the database is left
out: the rows a statement returns are drawn by the generator and handed to the
ledger (``tally.add``) as a cursor would, and a result over the row cap is
refused through ``guard.over_row_cap`` as the adapter does.

The clock is simulated: statements run in time order across employees, the
ledger is flushed at every second boundary (its one-second interval), and
the sinks receive the events in batches (same events, same chain).

Planted insiders (names in the ground truth): a bulk reader (hundreds of
rows per read, some over the cap), a heavy reader (four times the statements
of their peers), a canary toucher (reads the canary customer under tickets
they assign themselves) and a churner (hundreds of self-assigned tickets,
each open about 11 minutes, reading contact details).

    python -m benchmarks.month --out /tmp/month --statements 2100000 \\
        --dsn postgresql://postgres@127.0.0.1:5432/ag_month

writes OUT/trail.jsonl, OUT/ground_truth.json and OUT/policies/.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from accessguard import Guard
from accessguard.audit.sinks import Event, JsonlSink
from accessguard.tickets.stores import MemoryTicketStore
from benchmarks.month_alerts import score
from benchmarks.month_desk import Batches, Clock, Desk
from benchmarks.month_plan import INSIDERS, START, Plan, employees, policy_dir, timeline

__all__ = ["INSIDERS", "SCALES", "generate", "main", "month_doses"]

#: named sizes: (statements, employees, days); "small" runs in tests in seconds
SCALES = {"month": (2_100_000, 60, 30), "small": (60_000, 20, 3)}


def generate(  # noqa: PLR0913 - keyword-only sizes
    out: Path,
    *,
    statements: int,
    employees_n: int = 60,
    days: int = 30,
    seed: int = 7,
    dsn: str | None = None,
    doses: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Write OUT/trail.jsonl (and the PostgreSQL sink at ``dsn``); return the ground truth.

    ``doses``: the churner's self-assigned tickets and the canary toucher's reads
    (default: the month's 315 and 128, scaled by ``statements``).
    """
    out.mkdir(parents=True, exist_ok=True)
    roles = employees(employees_n)
    policies = policy_dir(out, roles)
    working = [n for n, r in roles.items() if r != "analyst"]
    per_employee = statements / (len(roles) + 3)  # the heavy reader makes four shares
    scale = statements / 2_100_000
    plan = Plan(
        days=days,
        gap=days * 10 * 3600 * 0.93 / per_employee,
        churn=doses[0] if doses else max(3, round(315 * scale)),
        canary=doses[1] if doses else max(3, round(128 * scale)),
        seed=seed,
    )
    trail = out / "trail.jsonl"
    trail.unlink(missing_ok=True)
    sinks: list[Any] = [JsonlSink(trail, fsync=False)]
    if dsn is not None:
        from accessguard.audit.pgsink import PostgresSink

        pg = PostgresSink(dsn)
        pg.setup()
        sinks.append(pg)
    batches = Batches(sinks)
    clock, store = Clock(), MemoryTicketStore()
    alerts: list[Event] = []
    guard = Guard.from_directory(
        policies,
        tickets=store,
        audit=batches,
        clock=clock.utc,
        throttle_clock=lambda: clock.now,
        ledger_interval=1e6,
        on_alert=alerts.append,
    )
    desk = Desk(guard, store, plan)
    names = list(roles)
    window: int | None = None
    actions = heapq.merge(*(timeline(i, n, roles[n], plan) for i, n in enumerate(names)))
    for action in actions:
        second = math.floor(action[0])
        if window is not None and second != window:
            clock.now = window + 1  # the ledger's one-second flush, on the simulated clock
            guard.ledger.flush()
        window = second
        clock.now = action[0]
        desk.act(action, second, names[action[1]])
    if window is not None:
        clock.now = window + 1
    guard.close()
    batches.drain()
    for sink in sinks:
        close = getattr(sink, "close", None)
        if close is not None:
            close()
    truth = desk.truth.as_json(roles)
    truth["events"] = batches.count
    truth["alerts"] = score(alerts, truth)
    truth["params"] = {
        "statements": statements,
        "employees": employees_n,
        "days": days,
        "seed": seed,
        "working": len(working),
        "start": START.isoformat(),
    }
    (out / "ground_truth.json").write_text(json.dumps(truth, indent=1), encoding="utf-8")
    return truth


def month_doses(days: int) -> tuple[int, int]:
    """The month's insider doses per day (315 churned tickets, 128 canary reads), for ``days``."""
    return max(3, round(315 * days / 30)), max(3, round(128 * days / 30))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scale", choices=SCALES, default="month", help="named size")
    parser.add_argument("--statements", type=int, help="(default: the scale's)")
    parser.add_argument("--employees", type=int, help="(default: the scale's)")
    parser.add_argument("--days", type=int, help="(default: the scale's)")
    parser.add_argument("--alerts-out", type=Path, help="write the alerts' precision/recall here")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dsn", help="also write the PostgreSQL sink there")
    args = parser.parse_args(argv)
    statements, employees_n, days = SCALES[args.scale]
    started = time.perf_counter()
    truth = generate(
        args.out,
        statements=args.statements or statements,
        employees_n=args.employees or employees_n,
        days=args.days or days,
        seed=args.seed,
        dsn=args.dsn,
        doses=month_doses(args.days or days) if args.scale != "month" else None,
    )
    took = time.perf_counter() - started
    if args.alerts_out is not None:
        figures = {"scale": args.scale, **truth["params"], "seconds": round(took, 1)}
        report = {"generated": figures, **truth["alerts"]}
        args.alerts_out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(
        json.dumps(
            {
                k: truth[k]
                for k in (
                    "statements",
                    "allowed",
                    "allowed_on_customer_data",
                    "refused",
                    "events",
                    "alerts",
                )
            },
            indent=1,
        )
    )
    print(
        f"{len(truth['tickets'])} tickets, {len(truth['reads'])} (employee, ticket, subject)"
        f" groups, {took:.0f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
