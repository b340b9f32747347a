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

Storage: ``memory://`` (default, one process) keeps both windows on the
injected clock. The ``limits`` library is not used: its storages read
``time.time()`` themselves (tests could not freeze time, Redis and memory
could not be compared step by step), its moving window keys hold the
limit's count (a second rule or a reload started a fresh window) and it
cannot count distinct customers. ``redis://host:port/db`` is shared by every
instance on that URL: two sorted sets per employee, ``accessguard:<user>/statements``
(one entry per statement let through, score = when) and
``accessguard:<user>/customers`` (member = customer id, score = last read),
checked and updated atomically by one Lua script given ``now`` from the
injected clock: one round trip per statement, the memory store's steps
exactly. Entries older than the window are dropped on each count, and a key
expires one window after its last entry (a reload that lengthens a window
finds at most the old window's entries). Any storage error raises
:class:`ThrottleStoreUnavailable`: a failing store never lets a statement
through.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import re
import secrets
import threading
import time
import tomllib
from collections import deque
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import redis

from accessguard.catalog import toml_error
from accessguard.durations import EXAMPLES, parse_seconds
from accessguard.errors import AccessGuardError, ConfigurationError, PolicyError, Reason, Throttled

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

#: The role every employee holds (as in policy.csv): its limits always apply.
EVERYONE = "everyone"

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_UNITS = {"day": 86400, "hour": 3600, "minute": 60, "second": 1}
_WINDOWED = ("distinct_customers", "statements")
_LIMIT_KEYS = frozenset({*_WINDOWED, "rows_per_statement"})
_HEADER = re.compile(r"""^\s*\[\[?(?P<key>(?:[^\]"']|"[^"]*"|'[^']*')+)\]""")
_ASSIGN = re.compile(r"""^\s*(?P<key>(?:[\w\-.\s]|"[^"]*"|'[^']*')+?)\s*=""")

_Mode = Literal["peek", "hit", "record"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """At most ``count`` per rolling ``seconds``."""

    count: int
    seconds: int

    @property
    def per(self) -> str:
        """The window in words, e.g. ``1 hour``."""
        unit, size = next((u, s) for u, s in _UNITS.items() if self.seconds % s == 0)
        n = self.seconds // size
        return f"{n} {unit}{'' if n == 1 else 's'}"

    def __str__(self) -> str:
        return f"{self.count} per {self.per}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One section of the limits file: a role, optionally only under one ticket kind."""

    role: str
    ticket_kind: str | None = None
    distinct_customers: Window | None = None
    statements: Window | None = None
    rows_per_statement: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EffectiveLimits:
    """The limits on one statement: the most restrictive of the rules that apply."""

    distinct_customers: Window | None = None
    statements: Window | None = None
    rows_per_statement: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Every rule of a limits file. All rules of one limit share one window length."""

    rules: tuple[Rule, ...] = ()
    version: str = ""

    def for_roles(self, roles: frozenset[str], ticket_kind: str | None) -> EffectiveLimits:
        """Merge the rules of ``roles`` and ``everyone``: general, or for ``ticket_kind``."""
        rules = [
            r
            for r in self.rules
            if (r.role in roles or r.role == EVERYONE) and r.ticket_kind in (None, ticket_kind)
        ]
        customers = [r.distinct_customers for r in rules if r.distinct_customers]
        statements = [r.statements for r in rules if r.statements]
        rows = [r.rows_per_statement for r in rules if r.rows_per_statement is not None]
        return EffectiveLimits(
            distinct_customers=min(customers, key=lambda w: w.count, default=None),
            statements=min(statements, key=lambda w: w.count, default=None),
            rows_per_statement=min(rows, default=None),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """Why a statement is throttled, and when it could pass."""

    reason: Reason
    #: the limit that refused it, e.g. ``distinct_customers: 20 per 1 hour``
    limit: str
    window_seconds: int
    #: what the window would hold with this statement (e.g. 21 distinct customers)
    count: int
    #: seconds until it could pass; ``math.inf`` when it alone exceeds the limit
    retry_after: float
    message: str

    def error(self) -> Throttled:
        """The exception the guard raises for this verdict."""
        return Throttled(
            self.message, reason=self.reason, limit=self.limit, retry_after=self.retry_after
        )


def _verdict(name: str, window: Window, count: int, retry_after: float) -> Verdict:
    is_rate = name == "statements"
    return Verdict(
        reason=Reason.THROTTLE_STATEMENTS if is_rate else Reason.THROTTLE_DISTINCT_CUSTOMERS,
        limit=f"{name}: {window}",
        window_seconds=window.seconds,
        count=count,
        retry_after=max(0.0, retry_after),
        message=f"Throttled: this statement would make {count} {name.replace('_', ' ')} "
        f"in {window.per}; the limit is {window.count}.",
    )


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


class _MemoryStore:
    """One process: both windows of each employee on the injected clock, under one lock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        #: per employee, whatever limit applies: the times of the statements let through
        self._statements: dict[str, deque[float]] = {}
        #: per employee: customer -> the last time a statement let through read it
        self._customers: dict[str, dict[int, float]] = {}

    def count(
        self, user: str, limits: EffectiveLimits, subjects: frozenset[int], mode: _Mode
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

    def _statement(self, user: str, window: Window, now: float, mode: _Mode) -> Verdict | None:
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
        self, user: str, window: Window, subjects: frozenset[int], now: float, mode: _Mode
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


#: _MemoryStore.count, atomic in Redis (one round trip): see throttle.lua
_COUNT_LUA = resources.files(__package__).joinpath("throttle.lua").read_text(encoding="utf-8")


class _RedisStore:
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
        self, user: str, limits: EffectiveLimits, subjects: frozenset[int], mode: _Mode
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


def load_limits(
    path: Path,
    *,
    known_roles: frozenset[str] | None = None,
    known_ticket_kinds: frozenset[str] | None = None,
) -> Limits:
    """Read ``limits.toml``; a malformed file raises PolicyError naming file and line.

    With ``known_roles`` (or ``known_ticket_kinds``), a name not in it is an error too.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read limits file ({exc.strerror})", path=str(path)) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message, line = toml_error(exc)
        raise PolicyError(f"not valid TOML: {message}", path=str(path), line=line) from exc
    reader = _Reader(str(path), text, known_roles, known_ticket_kinds)
    version = hashlib.sha256(text.encode()).hexdigest()[:12]
    return Limits(rules=reader.rules(data), version=version)


class _Reader:
    """Turns a parsed limits file into rules; every error names its line."""

    def __init__(
        self, path: str, text: str, roles: frozenset[str] | None, kinds: frozenset[str] | None
    ) -> None:
        self.path, self.known_roles, self.known_kinds = path, roles, kinds
        self.lines = _key_lines(text)
        self.windows: dict[str, Window] = {}  # the first window of each limit: all must match

    def error(self, message: str, *keys: str) -> PolicyError:
        """A PolicyError at the line of the longest known prefix of ``keys``."""
        for n in range(len(keys), 0, -1):
            if (line := self.lines.get(keys[:n])) is not None:
                return PolicyError(message, path=self.path, line=line)
        return PolicyError(message, path=self.path)

    def rules(self, data: dict[str, object]) -> tuple[Rule, ...]:
        for key in data.keys() - {"roles"}:
            raise self.error(f"unknown key {key!r}: the file holds [roles.<role>] sections", key)
        roles = self.table(data.get("roles", {}), ("roles",))
        rules: list[Rule] = []
        for role, value in roles.items():
            keys = ("roles", role)
            self.name("role", role, self.known_roles, keys)
            section = self.table(value, keys)
            kinds = self.table(section.pop("ticket_kinds", {}), (*keys, "ticket_kinds"))
            rules.append(self.rule(role, None, section, keys))
            for kind, sub in kinds.items():
                sub_keys = (*keys, "ticket_kinds", kind)
                self.name("ticket kind", kind, self.known_kinds, sub_keys)
                rules.append(self.rule(role, kind, self.table(sub, sub_keys), sub_keys))
        # a section that sets nothing (e.g. only ticket_kinds below it) is no rule
        return tuple(r for r in rules if r != Rule(role=r.role, ticket_kind=r.ticket_kind))

    def table(self, value: object, keys: tuple[str, ...]) -> dict[str, object]:
        if not isinstance(value, dict):
            raise self.error(f"[{'.'.join(keys)}] must be a table", *keys)
        return dict(value)

    def name(
        self, what: str, name: str, known: frozenset[str] | None, keys: tuple[str, ...]
    ) -> None:
        if name == "*":
            raise self.error(f'"*" is not a {what}: [roles.{EVERYONE}] is every employee', *keys)
        if not _NAME.match(name):
            raise self.error(f"{what} {name!r} must be a lower-case name", *keys)
        if known is not None and name not in known and name != EVERYONE:
            raise self.error(f"unknown {what} {name!r}", *keys)

    def rule(
        self, role: str, kind: str | None, section: dict[str, object], keys: tuple[str, ...]
    ) -> Rule:
        if unknown := sorted(section.keys() - _LIMIT_KEYS):
            allowed = ", ".join(sorted(_LIMIT_KEYS | ({"ticket_kinds"} if kind is None else set())))
            message = f"[{'.'.join(keys)}] has unknown key {unknown[0]!r} (allowed: {allowed})"
            raise self.error(message, *keys, unknown[0])
        found = {k: self.window(section[k], (*keys, k)) for k in _WINDOWED if k in section}
        for name, window in found.items():
            first = self.windows.setdefault(name, window)
            if first.seconds != window.seconds:  # else "most restrictive" has no meaning
                message = f"every {name} limit must use one window ({first.per}), not {window.per}"
                raise self.error(message, *keys, name)
        rows = section.get("rows_per_statement")
        cap = None if rows is None else self.count(rows, (*keys, "rows_per_statement"))
        return Rule(
            role=role,
            ticket_kind=kind,
            distinct_customers=found.get("distinct_customers"),
            statements=found.get("statements"),
            rows_per_statement=cap,
        )

    def window(self, value: object, keys: tuple[str, ...]) -> Window:
        if not isinstance(value, dict) or value.keys() != {"count", "per"}:
            raise self.error(f'{keys[-1]} must be {{ count = N, per = "DURATION" }}', *keys)
        count = self.count(value["count"], (*keys, "count"))
        per = value["per"]
        try:
            seconds = parse_seconds(per)
        except ValueError:
            message = (
                f'{keys[-1]}.per must be a duration like "1 minute", "2 hours" or "1h" '
                f"({EXAMPLES}), not {per!r}"
            )
            raise self.error(message, *keys, "per") from None
        return Window(count=count, seconds=seconds)

    def count(self, value: object, keys: tuple[str, ...]) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            message = f"{'.'.join(keys[-2:])} must be a whole number of at least 1, not {value!r}"
            raise self.error(message, *keys)
        return value


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """The first line of every table and key in ``text``, by dotted path."""
    found: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for number, raw in enumerate(text.splitlines(), start=1):
        if header := _HEADER.match(raw):
            table = path = _dotted(header["key"])
        elif assign := _ASSIGN.match(raw):
            path = table + _dotted(assign["key"])
        else:
            continue
        for n in range(1, len(path) + 1):
            found.setdefault(path[:n], number)
    return found


def _dotted(key: str) -> tuple[str, ...]:
    """``roles."*".x`` -> ("roles", "*", "x"), as tomllib reads it."""
    try:
        node: object = tomllib.loads(f"{key} = 0")
    except tomllib.TOMLDecodeError:
        return ()
    path: list[str] = []
    while isinstance(node, dict) and len(node) == 1:
        ((name, node),) = node.items()
        path.append(str(name))
    return tuple(path)
