"""decide(facts, context, policy) -> Decision. Pure: no I/O, no clock, no globals.

A pipeline of small named checks, run in order; the first that objects
decides. A new rule is a new entry in ``CHECKS``, not a new branch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from accessguard.analysis.facts import Const, Facts, KeyBinding, Param, ScopeRef
from accessguard.errors import Reason
from accessguard.policy.catalog import SCOPE_KINDS
from accessguard.policy.rules import EVERYONE, NO_TICKET, Access, Policy
from accessguard.tickets.stores import Ticket


@dataclass(frozen=True, slots=True)
class Denial:
    reason: Reason
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Context:
    """Who asks, under which ticket, with which bound values.

    ``valid`` is the ticket when it justifies access now (open, assigned to
    ``user``), else None with ``ticket_problem`` saying why; both are worked
    out once, when the context is made.
    """

    user: str
    roles: frozenset[str]
    ticket_id: str | None = None
    #: the ticket as the store returned it (None: not asked for, or not found)
    ticket: Ticket | None = None
    params: Sequence[Any] | Mapping[Any, Any] | None = None
    valid: Ticket | None = field(init=False, default=None)
    ticket_problem: Denial | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        valid, problem = _validate(self.user, self.ticket_id, self.ticket)
        object.__setattr__(self, "valid", valid)
        object.__setattr__(self, "ticket_problem", problem)


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The outcome for one statement. ``reason`` is None only when allowed."""

    outcome: str
    reason: Reason | None = None
    message: str = ""
    kind: str = "unknown"
    tables: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    #: (scope kind, subject id) the statement was proven to stay within
    subjects: tuple[tuple[str, int], ...] = ()
    #: on a refusal: (scope kind, subject id) the statement's scope columns were bound
    #: to, so "who tried to read customer 7?" has an answer (ids only, never other values)
    named: tuple[tuple[str, int], ...] = ()
    retry_after: float | None = None
    limit: str | None = None
    #: ("table.column", mask) of each column read only in a masked form (accessguard.policy.masking)
    masked: tuple[tuple[str, str], ...] = ()

    @property
    def allowed(self) -> bool:
        return self.outcome == "allowed"


Check = Callable[[Facts, Context, Policy], Denial | None]


def decide(facts: Facts, context: Context, policy: Policy) -> Decision:
    """Run every check; the first objection denies, otherwise allow."""
    tables = facts.table_names
    columns = facts.column_names
    for check in CHECKS:
        denial = check(facts, context, policy)
        if denial is not None:
            return Decision(
                outcome="denied",
                reason=denial.reason,
                message=denial.message,
                kind=facts.kind,
                tables=tables,
                columns=columns,
                named=named_subjects(facts, context.params),
            )
    subjects = (
        tuple(sorted({(ref.scope, _subject(context, ref.scope) or 0) for ref in facts.scopes}))
        if facts.scopes
        else ()
    )
    return Decision(
        outcome="allowed",
        kind=facts.kind,
        tables=tables,
        columns=columns,
        subjects=subjects,
        masked=policy.masked_reads(
            context.roles, context.valid.kind if context.valid else None, facts.reads
        ),
    )


# ---------------------------------------------------------------------- checks


def analyzable(facts: Facts, context: Context, policy: Policy) -> Denial | None:
    if facts.problem is not None:
        return Denial(facts.problem, f"Refused: {facts.detail}.")
    return None


def params_match(facts: Facts, context: Context, policy: Policy) -> Denial | None:
    """Every bound value is used by the statement, and every placeholder has a value."""
    params = context.params
    if params is None:
        given: frozenset[int | str] = frozenset()
    elif isinstance(params, Mapping):
        given = frozenset(params)
    else:
        given = frozenset(range(len(params)))
    if given != facts.params:
        return Denial(
            Reason.SQL_PARAMS_MISMATCH,
            "Refused: the statement's placeholders do not match the values bound to it "
            "(a placeholder inside a comment or string?).",
        )
    return None


def statement_kind_allowed(facts: Facts, context: Context, policy: Policy) -> Denial | None:
    if facts.kind not in ("select", "update"):
        return Denial(
            Reason.STATEMENT_FORBIDDEN,
            f"{facts.kind.upper()} statements are never allowed through the guard.",
        )
    return None


def grants_cover(facts: Facts, context: Context, policy: Policy) -> Denial | None:
    """Every column read or written is granted to one of the employee's roles."""
    ticket, problem = context.valid, context.ticket_problem
    kind = ticket.kind if ticket is not None else None
    granted = policy.granted(context.roles, kind)
    if facts.accesses <= granted:
        # a table read without naming a column (count(*), EXISTS, SELECT FROM t)
        # still needs one readable column: no rule, no rows
        for table in sorted(facts.tables - policy.readable(context.roles, kind)):
            name = table.rsplit(".", 1)[-1]
            return Denial(
                Reason.COLUMN_NOT_ALLOWED,
                f"No rule lets {_roles_text(context.roles)} read any column of {name}.",
            )
        return None
    accesses: list[Access] = sorted((t, c, "read") for t, c in facts.reads)
    accesses += sorted((t, c, "update") for t, c in facts.writes)
    for access in accesses:
        if policy.allows(context.roles, NO_TICKET, access):
            continue
        if kind is not None and policy.allows(context.roles, kind, access):
            continue
        return _missing_grant(access, context, policy, ticket, problem)
    return None


