"""``accessguard learn``'s run: events of a period in, a reviewed proposal and its replay out.

``learn`` ties ``accessguard.authoring.learn`` (credit the rules, propose the diff) to
``accessguard.investigate.replay``: the period's events are written to a temporary audit
file, the proposal to a temporary copy of the policy directory, and the
audited statements are re-decided under it against the current policy. What
the ledger keeps without text (a fingerprint) cannot be replayed; those
entries are checked by their columns instead. Nothing is written to the
policy directory.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accessguard.authoring.learn import (
    Event,
    Period,
    Proposal,
    Usage,
    collect,
    credited_rules,
    in_period,
    plural,
    propose,
    span_text,
)
from accessguard.investigate.replay import MAY_DENY, NEWLY_DENIED, ReplayReport, replay
from accessguard.policy.rules import NO_TICKET, POLICY_FILE, Policy, Rule, load_policy

EXIT_OK = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Learned:
    """A proposal, the evidence it rests on, and what replaying it over the period refuses."""

    policies: Path
    start: dt.datetime | None
    end: dt.datetime
    span: str
    usage: Usage
    policy: Policy
    proposal: Proposal
    replay: ReplayReport
    #: ledger entries with no text to replay, checked by columns: (checked, not granted)
    ledger_checked: int
    ledger_refused: tuple[str, ...]

    @property
    def refused(self) -> int:
        """Statements the workload ran that the proposal would refuse (or may, by row scope)."""
        replayed = sum(
            c.statements for c in self.replay.changes if c.change in (NEWLY_DENIED, MAY_DENY)
        )
        return replayed + len(self.ledger_refused)

    def render(self, *, out: Path | None = None) -> str:
        usage = self.usage
        start = _when(self.start)
        lines = [
            (
                f"learned from {usage.statements} allowed statements of {len(usage.users)} "
                f"employees, {start} to {_when(self.end)} ({self.span})"
            ),
            "evidence: "
            + (
                "allowed statements audited with their text, and the ledger"
                if usage.full
                else "the ledger (reads and updates of scoped tables); rules on tables "
                "without row scope are kept: audit allowed statements to learn them"
            ),
            "",
            "used rules, per role and ticket kind:",
            *_used(usage),
            "",
        ]
        counts = {k: sum(1 for c in self.proposal.changes if c.kind == k) for k in _KINDS}
        lines.append(
            "proposal: "
            + ", ".join(f"{n} {_KINDS[k]}" for k, n in counts.items())
            + f"; {len(self.proposal.unobserved)} not observed (kept). Nothing is applied."
        )
        diff = self.proposal.diff()
        if out is not None:
            lines.append(
                f"wrote {out}: review it, then apply with patch -p1 -d {self.policies} < {out}"
            )
        elif diff:
            lines += ["", diff.rstrip("\n")]
        else:
            lines.append("(no change: every rule was used)")
        lines += ["", "replay of the proposal over the same period:", self.replay.render()]
        if self.ledger_checked:
            lines.append(
                f"ledger entries without text to replay, checked by their columns: "
                f"{plural(self.ledger_checked, 'statement shape')}, "
                f"{len(self.ledger_refused)} no longer granted"
            )
            lines += [f"  {r}" for r in self.ledger_refused]
        if self.refused == 0:
            lines.append("the proposal refuses nothing of what the period's workload ran")
        else:
            lines.append(
                f"the proposal refuses {self.refused} of what the period's workload ran "
                "(replayed statements and ledger shapes above): review before applying"
            )
        return "\n".join(lines)


_KINDS = {"unused": "unused (removed)", "narrowed": "narrowed", "few": "flagged (few readers)"}


def _when(value: dt.datetime | None) -> str:
    if value is None:
        return "the first event"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _used(usage: Usage) -> list[str]:
    groups: dict[tuple[str, str], list[str]] = {}
    for rule in sorted(usage.credits, key=lambda r: (r.role, r.kind, r.line, r.column)):
        credit = usage.credits[rule]
        name = f"{rule.table.rsplit('.', 1)[-1]}.{rule.column} {rule.action}"
        count = plural(credit.statements, "statement")
        groups.setdefault((rule.role, rule.kind), []).append(
            f"    {POLICY_FILE}:{rule.line:<3} {name:<32} {count:>14}"
            f"  {', '.join(sorted(credit.users))}  last {_when(credit.last)}"
        )
    out = []
    for (role, kind), rows in groups.items():
        active = ", ".join(sorted(usage.active[(role, kind)]))
        what = "no ticket" if kind == NO_TICKET else f"{kind} tickets"
        out += [f"  {role}, {what} (used by {active})", *rows]
    return out or ["  (none)"]


def learn(
    events: Iterable[Event],
    policies: Path,
    *,
    period: Period | None = None,
    now: dt.datetime | None = None,
    few: float = 0.5,
) -> Learned:
    """Propose ``policies``' rules as ``period``'s events used them; replay the proposal."""
    period = period or Period()
    now = now or dt.datetime.now(dt.UTC)
    policy = load_policy(policies)
    chosen = in_period(events, period)
    usage = collect(chosen, policy)
    start = period.start or usage.first
    end = period.end or now
    span = span_text(end - start) if start is not None else "the whole period"
    text = (policies / POLICY_FILE).read_text(encoding="utf-8")
    proposal = propose(policy, usage, text, span=span, few=few)
    with tempfile.TemporaryDirectory(prefix="accessguard-learn-") as tmp:
        audit = Path(tmp) / "audit.jsonl"
        replayed = merged(chosen)
        with audit.open("w", encoding="utf-8") as fh:
            for event in replayed:
                fh.write(json.dumps(event, default=str) + "\n")
        target = Path(tmp) / "proposed"
        shutil.copytree(policies, target)
        (target / POLICY_FILE).write_text(proposal.proposed, encoding="utf-8")
        report = replay(audit, policies, target)
        proposed = load_policy(target)
    checked, refused = check_ledger(replayed, proposed)
    return Learned(
        policies=policies,
        start=start,
        end=end,
        span=span,
        usage=usage,
        policy=policy,
        proposal=proposal,
        replay=report,
        ledger_checked=checked,
        ledger_refused=refused,
    )


def merged(events: Iterable[Event]) -> list[Event]:
    """The events with ledger entries of one statement shape added up into one entry each.

    What replay and the column check read of an entry (who, roles, ticket,
    fingerprint, columns, statements) is kept; subjects and times are not.
    """
    out: list[Event] = []
    groups: dict[tuple[object, ...], dict[str, Any]] = {}
    for event in events:
        if event.get("event.action") != "ledger":
            out.append(event)
            continue
        key = tuple(repr(event.get(k)) for k in _SHAPE)
        group = groups.get(key)
        if group is None:
            group = groups[key] = {k: event.get(k) for k in _SHAPE}
            group["accessguard.statements"] = 0
            out.append(group)
        statements = event.get("accessguard.statements")
        if isinstance(statements, int) and not isinstance(statements, bool) and statements > 0:
            group["accessguard.statements"] += statements
    return out


_SHAPE = (
    "event.action",
    "accessguard.outcome",
    "accessguard.fingerprint",
    "user.name",
    "user.roles",
    "accessguard.ticket.id",
    "accessguard.ticket.kind",
    "accessguard.tables",
    "accessguard.columns",
)


def check_ledger(events: list[Event], proposed: Policy) -> tuple[int, tuple[str, ...]]:
    """Ledger entries whose text no event holds, re-credited under the proposed policy."""
    texts = {
        e.get("accessguard.fingerprint")
        for e in events
        if e.get("event.action") == "query" and e.get("db.query.text")
    }
    entries = [
        e
        for e in events
        if e.get("event.action") == "ledger" and e.get("accessguard.fingerprint") not in texts
    ]
    refused: dict[str, None] = {}
    memo: dict[tuple[object, ...], tuple[Rule, ...]] = {}
    for entry in entries:
        rules = credited_rules(proposed, entry, None, memo)
        named = {f"{r.table.rsplit('.', 1)[-1]}.{r.column}" for r in rules}
        missing = [str(c) for c in entry.get("accessguard.columns") or () if str(c) not in named]
        if missing or (entry.get("accessguard.tables") and not rules):
            who = f"{entry.get('user.name')} {entry.get('accessguard.ticket.id') or '-'}"
            refused[f"{who}: {', '.join(missing) or 'no readable column'}"] = None
    return len(entries), tuple(refused)
