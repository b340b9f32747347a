"""A simulated working day through the real guard (limits on), then the HTML report.

alice and erin work their tickets about customer 42; bob, dave and alice make a
few refused attempts; mallory works thirty tickets in one afternoon and is
throttled at the 21st customer. Writes the report and, when chromium is on
PATH, the screenshot shown in the README (examples/report.png).

    python examples/report_workday.py [OUT_DIR]
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from accessguard import AccessGuardError, Guard, scenario
from accessguard.audit.sinks import read_events
from accessguard.investigate.report import write_report
from accessguard.investigate.sums import render_table, who_read

now = [dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC)]


def clock() -> dt.datetime:
    return now[0]


def seconds() -> float:
    return now[0].timestamp()


def at(hour: int, minute: int) -> None:
    now[0] = now[0].replace(hour=hour, minute=minute)


def main(out: Path) -> None:
    audit = out / "audit.jsonl"
    guard = Guard.from_directory(
        scenario.policies_dir(),
        tickets=scenario.tickets(),
        audit=audit,
        clock=clock,
        throttle_clock=seconds,
        ledger_interval=3600,
    )
    shop = sqlite3.connect(":memory:")
    scenario.load_sqlite(shop)

    def run(user: str, ticket: str | None, sql: str, params: tuple[Any, ...] = ()) -> None:
        with contextlib.suppress(AccessGuardError):  # refused and audited
            guard.wrap(shop, user=user, ticket=ticket).execute(sql, params).fetchall()

    for hour, minute in ((8, 10), (9, 30), (11, 0), (14, 20), (16, 5)):
        at(hour, minute)
        run("alice", "T-100", "SELECT id, status, total_cents FROM orders WHERE customer_id = 42")
        run("alice", "T-100", "SELECT name, email FROM customers WHERE id = 42")
        guard.ledger.flush()
    at(9, 2)
    run("bob", None, "SELECT email FROM customers WHERE id = 42")
    at(9, 40)
    run("alice", "T-101", "SELECT email FROM customers WHERE id = 7")
    at(10, 15)
    run("erin", "T-300", "SELECT banned, reason FROM account_flags WHERE customer_id = 42")
    run("erin", "T-300", "SELECT id, name FROM customers WHERE id = 42")
    guard.ledger.flush()
    at(13, 0)
    run("carol", "T-200", "SELECT id, rating, body FROM reviews WHERE product_id = 9")
    guard.ledger.flush()
    at(12, 30)
    run("dave", None, "SELECT email FROM customers WHERE id = 5")
    for i in range(30):
        at(15, i)
        customer = (100 + i,)
        run(
            "mallory",
            f"T-{400 + i}",
            "SELECT id, status, total_cents FROM orders WHERE customer_id = ?",
            customer,
        )
        run(
            "mallory",
            f"T-{400 + i}",
            "SELECT name, email, phone, address FROM customers WHERE id = ?",
            customer,
        )
        guard.ledger.flush()
    guard.close()
    events = list(read_events(audit))
    print(render_table(who_read(events, customer=42, since=None)))
    report = out / "report.html"
    write_report(events, report, generated=dt.datetime(2026, 3, 2, 18, 0, tzinfo=dt.UTC))
    print(report)
    chromium = shutil.which("chromium")
    if chromium:
        subprocess.run(  # noqa: S603 - a fixed command line
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={out / 'chromium'}",
                f"--screenshot={out / 'report.png'}",
                "--window-size=1280,2600",
                report.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        print(out / "report.png")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
