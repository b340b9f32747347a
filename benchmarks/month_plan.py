"""The month's plan: the desk's employees, ticket kinds, statements and planted insiders.

Pure data and generators for benchmarks/month.py: who works which tickets,
what they read, and what the four insiders do differently.
"""

from __future__ import annotations

import datetime as dt
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accessguard import scenario

START = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
CANARY = 150  # the scenario's canary customer (policies/watchlist.toml)
CUSTOMERS = range(1000, 21000)
PRODUCTS = range(1, 2001)
#: (sql, tables, columns, rows range) per ticket kind; %s is the ticket's subject
TEMPLATES: dict[str, list[tuple[str, tuple[str, ...], tuple[str, ...], tuple[int, int]]]] = {
    "order_issue": [
        (
            "SELECT id, name, email FROM customers WHERE id = %s",
            ("customers",),
            ("customers.email", "customers.id", "customers.name"),
            (1, 1),
        ),
        (
            "SELECT id, status, total_cents FROM orders WHERE customer_id = %s",
            ("orders",),
            ("orders.customer_id", "orders.id", "orders.status", "orders.total_cents"),
            (1, 12),
        ),
        (
            "SELECT id, amount_cents, card_last4 FROM payments WHERE customer_id = %s",
            ("payments",),
            ("payments.amount_cents", "payments.card_last4", "payments.customer_id", "payments.id"),
            (1, 8),
        ),
    ],
    "review_abuse": [
        (
            "SELECT id, rating, body FROM reviews WHERE product_id = %s",
            ("reviews",),
            ("reviews.body", "reviews.id", "reviews.product_id", "reviews.rating"),
            (1, 40),
        ),
    ],
    "account_recovery": [
        (
            "SELECT customer_id, banned, reason FROM account_flags WHERE customer_id = %s",
            ("account_flags",),
            ("account_flags.banned", "account_flags.customer_id", "account_flags.reason"),
            (1, 1),
        ),
        (
            "SELECT id, name FROM customers WHERE id = %s",
            ("customers",),
            ("customers.id", "customers.name"),
            (1, 1),
        ),
    ],
}
CONTACT = (
    "SELECT id, name, email, phone FROM customers WHERE id = %s",
    ("customers",),
    ("customers.email", "customers.id", "customers.name", "customers.phone"),
    (1, 1),
)
BULK = (*TEMPLATES["order_issue"][1][:3], (150, 490))
REFUSED = ("SELECT card_token FROM payments WHERE customer_id = %s", "SELECT name FROM customers")
UNSCOPED = (
    "SELECT product_id, units FROM sales_metrics WHERE day = %s",
    "SELECT title, price_cents FROM products WHERE id = %s",
)
ROLE_KIND = {
    "support_agent": "order_issue",
    "trust_safety": "review_abuse",
    "account_specialist": "account_recovery",
}
INSIDERS = {
    "bulk_reader": "agent02",
    "heavy_reader": "agent03",
    "canary_toucher": "agent04",
    "ticket_churner": "agent05",
}


def employees(n: int) -> dict[str, str]:
    """Employee name -> role: mostly support agents, the insiders among them."""
    roles = {}
    for i in range(n):
        share = i / n
        if share < 0.7:
            roles[f"agent{i + 1:02d}"] = "support_agent"
        elif share < 0.82:
            roles[f"tns{i + 1:02d}"] = "trust_safety"
        elif share < 0.93:
            roles[f"acct{i + 1:02d}"] = "account_specialist"
        else:
            roles[f"analyst{i + 1:02d}"] = "analyst"
    return roles


def policy_dir(out: Path, roles: dict[str, str]) -> Path:
    target = out / "policies"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(scenario.policies_dir(), target)
    with (target / "policy.csv").open("a", encoding="utf-8") as fh:
        fh.write("\n# generated employees (benchmarks/month.py)\n")
        fh.writelines(f"g, {name}, {role}\n" for name, role in roles.items())
    return target


@dataclass(slots=True)
class Plan:
    """The month's shape: statement rate and the insiders' doses."""

    days: int
    gap: float  # mean seconds between one employee's statements
    churn: int  # the churner's self-assigned tickets
    canary: int  # the canary toucher's reads of the canary, about
    refuse_every: int = 1500
    seed: int = 7


def timeline(i: int, name: str, role: str, plan: Plan) -> Iterator[tuple[Any, ...]]:
    """One employee's month as (time, employee index, n, action, ...), in time order."""
    rng = random.Random(plan.seed * 1000 + i)
    gap = plan.gap / (4 if name == INSIDERS["heavy_reader"] else 1)
    n = 0
    for day in range(plan.days):
        t = (START + dt.timedelta(days=day, hours=8)).timestamp() + rng.uniform(0, 1800)
        end = (START + dt.timedelta(days=day, hours=18)).timestamp()
        if role == "analyst":
            while t < end:
                t += rng.expovariate(1 / gap)
                n += 1
                yield (t, i, n, "free", f"2026-11-{1 + rng.randrange(28):02d}")
            continue
        kind = ROLE_KIND[role]
        own = _own_tickets(name, day, plan)
        while t < end:
            if own:
                subject, minutes = own.pop()
                template, duration, step = CONTACT, minutes * 60.0, 60.0
            else:
                space = PRODUCTS if kind == "review_abuse" else CUSTOMERS
                subject = space[rng.randrange(len(space))]
                template, duration, step = None, rng.uniform(2, 8) * 3600, gap
            ticket = f"T-{i + 1:02d}-{n:06d}"
            n += 1
            yield (t, i, n, "open", ticket, kind, subject, template is not None)
            stop = min(t + duration, end)
            while (t := t + rng.expovariate(1 / step)) < stop:
                n += 1
                yield (t, i, n, "read", ticket, template, subject)
            n += 1
            yield (stop, i, n, "close", ticket)
            if rng.random() < 0.5:  # a stale tab reads once more after the ticket closed
                n += 1
                yield (stop + 5, i, n, "read", ticket, template, subject)
            t += rng.uniform(60, 900)


def _own_tickets(name: str, day: int, plan: Plan) -> list[tuple[int, int]]:
    """(subject, minutes open) of the tickets an insider assigns themselves on ``day``."""

    def share(total: int) -> int:
        return total // plan.days + (1 if day < total % plan.days else 0)

    if name == INSIDERS["ticket_churner"]:
        rng = random.Random(plan.seed * 7919 + day)
        return [(CUSTOMERS[rng.randrange(len(CUSTOMERS))], 11) for _ in range(share(plan.churn))]
    if name == INSIDERS["canary_toucher"] and share(plan.canary):
        return [(CANARY, share(plan.canary))]  # about one read a minute
    return []
