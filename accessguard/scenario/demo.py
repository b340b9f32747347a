"""``accessguard demo``: the reference scenario end to end on an embedded SQLite.

No server to start: the package ships the scenario's schema, data, tickets and
policies. The story follows the cases behind the project: an agent reads her
ticket's customer, browses another, tries a bulk e-mail export, reads a card
token; a moderator hides a review without a ticket. Then the audit trail is
printed and its chain verified (keyed with a public demo key, and
said so).
"""

from __future__ import annotations

import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from accessguard import scenario
from accessguard.audit.chain import DEMO_KEY
from accessguard.audit.sinks import JsonlSink, read_events
from accessguard.audit.verification import verify
from accessguard.errors import AccessGuardError
from accessguard.guard import Guard
from accessguard.investigate.report import write_report
from accessguard.investigate.sums import render_table, who_read


@dataclass(frozen=True, slots=True)
class Step:
    title: str
    user: str
    ticket: str | None
    sql: str
    params: tuple[int, ...] = ()


STORY = (
    Step(
        "alice reads the customer of her open ticket T-100",
        "alice",
        "T-100",
        "SELECT id, name, email FROM customers WHERE id = ?",
        (42,),
    ),
    Step(
        "alice lists that customer's orders",
        "alice",
        "T-100",
        "SELECT id, status, total_cents FROM orders WHERE customer_id = 42 ORDER BY id",
    ),
    Step(
        "alice browses customer 7, whom no open ticket of hers is about",
        "alice",
        "T-100",
        "SELECT id, name, email FROM customers WHERE id = 7",
    ),
    Step(
        "alice reopens her closed ticket T-101 to read customer 7 again",
        "alice",
        "T-101",
        "SELECT id, name, email FROM customers WHERE id = 7",
    ),
    Step("alice tries a bulk e-mail export", "alice", "T-100", "SELECT email FROM customers"),
    Step(
        "alice reads a card token",
        "alice",
        "T-100",
        "SELECT card_token FROM payments WHERE customer_id = 42",
    ),
    Step(
        "alice slips a second statement behind a legitimate one",
        "alice",
        "T-100",
        "SELECT id FROM customers WHERE id = 42; DELETE FROM reviews",
    ),
    Step(
        "carol hides a review without a ticket",
        "carol",
        None,
        "UPDATE reviews SET hidden = TRUE WHERE product_id = 9 AND id = 91",
    ),
    Step(
        "erin checks the account flags of the same customer under T-300",
        "erin",
        "T-300",
        "SELECT customer_id, banned, reason FROM account_flags WHERE customer_id = 42",
    ),
    Step(
        "carol hides it under her review_abuse ticket T-200",
        "carol",
        "T-200",
        "UPDATE reviews SET hidden = TRUE WHERE product_id = 9 AND rating = 1",
    ),
)


def run(*, audit_path: Path | None = None, report_path: Path | None = None) -> int:
    """Run the story; print each decision, the audit trail, who read customer 42, a report."""
    # the trail and the report stay after the run (their paths are printed), in a
    # directory of this run's own, so two demos never write one trail
    keep = Path(tempfile.mkdtemp(prefix="accessguard-demo-"))
    report = report_path or keep / "report.html"
    with tempfile.TemporaryDirectory(prefix="accessguard-demo-db-") as tmp:
        audit = audit_path or keep / "audit.jsonl"
        db = sqlite3.connect(Path(tmp) / "shop.db")
        scenario.load_sqlite(db)
        # a public key, so anyone can run and verify the demo: never use it for a real trail
        guard = Guard.from_directory(
            scenario.policies_dir(),
            tickets=scenario.tickets(),
            audit=JsonlSink(audit, key=DEMO_KEY),
        )
        print("accessguard demo: the marketplace support desk, on an embedded SQLite")
        print(
            "(the audit chain is keyed with a public demo key; a real deployment sets its own "
            "secret in ACCESSGUARD_AUDIT_KEY)\n"
        )
        for number, step in enumerate(STORY, 1):
            _play(number, step, guard, db)
        _mallory(guard, db)
        guard.close()  # flushes the access ledger
        db.close()
        _show_trail(audit)
        result = verify(audit, key=DEMO_KEY)
        print(
            f"\naudit verify {audit}: "
            + ("chain intact" if result.ok else f"BROKEN at line {result.broken_line}")
            + f", {result.events} events, keyed with the demo key, checkpoint at event "
            + f"{result.checkpoint}"
        )
        print(
            f"   (to check it yourself: ACCESSGUARD_AUDIT_KEY={DEMO_KEY.hex()} "
            f"accessguard audit verify {audit})"
        )
        events = list(read_events(audit))
        print("\nwho read customer 42?")
        print(render_table(who_read(events, customer=42, since=None)))
        write_report(events, report)
        print(f"\nreport: {report}")
        return 0 if result.ok else 1


def _mallory(guard: Guard, db: sqlite3.Connection) -> None:
    """mallory works through her thirty tickets in one sitting; the 21st customer waits."""
    print("mallory reads the customers of her thirty open tickets, one after another")
    refused = 0
    for i in range(30):
        conn = guard.wrap(db, user="mallory", ticket=f"T-4{i:02d}")
        try:
            conn.execute("SELECT name, email FROM customers WHERE id = ?", (100 + i,)).fetchall()
        except AccessGuardError as exc:
            if not refused:
                print(f"   customer {100 + i}: REFUSED {exc.reason}: {exc.message}")
            refused += 1
    print(f"   -> {30 - refused} customers read, {refused} refused\n")


def _play(number: int, step: Step, guard: Guard, db: sqlite3.Connection) -> None:
    ticket = step.ticket or "no ticket"
    print(f"{number}. {step.title}  [{step.user}, {ticket}]")
    print(f"   {step.sql}")
    conn = guard.wrap(db, user=step.user, ticket=step.ticket)
    try:
        cur = conn.execute(step.sql, step.params or None)
        rows = cur.fetchall()
        db.commit()
    except AccessGuardError as exc:
        print(f"   REFUSED {exc.reason}: {exc.message}\n")
        return
    if rows:
        for row in rows[:5]:
            print(f"   -> {row}")
    else:
        print(f"   -> ok ({max(cur.rowcount, 0)} rows changed)")
    print()


def _show_trail(audit: Path) -> None:
    events = list(read_events(audit))
    refusals = [e for e in events if e.get("event.action") == "query"]
    ledger = [e for e in events if e.get("event.action") == "ledger"]
    print(f"audit trail ({audit}): {len(refusals)} refusals, {len(ledger)} ledger entries")
    for event in refusals[:8]:
        print(
            f"  {event['@timestamp'][11:23]}  {event['accessguard.outcome']:<9} "
            f"{event['user.name']:<7} {event['accessguard.ticket.id'] or '-':<6} "
            f"{event['event.reason']:<28} {event['db.query.text'] or '<unreadable>'}"
        )
        print(
            f"  {'':12}  hash {event['event.hash'][:16]}  "
            f"prev {event['accessguard.chain.prev'][:16]}"
        )
    if len(refusals) > 8:
        print(f"  ... {len(refusals) - 8} more")
