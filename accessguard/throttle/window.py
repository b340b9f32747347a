"""Volume limits: distinct customers and statements per rolling window, rows per statement.

The limits are policy: ``limits.toml`` beside ``policy.csv``, its format
documented at its top, read by :func:`load_limits` (errors name file and line).
:class:`Throttle` counts per employee in moving windows ("the last hour", not
"this clock hour"; an entry leaves ``per`` after it was made):

- **statements** it let through;
- **distinct customers** statements were proven to touch, each kept with the
  last time it was read: a customer already in the window does not count again.

``check()`` peeks, ``record()`` consumes, ``hit()`` does both in one step (the
guard calls ``hit``). The statement rate is checked first; a statement it
refuses consumes nothing (as in ``limits``' ``hit``). A statement the
distinct-customers limit refuses adds no customer but counts against the
statement rate: it was issued and audited, and a flood of them is then refused
by the cheaper check.

Each employee has one statement window and one customer window, whatever
limit applies: two rules (e.g. one for a ticket kind) are two ceilings on the
same counts, and a reload (``set_limits``) changes the ceilings, never the
counts.

Where the windows are kept is the store's (``accessguard.throttle.stores``:
in this process or in Redis); what the limits are, the limits file's
(``accessguard.throttle.limits``). Any storage error raises
:class:`ThrottleStoreUnavailable`: a failing store never lets a statement
through.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import redis

from accessguard.errors import AccessGuardError, ConfigurationError, Reason

# public in stores; Throttle calls them by the names they had when they lived here
from accessguard.throttle.stores import MemoryStore as _MemoryStore
from accessguard.throttle.stores import RedisStore as _RedisStore

if TYPE_CHECKING:
    from collections.abc import Callable

    from accessguard.throttle.limits import EffectiveLimits, Limits, Verdict
    from accessguard.throttle.stores import Mode as _Mode

__all__ = ["Throttle", "ThrottleStoreUnavailable"]


class ThrottleStoreUnavailable(AccessGuardError):
    """The throttle's store failed (e.g. Redis unreachable): the statement is refused."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason=Reason.THROTTLE_STORE_UNAVAILABLE)


class Throttle:
    """Counts statements and distinct customers per employee against ``limits``."""

    def __init__(
        self,
        limits: Limits,
        *,
        storage: str = "memory://",
        clock: Callable[[], float] = time.time,
        timeout: float = 1.0,
    ) -> None:
        self.limits = limits
        self._effective: dict[tuple[frozenset[str], str | None], EffectiveLimits] = {}
        self._store: _MemoryStore | _RedisStore
        scheme = urlsplit(storage).scheme
        #: counts kept in this process (no I/O): an async adapter decides on its event loop
        self.local = scheme == "memory"
        if scheme == "memory":
            self._store = _MemoryStore(clock)
        elif scheme in {"redis", "rediss"}:
            self._store = _RedisStore(storage, clock, timeout)
        else:  # not the whole URL: it may hold a password
            raise ConfigurationError(f"throttle storage must be memory:// or redis://: {scheme}")

    def check(
        self, user: str, roles: frozenset[str], ticket_kind: str | None, subjects: frozenset[int]
    ) -> Verdict | None:
        """Peek: the verdict this statement would get now, or None. Consumes nothing."""
        return self._run("peek", user, roles, ticket_kind, subjects)

    def hit(
        self, user: str, roles: frozenset[str], ticket_kind: str | None, subjects: frozenset[int]
    ) -> Verdict | None:
        """Check and consume in one step: None when the statement may run (it is counted)."""
        return self._run("hit", user, roles, ticket_kind, subjects)

    def record(
        self, user: str, roles: frozenset[str], ticket_kind: str | None, subjects: frozenset[int]
    ) -> None:
        """Consume for a statement that ran: its customers are added even past the limit.

        The statement itself is counted as ``hit`` counts it (a full moving window
        takes no more entries). Prefer ``hit``: ``check`` then ``record`` is not atomic.
        """
        self._run("record", user, roles, ticket_kind, subjects)

    def set_limits(self, limits: Limits) -> None:
        """Apply new limits (a policy reload): the limits change, the windows and counts stay."""
        self._effective = {}
        self.limits = limits

    def row_cap(self, roles: frozenset[str], ticket_kind: str | None) -> int | None:
        """The most rows one statement may return from a scoped table, or None."""
        return self._limits(roles, ticket_kind).rows_per_statement

    def close(self) -> None:
        """Release the store's connections."""
        self._store.close()

    def _run(
        self,
        mode: _Mode,
        user: str,
        roles: frozenset[str],
        ticket_kind: str | None,
        subjects: frozenset[int],
    ) -> Verdict | None:
        limits = self._limits(roles, ticket_kind)
        if limits.statements is None and (limits.distinct_customers is None or not subjects):
            return None
        try:
            return self._store.count(user, limits, subjects, mode)
        except (redis.RedisError, OSError) as exc:
            message = f"The throttle store is unavailable ({type(exc).__name__}): refused."
            raise ThrottleStoreUnavailable(message) from exc

    def _limits(self, roles: frozenset[str], ticket_kind: str | None) -> EffectiveLimits:
        found = self._effective.get((roles, ticket_kind))
        if found is None:
            if len(self._effective) > 1024:  # role sets x ticket kinds: few
                self._effective.clear()
            found = self._effective[roles, ticket_kind] = self.limits.for_roles(roles, ticket_kind)
        return found
