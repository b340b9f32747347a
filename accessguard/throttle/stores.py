"""Where the windows are kept: in this process, or in Redis shared by every instance.

``memory://`` (default, one process) keeps both windows on the
injected clock. The ``limits`` library is not used: its storages read
``time.time()`` themselves (tests could not freeze time, Redis and memory
could not be compared step by step), its moving window keys hold the
limit's count (a second rule or a reload started a fresh window) and it
cannot count distinct customers. ``redis://host:port/db`` is shared by every
instance on that URL: two sorted sets per employee, ``accessguard:<user>/statements``
(one entry per statement let through, score = when) and
``accessguard:<user>/customers`` (member = customer id, score = last read),
checked and updated atomically by one Lua script (``throttle.lua``, beside
this module) given ``now`` from the injected clock: one round trip per
statement, the memory store's steps exactly. Entries older than the window
are dropped on each count, and a key expires one window after its last entry
(a reload that lengthens a window finds at most the old window's entries).
A store raises what fails (``redis.RedisError``, ``OSError``); the
``Throttle`` turns it into a refusal.
"""

from __future__ import annotations

import bisect
import itertools
import math
import secrets
import threading
from collections import deque
from importlib import resources
from typing import TYPE_CHECKING, Literal

import redis

# public in limits; the functions below call it by the name it had in window.py
from accessguard.throttle.limits import verdict as _verdict

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from accessguard.throttle.limits import EffectiveLimits, Verdict, Window

__all__ = ["MemoryStore", "Mode", "RedisStore"]

#: what a count does: ``peek`` (check), ``hit`` (check and consume) or ``record`` (consume)
Mode = Literal["peek", "hit", "record"]


class MemoryStore:
    """One process: both windows of each employee on the injected clock, under one lock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        #: per employee, whatever limit applies: the times of the statements let through
        self._statements: dict[str, deque[float]] = {}
        #: per employee: customer -> the last time a statement let through read it
        self._customers: dict[str, dict[int, float]] = {}

    def count(
        self, user: str, limits: EffectiveLimits, subjects: frozenset[int], mode: Mode
    ) -> Verdict | None:
        """The rate first, then the customers; the Redis script runs the same steps."""
        with self._lock:
            now = self._clock()
            verdict = None
            if limits.statements:
                verdict = self._statement(user, limits.statements, now, mode)
            if limits.distinct_customers and subjects and (verdict is None or mode == "record"):
                verdict = self._customer(user, limits.distinct_customers, subjects, now, mode)
            return verdict

    def _statement(self, user: str, window: Window, now: float, mode: Mode) -> Verdict | None:
        times = self._statements.setdefault(user, deque())
        while times and times[0] <= now - window.seconds:
            times.popleft()
        if len(times) >= window.count:  # a slot frees when the (len - count)th oldest leaves
            retry = times[len(times) - window.count] + window.seconds - now
            return _verdict("statements", window, len(times) + 1, retry)
        if mode != "peek":
            if times and times[-1] > now:  # the clock stepped back: keep the times in order
                bisect.insort(times, now)
            else:
                times.append(now)
        return None

    def _customer(
        self, user: str, window: Window, subjects: frozenset[int], now: float, mode: Mode
    ) -> Verdict | None:
        seen = self._customers.setdefault(user, {})
        if mode != "record" and (verdict := _customers_verdict(window, now, seen, subjects)):
            return verdict
        if mode != "peek":
            for customer in [c for c, t in seen.items() if t <= now - window.seconds]:
                del seen[customer]
            seen.update(dict.fromkeys(subjects, now))
        return None

    def close(self) -> None:
        """Nothing to release."""


def _customers_verdict(
    window: Window, now: float, seen: Mapping[int, float], subjects: frozenset[int]
) -> Verdict | None:
    """After the statement, the window holds every subject plus the others still in it."""
    others = sorted(t for c, t in seen.items() if t > now - window.seconds and c not in subjects)
    total = len(others) + len(subjects)
    if total <= window.count:
        return None
    excess = total - window.count  # this many others must leave the window first
    retry = others[excess - 1] + window.seconds - now if excess <= len(others) else math.inf
    return _verdict("distinct_customers", window, total, retry)


#: MemoryStore.count, atomic in Redis (one round trip): see throttle.lua
_COUNT_LUA = resources.files(__package__).joinpath("throttle.lua").read_text(encoding="utf-8")


class RedisStore:
    """Shared through Redis: both windows of each employee, one Lua script, one round trip."""

    def __init__(self, url: str, clock: Callable[[], float], timeout: float) -> None:
        self._clock = clock
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        # EVALSHA; on NOSCRIPT (a restarted or failed-over Redis) it loads the script again
        self._script = self._redis.register_script(_COUNT_LUA)
        self._ids = itertools.count()
        self._instance = secrets.token_hex(8)  # statement ids are unique across instances

    def count(
        self, user: str, limits: EffectiveLimits, subjects: frozenset[int], mode: Mode
    ) -> Verdict | None:
        """Run the script; its reply becomes the verdict the memory store would give."""
        now = float(self._clock())
        rate, customers = limits.statements, limits.distinct_customers
        args: list[str | int] = [repr(now), mode]
        for window in (rate, customers):
            args += (
                [repr(now - window.seconds), window.count, window.seconds] if window else ["", 0, 0]
            )
        args.append(f"{self._instance}:{next(self._ids)}")
        if customers:
            args += sorted(subjects)
        keys = [f"accessguard:{user}/statements", f"accessguard:{user}/customers"]
        reply = self._script(keys=keys, args=args)
        if not reply:
            return None
        which, count, oldest = reply
        window = rate if which == 1 else customers
        if window is None:  # the script answers only for a limit it was given
            raise redis.ResponseError("unexpected reply from the throttle script")
        name = "statements" if which == 1 else "distinct_customers"
        retry = math.inf if oldest is None else float(oldest) + window.seconds - now
        return _verdict(name, window, int(count), retry)

    def close(self) -> None:
        self._redis.close()
