"""``accessguard learn``: a least-privilege proposal from what the audit trail says was used.

Reads the events of a period and credits every ``p`` rule of the policy that
some allowed statement needed: ledger entries (reads and updates of scoped
tables: who, which roles, which ticket kind, which columns, how many
statements) and, when the guard audits allowed statements too
(``audit_allowed=True``), their text, which is analysed again to tell a read
from an update exactly. An entry without text credits every action its roles
hold on its columns (the ledger does not say which was used): learn never
proposes to remove what may have been needed. Throttled statements count as
uses (their grants passed; a volume limit refused them); refusals do not.
A masked grant (``read:mask=email``) counts as a read of its column.

The proposal is a unified diff of ``policy.csv``, each change preceded by a
``# learn:`` comment saying why: a rule never used in the period is removed,
a ``TABLE.*`` line some of whose columns went unused becomes one line per
used column, and a grant read by only a few of the employees who worked
under that role and ticket kind is flagged (kept). Rules on tables the
ledger does not cover (no row scope) are kept unless allowed statements are
audited: without evidence, nothing is removed. It is never applied: the
security team reviews it, and ``learn_command`` replays it over the same
period (``accessguard.investigate.replay``) to show what it would have refused.
"""

from __future__ import annotations

import csv
import datetime as dt
import difflib
import io
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from accessguard.analysis import analyze
from accessguard.investigate.replay import numbered
from accessguard.investigate.sums import event_time
from accessguard.policy.rules import EVERYONE, NO_TICKET, POLICY_FILE, Policy, Rule

