"""A support desk's day through the guard, then ``accessguard learn`` on its audit trail.

No database is needed: statements are decided by ``Guard.authorize`` and
audited (allowed ones too, ``audit_allowed=True``) to DIR/audit.jsonl. The
policy is a copy of the scenario's in DIR/policies with one grant nobody uses
planted in it. Then run, for the proposal and its replay:

    python examples/learn_workload.py /tmp/desk
    accessguard learn --audit /tmp/desk/audit.jsonl --policies /tmp/desk/policies --since 30d
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from accessguard import AccessGuardError, Guard, scenario
from accessguard.guard import Session

PLANTED = "p, trust_safety, review_abuse, reviews.customer_id, read"
WORKLOAD: list[tuple[str, str | None, str]] = [
    ("alice", "T-100", "SELECT name, email FROM customers WHERE id = 42"),
    ("alice", "T-100", "SELECT phone FROM customers WHERE id = 42"),
    ("alice", "T-100", "SELECT id, status, total_cents FROM orders WHERE customer_id = 42"),
    ("alice", "T-100", "UPDATE orders SET status = 'refunded' WHERE customer_id = 42 AND id = 1"),
    ("alice", "T-100", "SELECT amount_cents, card_last4 FROM payments WHERE customer_id = 42"),
    ("mallory", "T-400", "SELECT name FROM customers WHERE id = 100"),
    ("mallory", "T-400", "SELECT id, status FROM orders WHERE customer_id = 100"),
    ("carol", "T-200", "SELECT id, rating, body, hidden FROM reviews WHERE product_id = 9"),
    ("carol", "T-200", "UPDATE reviews SET hidden = true WHERE product_id = 9 AND id = 3"),
    ("erin", "T-300", "SELECT banned, reason FROM account_flags WHERE customer_id = 42"),
    ("erin", "T-300", "UPDATE account_flags SET banned = false WHERE customer_id = 42"),
    ("erin", "T-300", "UPDATE account_flags SET reason = 'appeal' WHERE customer_id = 42"),
    ("erin", "T-300", "SELECT name FROM customers WHERE id = 42"),
    ("dave", None, "SELECT product_id, day, units FROM sales_metrics"),
    ("dave", None, "SELECT title FROM products"),
    ("bob", None, "SELECT phone FROM customers WHERE id = 42"),  # refused: no ticket
]


def main(target: Path) -> None:
    policies = target / "policies"
    shutil.rmtree(policies, ignore_errors=True)
    shutil.copytree(scenario.policies_dir(), policies)
    (policies / "limits.toml").unlink()
    with (policies / "policy.csv").open("a", encoding="utf-8") as fh:
        fh.write(PLANTED + "\n")
    audit = target / "audit.jsonl"
    audit.unlink(missing_ok=True)
    with Guard.from_directory(
        policies, tickets=scenario.tickets(), audit=audit, audit_allowed=True
    ) as guard:
        for user, ticket, sql in WORKLOAD:
            try:
                guard.authorize(sql, None, Session(user=user, ticket=ticket), dialect="postgres")
            except AccessGuardError as exc:
                print(f"refused: {user}: {exc.reason}")
    print(f"wrote {audit} and {policies}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/desk"))  # noqa: S108 - an example
