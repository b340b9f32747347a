"""The volume limits: what ``limits.toml`` says, and the verdict when one is exceeded.

The limits are policy: ``limits.toml`` beside ``policy.csv``, its format
documented at its top, read by :func:`load_limits` (errors name file and line).
Each section is a :class:`Rule` (a role, optionally under one ticket kind);
:meth:`Limits.for_roles` merges the rules that apply to a statement into its
:class:`EffectiveLimits`, the most restrictive of each. A :class:`Verdict`
names the limit a statement would exceed and when it could pass; ``verdict``
builds one (the stores in ``accessguard.throttle.stores`` do).
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from accessguard.durations import EXAMPLES, parse_seconds
from accessguard.errors import PolicyError, Reason, Throttled
from accessguard.policy.catalog import toml_error

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "EVERYONE",
    "EffectiveLimits",
    "Limits",
    "Rule",
    "Verdict",
    "Window",
    "load_limits",
    "verdict",
]

#: The role every employee holds (as in policy.csv): its limits always apply.
EVERYONE = "everyone"

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_UNITS = {"day": 86400, "hour": 3600, "minute": 60, "second": 1}
#: the longest window a limit may count over: a leap year
MAX_WINDOW_SECONDS = 366 * 86400
_WINDOWED = ("distinct_customers", "statements")
_LIMIT_KEYS = frozenset({*_WINDOWED, "rows_per_statement"})
_HEADER = re.compile(r"""^\s*\[\[?(?P<key>(?:[^\]"']|"[^"]*"|'[^']*')+)\]""")
_ASSIGN = re.compile(r"""^\s*(?P<key>(?:[\w\-.\s]|"[^"]*"|'[^']*')+?)\s*=""")


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


def verdict(name: str, window: Window, count: int, retry_after: float) -> Verdict:
    """The verdict of the limit ``name``: ``count`` with the statement, wait ``retry_after``."""
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
        if seconds > MAX_WINDOW_SECONDS:  # Redis keys its sets' life in seconds (EXPIRE)
            message = f"{keys[-1]}.per must be at most 366 days, not {per!r}"
            raise self.error(message, *keys, "per")
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
