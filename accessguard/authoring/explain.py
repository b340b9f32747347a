"""``accessguard explain``: why a statement is allowed or refused, rule by rule.

The same decision as ``Guard.check``, shown with the ticket, the scope each
table is bound to, the rules that allow each column (file and line) and the
SQL the second wall would send (redacted).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from accessguard.analysis import Const, Facts, Param, redact, subject_marker
from accessguard.authoring.cases import PolicyLine, line_dict, native_params, policy_lines
from accessguard.decision import Context, Decision, decide
from accessguard.engine.probes import keyed
from accessguard.errors import Reason
from accessguard.guard import Guard
from accessguard.policy.catalog import SCOPE_KINDS
from accessguard.policy.rules import EVERYONE, NO_TICKET, Access, Policy, Rule

EXPECTATIONS = ("allowed", "denied", "throttled")
EXIT_OK, EXIT_FAILED, EXIT_MALFORMED = 0, 1, 2

_FILE_KEYS = frozenset({"tickets", "cases"})
_CASE_KEYS = frozenset({"name", "user", "ticket", "sql", "params", "expect", "reason"})
_REASONS = frozenset(str(r) for r in Reason)
#: the throttle's clock in policy tests starts here and moves one second per case
_START = 1_700_000_000.0

Params = tuple[Any, ...] | Mapping[str, Any] | None


# ---------------------------------------------------------------------- explain


def explain(  # noqa: PLR0913 - the options of `accessguard check`
    guard: Guard,
    sql: str,
    *,
    user: str,
    ticket: str | None,
    dialect: str = "postgres",
    params: Sequence[Any] | Mapping[str, Any] | None = None,
) -> str:
    """Facts, the rule behind each access (or the missing grant), the decision, the sent SQL.

    Shows bound subject ids (the scope), never a string literal: the sent SQL
    has every literal as ``?``, the ticket's subject id filled in.
    """
    context, facts, decision = _explained(
        guard, sql, user=user, ticket=ticket, dialect=dialect, params=params
    )
    policy, roles = guard.policy, context.roles
    out = [
        f"employee:  {user} (roles: {', '.join(sorted(roles))})",
        f"ticket:    {_ticket_text(context)}",
        f"statement: {facts.kind.upper()}",
    ]
    if facts.problem is not None:
        out.append(f"analysis:  refused ({facts.problem}): {facts.detail}")
    else:
        out += [
            f"tables:    {', '.join(facts.table_names) or '(none)'}",
            f"reads:     {_columns(facts.reads)}",
            f"writes:    {_columns(facts.writes)}",
            f"functions: {', '.join(sorted(facts.functions)) or '(none)'}",
            "row scope:" + ("" if facts.scopes else " (no scoped table)"),
            *(f"  {line}" for line in _scope_lines(facts, context)),
            "access:",
            *(f"  {line}" for line in _access_lines(facts, context, policy)),
        ]
    verdict = decision.outcome + (f" ({decision.reason})" if decision.reason else "")
    if decision.allowed and keyed(facts):
        verdict += " on a guarded connection, after its probe (check alone refuses it)"
    out.append(f"decision:  {verdict}")
    if decision.message:
        out.append(f"           {decision.message}")
    if decision.masked:
        out.append(f"masked:    {', '.join(f'{c} ({m})' for c, m in decision.masked)}")
    out.append(f"sent:      {_sent_text(facts, decision)}")
    return "\n".join(out)


def _explained(  # noqa: PLR0913 - the options of `accessguard check`
    guard: Guard,
    sql: str,
    *,
    user: str,
    ticket: str | None,
    dialect: str,
    params: Sequence[Any] | Mapping[str, Any] | None,
) -> tuple[Context, Facts, Decision]:
    if dialect == "postgres" and params is not None:
        sql, params = native_params(sql, params if isinstance(params, Mapping) else tuple(params))
    policy = guard.policy
    found = guard.find_ticket(ticket)  # a break-glass elevation's (BG-...) too
    roles = policy.roles_of(user)
    context = Context(user=user, roles=roles, ticket_id=ticket, ticket=found, params=params)
    masking = guard.masking(policy, context)  # the SQL sent shows the masks (literals as ?)
    facts = guard.analyze(sql, dialect=dialect, params=params is not None, masking=masking)
    return context, facts, decide(facts, context, policy)


def explain_data(  # noqa: PLR0913 - the options of `accessguard check`
    guard: Guard,
    sql: str,
    *,
    user: str,
    ticket: str | None,
    dialect: str = "postgres",
    params: Sequence[Any] | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What :func:`explain` shows, as JSON-ready data (``accessguard explain --format json``)."""
    context, facts, decision = _explained(
        guard, sql, user=user, ticket=ticket, dialect=dialect, params=params
    )
    policy = guard.policy
    analyzed = facts.problem is None
    sent = _sent_sql(facts, decision)
    return {
        "employee": user,
        "roles": sorted(context.roles),
        "ticket": _ticket_data(context),
        "statement": facts.kind,
        "analysis": None if analyzed else {"reason": str(facts.problem), "detail": facts.detail},
        "tables": list(facts.table_names) if analyzed else [],
        "reads": _column_list(facts.reads) if analyzed else [],
        "writes": _column_list(facts.writes) if analyzed else [],
        "functions": sorted(facts.functions) if analyzed else [],
        "row_scope": _scope_data(facts, context) if analyzed else [],
        "accesses": _access_data(facts, context, policy) if analyzed else [],
        "decision": {
            "outcome": decision.outcome,
            "reason": str(decision.reason) if decision.reason else None,
            "message": decision.message or None,
        },
        "masked": [{"column": c, "mask": m} for c, m in decision.masked],
        # literals as ?; the ticket's subject id filled in only when allowed
        "sent": sent,
    }


