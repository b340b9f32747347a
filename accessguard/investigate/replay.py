"""``accessguard replay``: audited statements re-decided under a proposed policy.

The audit trail holds statements with every literal redacted, so replay
re-decides what does not depend on values exactly (grants, statement kinds,
functions, tables, columns) and reports what depends on the row scope as
"needs values": *may* newly allow or deny, never a definite change. Ledger
entries keep only a fingerprint; they are replayed when another event in the
file carries the text of the same fingerprint.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from accessguard.analysis import analyze
from accessguard.audit.sinks import read_events
from accessguard.decision import CHECKS, Context, params_match, row_scope_bound
from accessguard.errors import Reason
from accessguard.policy.rules import Policy, load_policy
from accessguard.tickets.stores import Ticket, TicketStore, as_store

EXIT_OK = 0

# ---------------------------------------------------------------------- replay


@dataclass(frozen=True, slots=True, kw_only=True)
class Replayed:
    """One statement's outcome under one policy, or as recorded.

    ``outcome``: allowed | denied | needs values (the grants cover it; whether
    its rows are in scope depends on values the audit redacted) | denied by
    row scope (recorded only) | throttled (recorded only: its grants and row
    scope passed, a volume limit refused it) | unreplayable.
    """

    outcome: str
    reason: str | None = None
    recorded: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayChange:
    """Statements of one employee whose outcome changes the same way, for the same reason."""

    change: str
    user: str
    reason: str
    statements: int
    example: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayReport:
    """What the proposed policy changes about the audited statements."""

    baseline: str
    statements: int
    #: (recorded outcome, statements): allowed, denied, denied by row scope, throttled
    recorded: tuple[tuple[str, int], ...]
    unchanged: int
    unreplayable: int
    changes: tuple[ReplayChange, ...]
    ledger_note: str

    def render(self) -> str:
        out = [
            f"replayed {self.statements} audited statements (recorded: "
            + ", ".join(f"{n} {outcome}" for outcome, n in self.recorded)
            + ")",
            f"compared with: {self.baseline}",
            f"unchanged: {self.unchanged}",
        ]
        for change, meaning in _CHANGES.items():
            group = [c for c in self.changes if c.change == change]
            if not group:
                continue
            out.append(f"{change}: {sum(c.statements for c in group)}  ({meaning})")
            width = max(len(c.user) for c in group)
            reason_width = max(len(c.reason) for c in group)
            out += [
                f"  {c.user.ljust(width)}  {c.reason.ljust(reason_width)}  {c.statements:>4}"
                f"  e.g. {c.example}"
                for c in group
            ]
        if throttled := dict(self.recorded).get(THROTTLED):
            out.append(
                f"throttled: {throttled} (their grants and row scope passed, so they are "
                "re-decided like allowed ones; volume limits are not replayed)"
            )
        if self.unreplayable:
            out.append(
                f"could not replay: {self.unreplayable} (no statement text, or the redacted "
                "text no longer analyzes: a literal was part of the syntax)"
            )
        out.append(self.ledger_note)
        return "\n".join(out)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (``accessguard replay --format json``)."""
        return {
            "baseline": self.baseline,
            "statements": self.statements,
            "recorded": dict(self.recorded),
            "unchanged": self.unchanged,
            "unreplayable": self.unreplayable,
            "changes": [
                {
                    "change": c.change,
                    "user": c.user,
                    "reason": c.reason,
                    "statements": c.statements,
                    "example": c.example,
                }
                for c in self.changes
            ],
            "ledger": self.ledger_note,
        }


NEWLY_DENIED, NEWLY_ALLOWED = "newly denied", "newly allowed"
MAY_ALLOW, MAY_DENY = "may newly allow", "may newly deny"
NEEDS_VALUES = "needs values"
THROTTLED = "throttled"
_CHANGES = {
    NEWLY_DENIED: "by the reason the proposed policy gives",
    NEWLY_ALLOWED: "by the reason that no longer stops them",
    MAY_ALLOW: "the grants now cover them; their row scope depends on redacted values",
    MAY_DENY: "they passed only if their rows were in scope, which depends on redacted values",
}
_REFUSED = frozenset({"denied", "denied by row scope"})
_SCOPE_REASONS = frozenset({str(Reason.ROW_SCOPE_UNBOUND), str(Reason.ROW_SCOPE_OTHER_SUBJECT)})
_ARTIFACTS = frozenset({Reason.SQL_UNANALYZABLE, Reason.SQL_PARAMS_MISMATCH})
_PLACEHOLDER = re.compile(r'"(?:[^"]|"")*"|\$\s*\?|\?')
_DIALECTS = {"postgresql": "postgres", "sqlite": "sqlite"}