Event = Mapping[str, Any]
#: (table, column, action); action "*" when the event does not say (a ledger entry)
Use = tuple[str, str, str]
_USES = frozenset({"allowed", "throttled"})
_DIALECTS = {"postgresql": "postgres", "sqlite": "sqlite"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Period:
    """The events learned from: ``start <= time < end`` (None: unbounded on that side)."""

    start: dt.datetime | None = None
    end: dt.datetime | None = None

    def contains(self, when: dt.datetime | None) -> bool:
        if when is None:
            return self.start is None and self.end is None
        return (self.start is None or when >= self.start) and (self.end is None or when < self.end)


@dataclass(slots=True)
class Credit:
    """How one expanded rule was used in the period."""

    statements: int = 0
    users: set[str] = field(default_factory=set)
    last: dt.datetime | None = None


@dataclass(slots=True)
class Usage:
    """What the events of a period used, rule by rule."""

    credits: dict[Rule, Credit] = field(default_factory=lambda: defaultdict(Credit))
    #: (role, ticket kind) -> employees who used some grant of it
    active: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    statements: int = 0
    users: set[str] = field(default_factory=set)
    first: dt.datetime | None = None
    last: dt.datetime | None = None
    #: allowed statements are audited with their text: unscoped tables are observed too
    full: bool = False


def in_period(events: Iterable[Event], period: Period) -> list[Event]:
    """The events whose time (a ledger entry's last statement) falls in ``period``."""
    return [e for e in events if period.contains(event_time(e))]


def collect(events: Iterable[Event], policy: Policy) -> Usage:
    """Credit each rule of ``policy`` with the allowed statements of ``events`` that needed it."""
    events = list(events)
    queries = [e for e in events if e.get("event.action") == "query"]
    uses = [e for e in queries if e.get("accessguard.outcome") in _USES]
    texts = {e.get("accessguard.fingerprint"): e.get("db.query.text") for e in queries}
    usage = Usage(full=any(e.get("accessguard.outcome") == "allowed" for e in queries))
    counted = {_who(e) for e in uses}
    memo: dict[tuple[object, ...], tuple[Rule, ...]] = {}  # statements repeat: decide once
    for event in uses:
        _credit(usage, policy, memo, event, text=event.get("db.query.text"), weight=1)
    for event in events:
        if event.get("event.action") != "ledger":
            continue
        weight = as_int(event.get("accessguard.statements"))
        if _who(event) in counted:  # its statements were audited with their text
            weight = 0
        text = texts.get(event.get("accessguard.fingerprint"))
        _credit(usage, policy, memo, event, text=text, weight=weight)
    return usage


def verb(rule: Rule) -> str:
    """A rule's action without its qualifiers: ``read:mask=email`` is a read."""
    return rule.action.partition(":")[0]


def _who(event: Event) -> tuple[object, ...]:
    return tuple(
        event.get(k) for k in ("accessguard.fingerprint", "user.name", "accessguard.ticket.id")
    )


def as_int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _credit(  # noqa: PLR0913 - one event's facts and where they go
    usage: Usage,
    policy: Policy,
    memo: dict[tuple[object, ...], tuple[Rule, ...]],
    event: Event,
    *,
    text: object,
    weight: int,
) -> None:
    user = str(event.get("user.name"))
    credited = credited_rules(policy, event, text, memo)
    when = event_time(event)
    for rule in credited:
        credit = usage.credits[rule]
        credit.statements += weight
        credit.users.add(user)
        if when is not None and (credit.last is None or when > credit.last):
            credit.last = when
        usage.active[(rule.role, rule.kind)].add(user)
    usage.statements += weight
    usage.users.add(user)
    if when is not None:
        usage.first = when if usage.first is None else min(usage.first, when)
        usage.last = when if usage.last is None else max(usage.last, when)


def credited_rules(
    policy: Policy,
    event: Event,
    text: object,
    memo: dict[tuple[object, ...], tuple[Rule, ...]],
) -> tuple[Rule, ...]:
    """The rules of ``policy`` that granted what ``event``'s statement needed (memoised)."""
    raw_roles = event.get("user.roles")
    roles = (
        frozenset(str(r) for r in raw_roles)
        if isinstance(raw_roles, list)
        else policy.roles_of(str(event.get("user.name")))
    )
    raw_kind = event.get("accessguard.ticket.kind")
    kinds = frozenset({NO_TICKET} | ({str(raw_kind)} if raw_kind is not None else set()))
    key = (
        roles,
        kinds,
        text if isinstance(text, str) else None,
        event.get("db.system.name"),
        tuple(map(str, event.get("accessguard.columns") or ())),
        tuple(map(str, event.get("accessguard.tables") or ())),
    )
    found = memo.get(key)
    if found is None:
        found = memo[key] = _rules_for(policy, roles, kinds, *_uses(event, text, policy))
    return found


def _rules_for(
    policy: Policy, roles: frozenset[str], kinds: frozenset[str], uses: set[Use], bare: set[str]
) -> tuple[Rule, ...]:
    """The rules of ``roles`` under ``kinds`` granting ``uses`` (and a read of each bare table)."""
    candidates = [r for r in policy.rules if r.role in roles and r.kind in kinds]
    credited = [
        r
        for r in candidates
        if any((r.table, r.column) == (t, c) and a in ("*", verb(r)) for t, c, a in uses)
    ]
    for table in sorted(bare):  # read without naming a column: one readable column is enough
        readers = [r for r in candidates if r.table == table and verb(r) == "read"]
        if readers and not any(r.table == table and verb(r) == "read" for r in credited):
            credited.append(min(readers, key=lambda r: (r.line, r.column)))
    return tuple(credited)


def _uses(event: Event, text: object, policy: Policy) -> tuple[set[Use], set[str]]:
    """The (table, column, action)s an event's statement needed, and tables read bare."""
    catalog = policy.catalog
    if isinstance(text, str):
        dialect = _DIALECTS.get(str(event.get("db.system.name")), "postgres")
        sql = numbered(text) if dialect == "postgres" else text
        facts = analyze(sql, catalog=catalog, dialect=dialect, sending=False)
        if facts.problem is None:
            uses = {(t, c, "read") for t, c in facts.reads}
            uses |= {(t, c, "update") for t, c in facts.writes}
            return uses, set(facts.tables) - {t for t, _c, _a in uses}
    uses = set()
    for name in event.get("accessguard.columns") or ():
        table, _, column = str(name).rpartition(".")
        spec = catalog.by_name(table)
        if spec is not None:
            uses.add((spec.qualified, column, "*"))
    named = {t for t, _c, _a in uses}
    bare = set()
    for name in event.get("accessguard.tables") or ():
        spec = catalog.by_name(str(name))
        if spec is not None and spec.qualified not in named:
            bare.add(spec.qualified)
    return uses, bare


# ---------------------------------------------------------------------- proposal


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """One ``p`` line of policy.csv the proposal changes (or flags), and why."""

    line: int
    text: str
    #: the lines that replace it (``(text,)`` when it is only flagged, ``()`` when removed)
    replacement: tuple[str, ...]
    why: str
    kind: str  # "unused" | "narrowed" | "few"


@dataclass(frozen=True, slots=True, kw_only=True)
class Proposal:
    """The proposed policy.csv, its changes and the diff a reviewer reads."""

    current: str
    proposed: str
    changes: tuple[Change, ...]
    #: p lines kept unexamined: their tables have no row scope and allowed statements
    #: are not audited, so the events say nothing about them
    unobserved: tuple[int, ...]

    def diff(self) -> str:
        lines = difflib.unified_diff(
            self.current.splitlines(keepends=True),
            self.proposed.splitlines(keepends=True),
            fromfile=f"a/{POLICY_FILE}",
            tofile=f"b/{POLICY_FILE}",
        )
        return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def propose(policy: Policy, usage: Usage, text: str, *, span: str, few: float = 0.5) -> Proposal:
    """Rewrite ``text`` (policy.csv) to the rules ``usage`` needed.

    ``span`` says how long the period was ("30 days"). A grant is flagged
    "few" when the employees who used it are at most ``few`` of those who
    used any grant of the same role and ticket kind (and at least two did).
    """
    by_line: dict[int, list[Rule]] = defaultdict(list)
    for rule in policy.rules:
        by_line[rule.line].append(rule)
    out: list[str] = []
    changes: list[Change] = []
    unobserved: list[int] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        rules = by_line.get(lineno)
        if not rules:
            out.append(line)
            continue
        spec = policy.catalog.tables.get(rules[0].table)
        if not usage.full and spec is not None and spec.scope is None:
            unobserved.append(lineno)
            out.append(line)
            continue
        change = _judge(line, lineno, rules, usage, span=span, few=few)
        if change is None:
            out.append(line)
            continue
        changes.append(change)
        out.append(f"# learn: {change.why}")
        out.extend(change.replacement)
    proposed = "\n".join(out) + ("\n" if text.endswith("\n") else "")
    return Proposal(
        current=text, proposed=proposed, changes=tuple(changes), unobserved=tuple(unobserved)
    )


def _judge(  # noqa: PLR0913 - one line's facts
    line: str, lineno: int, rules: list[Rule], usage: Usage, *, span: str, few: float
) -> Change | None:
    used = [r for r in rules if r in usage.credits]
    first = rules[0]
    table = first.table.rsplit(".", 1)[-1]
    if not used:
        why = f"removed {line.strip()!r}: unused for {span} (the whole period)"
        return Change(line=lineno, text=line, replacement=(), why=why, kind="unused")
    if len(used) < len(rules):
        unused = ", ".join(f"{table}.{r.column}" for r in rules if r not in usage.credits)
        fields = _fields(line)
        kept = tuple(
            f"p, {fields[1]}, {fields[2]}, {fields[3].split('.')[0]}.{r.column}, {fields[4]}"
            for r in used
        )
        why = f"{table}.* narrowed to the {plural(len(used), 'column')} used; "
        why += f"unused for {span}: {unused}"
        flagged = _few(used, usage, few)
        if flagged:
            why += f"; {flagged}"
        return Change(line=lineno, text=line, replacement=kept, why=why, kind="narrowed")
    flagged = _few(used, usage, few)
    if flagged:
        return Change(line=lineno, text=line, replacement=(line,), why=flagged, kind="few")
    return None


def _few(rules: list[Rule], usage: Usage, few: float) -> str:
    """ "read by 1 of 2 support_agents who worked order_issue tickets (alice)", or ""."""
    first = rules[0]
    if first.role == EVERYONE:
        return ""
    active = usage.active.get((first.role, first.kind), set())
    notes = []
    worked = (
        f"who worked {first.kind} tickets"
        if first.kind != NO_TICKET
        else "who used its no-ticket grants"
    )
    for rule in rules:
        users = usage.credits[rule].users
        if len(active) >= 2 and len(users) <= few * len(active):
            done = "read" if verb(rule) == "read" else "updated"
            name = f"{rule.table.rsplit('.', 1)[-1]}.{rule.column} " if len(rules) > 1 else ""
            notes.append(
                f"{name}{done} by {len(users)} of {len(active)} {first.role}s {worked} "
                f"({', '.join(sorted(users))})"
            )
    return "; ".join(notes)


def _fields(line: str) -> list[str]:
    return [f.strip() for f in next(csv.reader(io.StringIO(line.strip()), skipinitialspace=True))]


def plural(n: int, noun: str) -> str:
    """``"1 column"``, ``"3 columns"``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def span_text(delta: dt.timedelta) -> str:
    """A period's length in the largest whole unit: "30 days", "5 hours", "1 second"."""
    seconds = int(delta.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            return plural(seconds // size, unit)
    return plural(seconds, "second")
