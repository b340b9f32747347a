"""What the throttle tests share: a frozen start time, alice's roles, and a clock to move."""

from __future__ import annotations

#: the frozen clock's start (any fixed time: windows are relative to it)
T0 = 1_750_000_000.0
AGENT = frozenset({"support_agent", "everyone"})
NONE: frozenset[int] = frozenset()


class Clock:
    """A clock that moves only when the test sets ``now``."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now
