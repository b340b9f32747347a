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
statement, the memory store's steps exactly. Far below a large limit (a few
hundred left in the window), a statement's round trip also leases slots for
the next ones (``RedisStore``): no window ever holds more than the limit,
and other instances may be refused a little early. Instances may count one
set over windows of different lengths (a limits.toml rolling out): each
counts its own window, and entries are dropped only once they have left
every window in use (kept beside the set, ``<set>:window``: a hash of window
seconds to the time until which a caller with that window may still count,
one to two windows after its last statement, refused or not), so a shorter window
never trims what a longer one counts; the memory store keeps the same
horizon across reloads. A set expires one longest window after its last entry.
A store raises what fails (``redis.RedisError``, ``OSError``); the
``Throttle`` turns it into a refusal.
"""

from __future__ import annotations

import bisect
import itertools
import math
import secrets
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
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
        #: per (employee, window kind): window seconds -> until when one may still count
        self._horizons: dict[tuple[str, str], dict[int, float]] = {}

    def count(
        self, user: str, limits: EffectiveLimits, subjects: frozenset[int], mode: Mode
    ) -> Verdict | None:
        """The rate first, then the customers; the Redis script runs the same steps."""
        with self._lock:
            now = self._clock()
            rate, people = limits.statements, limits.distinct_customers
            # renewed first, whatever the verdict and the mode (throttle.lua does the same)
            keep_rate = self._horizon(user, "statements", rate.seconds, now) if rate else 0
            keep_people = self._horizon(user, "customers", people.seconds, now) if people else 0
            verdict = None
            if rate:
                verdict = self._statement(user, rate, keep_rate, now, mode)
            if people and subjects and (verdict is None or mode == "record"):
                verdict = self._customer(user, people, keep_people, subjects, now, mode)
            return verdict

    def _horizon(self, user: str, kind: str, seconds: int, now: float) -> int:
        """The longest window still in use: throttle.lua's ``horizon``, step by step.

        Within one process a reload changes the window; the store keeps what
        every window still in use counts, as Redis keeps it for every instance.
        """
        fields = self._horizons.setdefault((user, kind), {})
        mine = fields.get(seconds)
        if mine is None or mine < now + seconds:  # at least one window ahead, always
            fields[seconds] = now + 2 * seconds  # (a lapsed own field: dropped, set again)
        if len(fields) == 1:  # one window in use, its own: every statement's case but reloads
            return seconds
        keep = seconds
        for length, until in list(fields.items()):
            if until <= now:
                del fields[length]
            elif length > keep:
                keep = length
        return keep

    def _statement(
        self, user: str, window: Window, keep: int, now: float, mode: Mode
    ) -> Verdict | None:
        times = self._statements.setdefault(user, deque())
        exact = keep == window.seconds
        trim = now - window.seconds if exact else now - keep - 1  # throttle.lua's trim_to
        while times and times[0] <= trim:
            times.popleft()
        # this window's entries are the newest: all of them, unless a longer window is kept
        n = len(times) if exact else len(times) - bisect.bisect_right(times, now - window.seconds)
        if n >= window.count:  # a slot frees when the (n - count)th oldest of them leaves
            retry = times[len(times) - window.count] + window.seconds - now
            return _verdict("statements", window, n + 1, retry)
        if mode != "peek":
            if times and times[-1] > now:  # the clock stepped back: keep the times in order
                bisect.insort(times, now)
            else:
                times.append(now)
        return None

    def _customer(  # noqa: PLR0913, PLR0917 - one statement's count
        self,
        user: str,
        window: Window,
        keep: int,
        subjects: frozenset[int],
        now: float,
        mode: Mode,
    ) -> Verdict | None:
        seen = self._customers.setdefault(user, {})
        if mode != "record" and (verdict := _customers_verdict(window, now, seen, subjects)):
            return verdict
        if mode != "peek":
            trim = now - window.seconds if keep == window.seconds else now - keep - 1
            for customer in [c for c, t in seen.items() if t <= trim]:
                del seen[customer]
            for customer in subjects:  # a last read never moves back (a clock stepped back)
                seen[customer] = max(seen.get(customer, now), now)
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


#: a lease: at most this many statement slots beyond the statement that asks...
LEASE_SLOTS = 64
#: ...for at most this long (throttle.lua leases only far below a limit: LEASE_ROOM)
LEASE_SECONDS = 1.0
#: employees whose leases one instance remembers (the oldest are forgotten first)
LEASES_KEPT = 10_000


@dataclass(slots=True)
class _Lease:
    """What one instance may still let through for one employee without asking Redis."""

    statements: Window | None  # the windows it was granted under
    customers: Window | None
    start: float
    until: float
    slots: int = 0  # statement slots reserved in Redis, scored ``until``
    known: dict[int, float] = field(default_factory=dict)  # customer -> registered until

    def covers(self, limits: EffectiveLimits, subjects: frozenset[int], now: float) -> bool:
        """Whether a statement may run on this lease alone (and take a slot if it does)."""
        if (limits.statements, limits.distinct_customers) != (self.statements, self.customers):
            return False
        if limits.distinct_customers is not None:
            for customer in subjects:  # each registered at until - LEASE_SECONDS
                until = self.known.get(customer)
                if until is None or not until - LEASE_SECONDS <= now < until:
                    return False
        if limits.statements is not None:
            if self.slots <= 0 or not self.start <= now < self.until:
                return False
            self.slots -= 1
        return True


class RedisStore:
    """Shared through Redis: both windows of each employee, one Lua script, one round trip.

    Far below a large limit (a few hundred or more left in the window) a hit
    also leases: it reserves up to ``LEASE_SLOTS`` more statement slots and
    registers its customers in Redis, dated at the lease's end (at most
    ``LEASE_SECONDS`` away), and the next statements of that employee on
    this instance that fit the lease run without a round trip. Entries dated
    no earlier than their use keep every window at or under the limit (see
    throttle.lua); the price is that a slot leased and not used counts until
    it leaves the window, so other instances may be refused a little early
    (by at most a sixteenth of what was left). Smaller limits are counted
    exactly, one round trip per statement.
    """

    def __init__(self, url: str, clock: Callable[[], float], timeout: float) -> None:
        self._clock = clock
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        # EVALSHA; on NOSCRIPT (a restarted or failed-over Redis) it loads the script again
        self._script = self._redis.register_script(_COUNT_LUA)
        self._ids = itertools.count()
        self._instance = secrets.token_hex(8)  # statement ids are unique across instances
        self._lock = threading.Lock()
        self._leases: OrderedDict[str, _Lease] = OrderedDict()

    def count(
        self, user: str, limits: EffectiveLimits, subjects: frozenset[int], mode: Mode
    ) -> Verdict | None:
        """Run the script (or take a leased slot); its reply becomes the memory store's verdict."""
        now = float(self._clock())
        lease = None
        if mode == "hit":
            with self._lock:
                lease = self._leases.get(user)
                if lease is not None and lease.covers(limits, subjects, now):
                    return None
        rate, customers = limits.statements, limits.distinct_customers
        args: list[str | int] = [repr(now), mode]
        for window in (rate, customers):
            args += (
                [repr(now - window.seconds), window.count, window.seconds] if window else ["", 0, 0]
            )
        args.append(f"{self._instance}:{next(self._ids)}")
        held = lease is not None and lease.slots > 0 and now < lease.until
        wanted = LEASE_SLOTS if mode == "hit" and not held else 0
        until = now + LEASE_SECONDS
        args += [wanted, repr(until), math.ceil(LEASE_SECONDS)]
        if customers:
            args += sorted(subjects)
        keys = [f"accessguard:{user}/statements", f"accessguard:{user}/customers"]
        keys += [f"{key}:window" for key in keys]  # their horizons (throttle.lua)
        which, count, oldest, slots, registered = self._script(keys=keys, args=args)
        if slots or registered:
            self._lease(
                user,
                limits=limits,
                subjects=subjects,
                now=now,
                until=until,
                slots=int(slots),
                registered=registered == 1,
            )
        if not which:
            return None
        window = rate if which == 1 else customers
        if window is None:  # the script answers only for a limit it was given
            raise redis.ResponseError("unexpected reply from the throttle script")
        name = "statements" if which == 1 else "distinct_customers"
        retry = math.inf if oldest is None else float(oldest) + window.seconds - now
        return _verdict(name, window, int(count), retry)

    def _lease(  # noqa: PLR0913 - one reply's grant
        self,
        user: str,
        *,
        limits: EffectiveLimits,
        subjects: frozenset[int],
        now: float,
        until: float,
        slots: int,
        registered: bool,
    ) -> None:
        """Keep what the script granted: new slots, customers registered until ``until``."""
        windows = (limits.statements, limits.distinct_customers)
        with self._lock:
            lease = self._leases.pop(user, None)
            if lease is None or (lease.statements, lease.customers) != windows or now < lease.start:
                lease = _Lease(*windows, start=now, until=until)
            if slots and lease.slots > 0 and lease.start <= now < lease.until:
                # another thread's grant landed first: both are usable until the earlier end
                # (every slot is dated at or after it), so they are pooled under that end
                lease.slots += slots
            elif slots:
                lease.start, lease.until, lease.slots = now, until, slots
            if registered:
                lease.known.update(dict.fromkeys(subjects, until))
                if len(lease.known) > LEASES_KEPT:
                    lease.known = {c: t for c, t in lease.known.items() if t > now}
            self._leases[user] = lease
            while len(self._leases) > LEASES_KEPT:
                self._leases.popitem(last=False)

    def close(self) -> None:
        self._redis.close()