@dataclass(frozen=True, slots=True, kw_only=True)
class _Statement:
    text: str | None
    dialect: str
    user: str
    ticket_id: str | None
    ticket_kind: str | None
    recorded: Replayed
    weight: int


def replay(
    audit_file: Path,
    current: Path | None,
    proposed: Path,
    *,
    tickets: TicketStore | Iterable[Ticket] | None = None,
) -> ReplayReport:
    """Re-decide the audited statements under ``proposed``; compare with ``current`` or the record.

    The audit keeps statements with every literal as ``?``, so a replay decides
    grants, statement kinds, functions, tables and columns exactly, and the row
    scope only when it does not depend on a value: a statement whose grants
    pass but whose rows depend on a redacted id is "needs values", never
    guessed. Tickets are as recorded (open and assigned to the employee unless
    the refusal said otherwise) unless ``tickets`` gives their state. Throttles
    are not replayed (they depend on the volume at the time): a throttled
    statement is recorded as throttled, never as allowed, and is re-decided on
    its grants, so the proposed policy may newly deny it but never newly
    allows it. Ledger entries
    (allowed reads) keep only a fingerprint of the statement: one is replayed
    when another event of the file carries the text with that fingerprint.
    """
    events = list(read_events(audit_file))
    statements, ledger_note = _statements(events)
    store = as_store(tickets) if tickets is not None else None
    after_policy = load_policy(proposed)
    before_policy = load_policy(current) if current is not None else None
    groups: Counter[tuple[str, str, str]] = Counter()
    examples: dict[tuple[str, str, str], str] = {}
    unchanged = unreplayable = 0
    recorded: Counter[str] = Counter()
    decided: dict[tuple[int, _Statement], Replayed] = {}  # a trail repeats its statements

    def decide(policy: Policy, st: _Statement) -> Replayed:
        key = (id(policy), replace(st, weight=0))
        found = decided.get(key)
        if found is None:
            found = decided[key] = _replay_one(policy, st, store)
        return found

    for st in statements:
        recorded[st.recorded.outcome] += st.weight
        after = decide(after_policy, st)
        before = decide(before_policy, st) if before_policy else st.recorded
        if before.outcome == NEEDS_VALUES and st.recorded.outcome != "denied":
            before = st.recorded  # the recorded outcome tells how the row scope decided
        change = _change(before, after)
        if change == "unreplayable":
            unreplayable += st.weight
        elif change is None:
            unchanged += st.weight
        else:
            key = (change, st.user, _group_reason(change, before, after))
            groups[key] += st.weight
            examples.setdefault(key, st.text or "")
    order = list(_CHANGES)
    changes = tuple(
        ReplayChange(change=k[0], user=k[1], reason=k[2], statements=n, example=examples[k])
        for k, n in sorted(groups.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1:]))
    )
    baseline = f"the current policy ({current})" if current else "the recorded outcomes"
    return ReplayReport(
        baseline=baseline,
        statements=sum(s.weight for s in statements),
        recorded=tuple(sorted(recorded.items())),
        unchanged=unchanged,
        unreplayable=unreplayable,
        changes=changes,
        ledger_note=ledger_note,
    )


def _statements(events: Sequence[Mapping[str, Any]]) -> tuple[list[_Statement], str]:
    """The replayable statements of the events, and what became of the ledger's entries."""
    queries = [e for e in events if e.get("event.action") == "query"]
    ledger = [e for e in events if e.get("event.action") == "ledger"]
    statements = [_statement(e, e.get("db.query.text"), 1) for e in queries]
    entries = sum(_count(e) for e in ledger)
    if any(e.get("accessguard.outcome") == "allowed" for e in queries):
        note = f"ledger: {len(ledger)} entries ({entries} statements) not replayed: the file "
        note += "audits allowed statements with their text, which were replayed instead"
        return statements, note
    # the fingerprint is a hash of the redacted text: an event with the same one has its text
    texts = {e.get("accessguard.fingerprint"): e.get("db.query.text") for e in queries}
    done = 0
    for event in ledger:
        text = texts.get(event.get("accessguard.fingerprint"))
        if text and _count(event):  # an entry of 0 statements only adds rows
            statements.append(_statement(event, text, _count(event)))
            done += _count(event)
    note = f"ledger: {len(ledger)} entries ({entries} statements) of allowed reads keep only a "
    note += f"fingerprint, no text; {done} statements replayed with the text of another event "
    note += f"of the same fingerprint, {entries - done} not replayed"
    return statements, note


def _count(event: Mapping[str, Any]) -> int:
    value = event.get("accessguard.statements")
    return value if isinstance(value, int) and value > 0 else 0


