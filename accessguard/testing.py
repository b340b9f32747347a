"""Test doubles for applications that use accessguard (as structlog ships ``testing``).

``structlog.testing.capture_logs`` cannot see the guard's own logger, so
tests take audit events from a ``MemoryAuditSink`` instead.
"""

from __future__ import annotations

import threading

from accessguard.audit.sinks import GENESIS, Event, seal


class MemoryAuditSink:
    """Keeps chained audit events in a list; ``fail = True`` makes writes raise OSError."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.fail = False
        self._prev = GENESIS
        self._lock = threading.Lock()

    def write(self, events: list[Event]) -> None:
        if self.fail:
            raise OSError("audit sink unavailable (test double)")
        with self._lock:
            self._prev = seal(events, self._prev)
            self.events.extend(events)

    def reasons(self) -> list[str]:
        """The ``event.reason`` of every event, in order."""
        return [str(e.get("event.reason")) for e in self.events]