def locks_granted(facts: Facts, context: Context, policy: Policy) -> Denial | None:
    """A locking read (FOR UPDATE / FOR SHARE) needs leave to update a column of each table.

    PostgreSQL asks the same (UPDATE privilege on at least one column of each
    table locked): a lock blocks other people's writes, so reading is not enough.
    """
    if not facts.locked:
        return None
    ticket = context.valid
    granted = policy.granted(context.roles, ticket.kind if ticket is not None else None)
    updatable = {t for t, _c, action in granted if action == "update"}
    for table in sorted(facts.locked - updatable):
        name = table.rsplit(".", 1)[-1]
        return Denial(
            Reason.COLUMN_NOT_ALLOWED,
            f"A locking read (FOR UPDATE / FOR SHARE) of {name} needs a rule that lets "
            f"{_roles_text(context.roles)} update one of its columns.",
        )
    return None


def row_scope_bound(facts: Facts, context: Context, policy: Policy) -> Denial | None:
    """Every reference to a scoped table is bound to the ticket's customer (or product)."""
    ticket, problem = context.valid, context.ticket_problem
    for ref in facts.scopes:
        table = ref.table.rsplit(".", 1)[-1]
        if ticket is None:
            return problem or Denial(
                Reason.TICKET_REQUIRED,
                f"Reading {table} needs an open ticket about the {ref.scope} it belongs to.",
            )
        subject = _subject(context, ref.scope)
        if subject is None:
            return Denial(
                Reason.ROW_SCOPE_UNBOUND,
                f"Ticket {ticket.id} names no {ref.scope}, so no {table} row is in scope.",
            )
        denial = _bound_to(ref, subject, context, table, ticket.id)
        if denial is not None:
            return denial
    return None


def watchlist_respected(facts: Facts, context: Context, policy: Policy) -> Denial | None:
    """A watch-listed customer (or product) is read only under the ticket kinds listed for it."""
    watched = policy.watchlist.watched
    ticket = context.valid
    if not watched or ticket is None:
        return None
    for ref in facts.scopes:
        subject = _subject(context, ref.scope)
        entry = watched.get((ref.scope, subject)) if subject is not None else None
        if entry is not None and ticket.kind not in entry[0]:
            needed = " or ".join(sorted(entry[0]))
            return Denial(
                Reason.SUBJECT_WATCHED,
                f"The {ref.scope} of ticket {ticket.id} is on the watch-list ({entry[1]}): "
                f"reading it needs a {needed} ticket.",
            )
    return None


def rows_countable(facts: Facts, context: Context, policy: Policy) -> Denial | None:
    """No aggregate packs many rows of a scoped table into one result row (issue 23).

    The row limit and the access ledger count result rows: ``array_agg`` or
    ``string_agg`` over 2,003 orders returns one row, so both would count one.
    Whether the rows packed are few is not something the analysis can prove
    (the catalog names no keys), so such a statement is refused; the same
    aggregates over unscoped tables (the public catalogue) stay allowed.
    """
    if facts.packing:
        return Denial(
            Reason.AGGREGATE_PACKS_ROWS,
            f"{facts.packing[0]} would pack many rows of a customer's or product's data into "
            "one result row, which the row limit and the access ledger cannot count: "
            "select the rows themselves instead.",
        )
    return None


def masks_applicable(facts: Facts, context: Context, policy: Policy) -> Denial | None:
    """A column read only masked is read where its mask applies (``Policy.mask_problem``)."""
    ticket = context.valid
    kind = ticket.kind if ticket is not None else None
    problem = policy.mask_problem(context.roles, kind, facts.reads, facts.writes, facts.dialect)
    return Denial(Reason.COLUMN_MASKED, problem) if problem is not None else None


CHECKS: tuple[Check, ...] = (
    analyzable,
    params_match,
    statement_kind_allowed,
    grants_cover,
    masks_applicable,
    locks_granted,
    row_scope_bound,
    watchlist_respected,
    rows_countable,
)


# ---------------------------------------------------------------------- helpers


def valid_ticket(context: Context) -> tuple[Ticket | None, Denial | None]:
    """The ticket if it justifies access now, else None and why not."""
    return context.valid, context.ticket_problem


def _validate(
    user: str, ticket_id: str | None, ticket: Ticket | None
) -> tuple[Ticket | None, Denial | None]:
    if ticket_id is None:
        return None, None
    if ticket is None:
        return None, Denial(Reason.TICKET_UNKNOWN, f"Ticket {ticket_id} does not exist.")
    if not ticket.is_open:
        return None, Denial(
            Reason.TICKET_NOT_OPEN, f"Ticket {ticket.id} is {ticket.status}, not open."
        )
    if ticket.assignee != user:
        return None, Denial(
            Reason.TICKET_NOT_ASSIGNED, f"Ticket {ticket.id} is not assigned to {user}."
        )
    return ticket, None