def _statement(event: Mapping[str, Any], text: object, weight: int) -> _Statement:
    outcome = str(event.get("accessguard.outcome") or "")
    reason = event.get("event.reason")
    if outcome == "allowed":
        recorded = Replayed(outcome="allowed", reason=None, recorded=True)
    elif outcome == THROTTLED:  # refused, though its grants and row scope had passed
        recorded = Replayed(outcome=THROTTLED, reason=str(reason), recorded=True)
    elif reason in _SCOPE_REASONS:
        recorded = Replayed(outcome="denied by row scope", reason=str(reason), recorded=True)
    else:
        recorded = Replayed(outcome="denied", reason=str(reason), recorded=True)
    kind = event.get("accessguard.ticket.kind")
    ticket = event.get("accessguard.ticket.id")
    return _Statement(
        text=text if isinstance(text, str) else None,
        dialect=_DIALECTS.get(str(event.get("db.system.name")), "postgres"),
        user=str(event.get("user.name")),
        ticket_id=str(ticket) if ticket is not None else None,
        ticket_kind=str(kind) if kind is not None else None,
        recorded=recorded,
        weight=weight,
    )


def _replay_one(policy: Policy, st: _Statement, store: TicketStore | None) -> Replayed:
    if st.text is None:
        return Replayed(outcome="unreplayable")
    sql = numbered(st.text) if st.dialect == "postgres" else st.text
    facts = analyze(sql, catalog=policy.catalog, dialect=st.dialect)
    if facts.problem is not None:
        if facts.problem in _ARTIFACTS and st.recorded.reason != facts.problem:
            return Replayed(outcome="unreplayable")
        return Replayed(outcome="denied", reason=str(facts.problem))
    ticket = store.get(st.ticket_id) if store and st.ticket_id else _as_recorded(st)
    context = Context(
        user=st.user, roles=policy.roles_of(st.user), ticket_id=st.ticket_id, ticket=ticket
    )
    for check in CHECKS:
        if check in (params_match, row_scope_bound):  # values are redacted: scope below
            continue
        if denial := check(facts, context, policy):
            return Replayed(outcome="denied", reason=str(denial.reason))
    if not facts.scopes:
        return Replayed(outcome="allowed")
    if context.valid is None:  # no ticket, or one that does not count: no value changes that
        denial = row_scope_bound(facts, context, policy)
        return Replayed(outcome="denied", reason=str(denial.reason) if denial else None)
    if any(not ref.values for ref in facts.scopes):
        return Replayed(outcome="denied", reason=str(Reason.ROW_SCOPE_UNBOUND))
    return Replayed(outcome=NEEDS_VALUES)


def numbered(text: str) -> str:
    """The redacted text with each ``?`` (and ``$ ?``) as ``$1``, ``$2``, ..."""
    count = 0

    def number(match: re.Match[str]) -> str:
        nonlocal count
        if match.group().startswith('"'):
            return match.group()
        count += 1
        return f"${count}"

    return _PLACEHOLDER.sub(number, text)


def _as_recorded(st: _Statement) -> Ticket | None:
    """The ticket as the event describes it; its customer or product is not audited."""
    reason = st.recorded.reason
    if st.ticket_id is None or st.ticket_kind is None or reason == Reason.TICKET_UNKNOWN:
        return None
    return Ticket(
        id=st.ticket_id,
        assignee="" if reason == Reason.TICKET_NOT_ASSIGNED else st.user,
        kind=st.ticket_kind,
        status="closed" if reason == Reason.TICKET_NOT_OPEN else "open",
    )


def _change(before: Replayed, after: Replayed) -> str | None:
    """How the outcome moves from ``before`` to ``after`` (None: it does not)."""
    if "unreplayable" in (before.outcome, after.outcome):
        return "unreplayable"
    if after.outcome == "denied":
        if before.outcome in _REFUSED:
            return None
        return MAY_DENY if before.outcome == NEEDS_VALUES else NEWLY_DENIED
    if after.outcome == "allowed":
        if before.outcome in ("allowed", THROTTLED):  # the same grants, the same volume limits
            return None
        return MAY_ALLOW if before.outcome == NEEDS_VALUES else NEWLY_ALLOWED
    # needs values: the row scope decides, as it did whenever it decided before
    if before.outcome == "denied":
        return MAY_ALLOW
    if before.outcome == "allowed" and not before.recorded:
        return MAY_DENY  # no row scope under the current policy, one under the proposed
    return None


def _group_reason(change: str, before: Replayed, after: Replayed) -> str:
    """What a change is grouped by: the new refusal's reason, or the one that goes away."""
    if change in (NEWLY_DENIED, MAY_DENY):
        return after.reason or "row scope"
    return before.reason or "row scope"
