"""Whose data a recorded ORM pattern reads or writes: the ticket's customer, or a twin's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class Subject:
    """A customer, their three orders (whose payments share the order's id) and order dates."""

    customer: int
    orders: tuple[int, int, int]
    first_day: date

    @property
    def order(self) -> int:
        """The customer's first order."""
        return self.orders[0]

    @property
    def since(self) -> datetime:
        """Midnight UTC of the day of the customer's first order."""
        return datetime.combine(self.first_day, datetime.min.time(), tzinfo=UTC)


#: alice's ticket T-100 is about customer 42 (orders and payments 421-423, 2 to 4 Oct 2026).
ALICE = Subject(customer=42, orders=(421, 422, 423), first_day=date(2026, 10, 2))
#: Bad twins: customer 43 (no ticket), customer 7 (alice's closed ticket T-101).
TWINS = (
    Subject(customer=43, orders=(431, 432, 433), first_day=date(2026, 10, 12)),
    Subject(customer=7, orders=(71, 72, 73), first_day=date(2026, 10, 16)),
)

Pattern = Callable[[Any, Subject], None]


def registry() -> tuple[list[tuple[str, Pattern]], Callable[[str], Callable[[Pattern], Pattern]]]:
    """A list of named patterns and the decorator that appends to it (in source order)."""
    patterns: list[tuple[str, Pattern]] = []

    def pattern(name: str) -> Callable[[Pattern], Pattern]:
        def add(func: Pattern) -> Pattern:
            patterns.append((name, func))
            return func

        return add

    return patterns, pattern