def _ticket_data(context: Context) -> dict[str, Any] | None:
    ticket = context.ticket
    if context.ticket_id is None:
        return None
    data: dict[str, Any] = {"id": context.ticket_id, "found": ticket is not None}
    if ticket is not None:
        data |= {"status": ticket.status, "kind": ticket.kind, "assignee": ticket.assignee}
        data |= {scope: getattr(ticket, attr) for scope, attr in SCOPE_KINDS.items()}
    problem = context.ticket_problem
    data["counts"] = context.valid is not None
    data["problem"] = (
        None if problem is None else {"reason": str(problem.reason), "message": problem.message}
    )
    return data


def _column_list(pairs: frozenset[tuple[str, str]]) -> list[str]:
    return sorted(f"{t.rsplit('.', 1)[-1]}.{c}" for t, c in pairs)


def _scope_data(facts: Facts, context: Context) -> list[dict[str, Any]]:
    ticket = context.valid
    out = []
    for ref in facts.scopes:
        subject = getattr(ticket, SCOPE_KINDS[ref.scope]) if ticket is not None else None
        out.append(
            {
                "table": ref.table.rsplit(".", 1)[-1],
                "scope": ref.scope,
                "bound": bool(ref.values),
                "values": [_value_data(v, context.params) for v in ref.values],
                "ticket_subject": subject,
            }
        )
    return out


def _value_data(value: Const | Param, params: object) -> dict[str, Any]:
    if isinstance(value, Const):
        return {"literal": value.value}
    key = value.key
    name = f"${key + 1}" if isinstance(key, int) else f"%({key})s"
    try:
        bound = params[key] if isinstance(params, Mapping | Sequence) else None  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        bound = None
    whole = isinstance(bound, int) and not isinstance(bound, bool)
    return {"param": name, "bound": bound if whole else None}


def _access_data(facts: Facts, context: Context, policy: Policy) -> list[dict[str, Any]]:
    texts = policy_lines(policy)
    out = []
    for access in _accesses(facts):
        table, column, action = access
        rules = _allowing(access, context, policy)
        allowed_by = line_dict(texts[rules[0].path, rules[0].line]) if rules else None
        out.append(
            {
                "action": action,
                "table": table.rsplit(".", 1)[-1],
                "column": column,
                "allowed_by": allowed_by,
                "missing": None if rules else _missing(access, context, policy, texts),
            }
        )
    return out


def _accesses(facts: Facts) -> list[Access]:
    accesses: list[Access] = sorted((t, c, "read") for t, c in facts.reads)
    return accesses + sorted((t, c, "update") for t, c in facts.writes)


def _allowing(access: Access, context: Context, policy: Policy) -> list[Rule]:
    kind = context.valid.kind if context.valid is not None else None
    rules = policy.rules_for(context.roles, NO_TICKET, access)
    return rules + (policy.rules_for(context.roles, kind, access) if kind is not None else [])


def _ticket_text(context: Context) -> str:
    ticket = context.ticket
    if context.ticket_id is None:
        return "(none)"
    if ticket is None:
        return f"{context.ticket_id}: no such ticket"
    subject = ", ".join(
        f"{scope} {getattr(ticket, attr)}"
        for scope, attr in SCOPE_KINDS.items()
        if getattr(ticket, attr) is not None
    )
    text = f"{ticket.id}: {ticket.status} {ticket.kind} ticket, assigned to {ticket.assignee}"
    text += f", {subject}" if subject else ""
    if context.ticket_problem is not None:
        text += f" (does not count: {context.ticket_problem.message})"
    return text


def _columns(pairs: frozenset[tuple[str, str]]) -> str:
    return ", ".join(sorted(f"{t.rsplit('.', 1)[-1]}.{c}" for t, c in pairs)) or "(none)"