def _subject(context: Context, scope: str) -> int | None:
    ticket = context.valid
    if ticket is None:
        return None
    value = getattr(ticket, SCOPE_KINDS[scope])
    return value if isinstance(value, int) else None


def _roles_text(roles: frozenset[str]) -> str:
    named = sorted(roles - {EVERYONE})
    return ", ".join(named) if named else EVERYONE


def _missing_grant(
    access: Access,
    context: Context,
    policy: Policy,
    ticket: Ticket | None,
    problem: Denial | None,
) -> Denial:
    table, column, action = access
    obj = f"{table.rsplit('.', 1)[-1]}.{column}"
    kinds = {
        k
        for k in policy.kinds_for.get(access, ())
        if k != NO_TICKET and any(access in policy.grants.get((r, k), ()) for r in context.roles)
    }
    roles = _roles_text(context.roles)
    if not kinds:
        return Denial(Reason.COLUMN_NOT_ALLOWED, f"No rule lets {roles} {action} {obj}.")
    needed = " or ".join(sorted(kinds))
    if ticket is None:
        if problem is not None:
            return Denial(
                problem.reason,
                f"{problem.message} {action.capitalize()} {obj} needs "
                f"an open {needed} ticket assigned to {context.user}.",
            )
        return Denial(
            Reason.TICKET_REQUIRED,
            f"To {action} {obj}, {context.user} needs an open {needed} ticket.",
        )
    return Denial(
        Reason.TICKET_WRONG_KIND,
        f"Ticket {ticket.id} is a {ticket.kind} ticket; {action} {obj} needs {needed}.",
    )


def _bound_to(
    ref: ScopeRef, subject: int, context: Context, table: str, ticket_id: str
) -> Denial | None:
    if not ref.values and ref.key is not None:
        return key_checkable(ref.key, context.params, table)
    if not ref.values:
        return Denial(
            Reason.ROW_SCOPE_UNBOUND,
            f"The statement can reach {table} rows of other {ref.scope}s: add a "
            f"condition {table}.<{ref.scope} id> = the {ref.scope} of ticket {ticket_id}.",
        )
    for value in ref.values:
        actual = _resolve(value, context.params)
        if actual is None:
            return Denial(
                Reason.ROW_SCOPE_UNBOUND,
                f"The {ref.scope} bound for {table} is not an integer the guard can check.",
            )
        if actual != subject:
            return Denial(
                Reason.ROW_SCOPE_OTHER_SUBJECT,
                f"The statement reads {table} rows of a {ref.scope} that ticket "
                f"{ticket_id} is not about.",
            )
    return None


def key_checkable(key: KeyBinding, params: Any, table: str) -> Denial | None:
    """A key-bound reference is allowed (its rows are probed) when every key value is an integer.

    Whether the rows belong to the ticket's subject is not decided here: the
    plan carries a probe the adapter runs before the statement is sent
    (``accessguard.engine.probes``); an adapter that cannot run it refuses.
    """
    for value in key.values:
        if _resolve(value, params) is None:
            return Denial(
                Reason.ROW_SCOPE_UNBOUND,
                f"The {key.column} bound for {table} is not an integer the guard can check.",
            )
    return None


def named_subjects(
    facts: Facts, params: Sequence[Any] | Mapping[Any, Any] | None
) -> tuple[tuple[str, int], ...]:
    """The (scope, id) pairs the statement binds its scoped tables to, resolved, sorted."""
    found = {
        (ref.scope, actual)
        for ref in facts.scopes
        for value in ref.values
        if (actual := _named(value, params)) is not None
    }
    return tuple(sorted(found))


def _named(value: Const | Param, params: Sequence[Any] | Mapping[Any, Any] | None) -> int | None:
    """The id a value names, for the trail only (never for a decision): a parameter bound as
    the text of a whole number ("42") or as a whole float (42.0) names customer 42 too, as the
    database compares it; otherwise a refused employee could name a customer unrecorded."""
    found = _resolve(value, params)
    if found is not None or not isinstance(value, Param) or params is None:
        return found
    try:
        raw = params[value.key] if isinstance(params, Mapping) else params[int(value.key)]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if isinstance(raw, str):
        text = raw.strip()
        digits = text[1:] if text[:1] in ("-", "+") else text
        if 0 < len(digits) <= 19 and digits.isascii() and digits.isdigit():
            return int(text)
        return None
    whole = (isinstance(raw, float) and math.isfinite(raw) and raw.is_integer()) or (
        isinstance(raw, Decimal) and raw.is_finite() and raw == raw.to_integral_value()
    )
    return int(raw) if whole else None


def _resolve(value: Const | Param, params: Sequence[Any] | Mapping[Any, Any] | None) -> int | None:
    if isinstance(value, Const):
        return value.value
    if params is None:
        return None
    try:
        raw = params[value.key] if isinstance(params, Mapping) else params[int(value.key)]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if isinstance(raw, bool) or not isinstance(raw, int):
        return None
    return int(raw)