def _scope_lines(facts: Facts, context: Context) -> list[str]:
    ticket = context.valid
    lines = []
    for ref in facts.scopes:
        table = ref.table.rsplit(".", 1)[-1]
        subject = getattr(ticket, SCOPE_KINDS[ref.scope]) if ticket is not None else None
        want = f"ticket's {ref.scope}: {subject}" if subject is not None else "no ticket subject"
        key = ref.key
        if key is not None and key.via is not None and not ref.values:
            other = f"{key.via.table.rsplit('.', 1)[-1]}.{key.via.column}"
            how = "probed before sending" if key.via.probe else "its scope column equals that one's"
            lines.append(f"{table}: {key.column} bound through {other} ({how}; {want})")
            continue
        if not ref.values and ref.key is not None:
            shown = [_value_text(v, context.params) for v in ref.key.values]
            lines.append(
                f"{table}: named by {ref.key.column} in ({', '.join(shown)}) only: a guarded "
                f"connection probes that every such row is the ticket's {ref.scope}'s before "
                f"sending ({want})"
            )
            continue
        if not ref.values:
            lines.append(f"{table}: {ref.scope} not bound: any {ref.scope}'s rows ({want})")
            continue
        shown = [_value_text(v, context.params) for v in ref.values]
        lines.append(f"{table}: {ref.scope} id = {' and '.join(shown)} ({want})")
    return lines


def _value_text(value: Const | Param, params: object) -> str:
    if isinstance(value, Const):
        return f"{value.value} (literal)"
    key = value.key
    name = f"${key + 1}" if isinstance(key, int) else f"%({key})s"
    try:
        bound = params[key] if isinstance(params, Mapping | Sequence) else None  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        bound = None
    if isinstance(bound, int) and not isinstance(bound, bool):
        return f"{name} = {bound}"
    return f"{name} (no integer bound)"


def _access_lines(facts: Facts, context: Context, policy: Policy) -> list[str]:
    accesses = _accesses(facts)
    texts = policy_lines(policy)
    width = max((len(a[1]) + len(a[0].rsplit(".", 1)[-1]) + len(a[2]) for a in accesses), default=0)
    lines = []
    for access in accesses:
        table, column, action = access
        label = f"{action} {table.rsplit('.', 1)[-1]}.{column}".ljust(width + 2)
        rules = _allowing(access, context, policy)
        if rules:
            lines.append(f"{label}  allowed by {texts[rules[0].path, rules[0].line]}")
        else:
            lines.append(f"{label}  MISSING: {_missing(access, context, policy, texts)}")
    return lines


def _missing(
    access: Access,
    context: Context,
    policy: Policy,
    texts: Mapping[tuple[str, int], PolicyLine],
) -> str:
    table, column, action = access
    obj = f"{table.rsplit('.', 1)[-1]}.{column}"
    mine = [
        r
        for r in policy.rules
        if r.role in context.roles and (r.table, r.column, r.action) == access
    ]
    if mine:
        kinds = sorted({r.kind for r in mine})
        where = ", ".join(f"{Path(r.path).name}:{r.line}" for r in mine)
        return f"needs an open {' or '.join(kinds)} ticket assigned to {context.user} ({where})"
    others = [r for r in policy.rules if (r.table, r.column, r.action) == access]
    role = next(iter(sorted(context.roles - {EVERYONE})), EVERYONE)
    kind = context.valid.kind if context.valid is not None else NO_TICKET
    text = (
        f"no rule lets {role} {action} it; the grant would be: p, {role}, {kind}, {obj}, {action}"
    )
    if others:
        text += f" (other roles have it: {texts[others[0].path, others[0].line]})"
    return text


def _redacted_sent(facts: Facts) -> str | None:
    if facts.sent is None:
        return None
    # psycopg's %s placeholders survive the redaction as one word
    text = redact(
        facts.sent.replace("%s", "__ag_param__").replace("%%", "%"), dialect=facts.dialect
    )
    return None if text is None else text.replace("__ag_param__", "%s")


def _sent_sql(facts: Facts, decision: Decision) -> str | None:
    """The SQL to be sent, literals as ``?``, the subject ids filled in when allowed."""
    text = _redacted_sent(facts)
    if text is None:
        return None
    if decision.allowed:
        for scope, subject in decision.subjects:
            text = text.replace(subject_marker(scope), str(int(subject)))
    return text


def _sent_text(facts: Facts, decision: Decision) -> str:
    if facts.sent is None:
        return "(nothing: the statement is refused before it is rewritten)"
    text = _sent_sql(facts, decision)
    if text is None:
        return "(the rewritten statement cannot be shown)"
    if not decision.allowed:
        return (
            f"{text}\n           (refused: {subject_marker('<scope>')} stands for the ticket's id)"
        )
    return f"{text}\n           (literals shown as ?)"
