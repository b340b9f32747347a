"""The engine's values: plans, the probes they carry, sessions and authorized statements.

Plans are allowed statements remembered per employee, ticket and parameter shape.

A plan holds what an allowed decision needs on the next execution: the SQL to
send, the parameter keys whose values carry the row scope (re-checked every
time), the ledger accesses and the audit notices. Pure data and small helpers;
the guard makes and keeps them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from accessguard.analysis import Facts
from accessguard.analysis.facts import Value
from accessguard.audit.ledger import Tally
from accessguard.decision import Context, Decision
from accessguard.policy.rules import Policy
from accessguard.tickets.stores import Ticket

Params = Sequence[Any] | Mapping[str, Any] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Probe:
    """Rows of ``table`` whose ``column`` is one of ``values``: all must be ``subject``'s."""

    table: str
    column: str
    scope_column: str
    scope: str
    values: tuple[Value, ...]
    subject: int
    #: a relation probe (no values): ``column`` in the ``within`` column of the subject's
    #: rows of another table, as (qualified table, column, scope column)
    within: tuple[str, str, str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Probes:
    """Every probe of one plan, as one statement (one round trip).

    ``keys``: what each placeholder takes, in order: a statement's Value, or
    the subject (an int). ``unbound``: the refusal's words where an adapter
    cannot probe.
    """

    probes: tuple[Probe, ...]
    keys: tuple[Value | int, ...]
    format_sql: str
    qmark_sql: str
    unbound: str


class Pending(NamedTuple):
    """A probe ready to run: its SQL in both placeholder styles and its values."""

    probes: Probes
    values: list[int]


class Unverified(Exception):
    """PostgreSQL's parser does not read the SQL to send as the second wall promises."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """An allowed statement for one employee and ticket, ready to send again."""

    #: the policy it was decided by: a reload (or a new schema) makes a new one
    policy: Policy
    facts: Facts
    decision: Decision
    context: Context
    ticket: Ticket | None
    kind: str | None
    sql: str
    #: (parameter key, subject id) pairs that must hold on every execution
    checks: tuple[tuple[int | str, int], ...]
    #: the ledger handle of its accesses; None when it touches no scoped table
    tally: Tally | None
    customers: frozenset[int]
    #: audit events every execution writes (shadow denials, watch-list and canary reads)
    notices: tuple[Decision, ...] = ()
    #: rows named by a key only, probed before every execution (accessguard.engine.probes)
    probes: Probes | None = None

    def exactly(self, sent: str) -> Plan:
        """This shape plan as the plan of one statement text, whose SQL to send is ``sent``.

        The checks of the text's literals held when its shape was found, under
        this plan's ticket; the text's literals never change, and ``holds``
        still requires that ticket: only the bound parameters' checks remain.
        """
        checks = tuple(
            (key, subject)
            for key, subject in self.checks
            if not (isinstance(key, str) and key.startswith("#"))
        )
        return replace(self, sql=sent, checks=checks)

    def holds(self, policy: Policy, ticket: Ticket | None, params: Params) -> bool:
        """Whether its decision still applies under ``policy``, to ``ticket`` and ``params``."""
        if policy is not self.policy:
            return False
        if ticket is not self.ticket and ticket != self.ticket:
            return False
        for key, subject in self.checks:
            value = params[key]  # type: ignore[index] # checks exist only when params do
            if type(value) is not int or value != subject:
                return False
        return True


def combine(params: Params, literals: Mapping[str, Any]) -> dict[Any, Any]:
    """Bound values and lifted literals in one mapping, keyed like the facts' Params."""
    if params is None:
        return dict(literals)
    if isinstance(params, Mapping):
        return {**params, **literals}
    return {**dict(enumerate(params)), **literals}


def params_shape(params: Params) -> object:
    if params is None:
        return None
    if type(params) is list or type(params) is tuple or not isinstance(params, Mapping):
        return len(params)
    return tuple(params)


def reorder(facts: Facts, params: Params) -> Params:
    """The bound values in the order the sent SQL uses them."""
    if params is None:
        return None
    if facts.in_order and (type(params) is list or type(params) is tuple):
        return params
    if isinstance(params, Mapping):
        return {str(k): params[str(k)] for k in facts.param_order}
    return [params[int(k)] for k in facts.param_order]


_new = object.__new__

#: psycopg's ``%s`` -> ``$n`` conversion (or any driver's), applied only to make a plan
Convert = Callable[[str, Any], tuple[str, list[Any]]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    """The employee a connection acts for, and the ticket they work under."""

    user: str
    ticket: str | None = None


class Authorized:
    """One allowed statement: what to send, and the gate its rows pass on the way out.

    Made by the lane at authorization, one per statement (one per parameter
    set of an ``executemany``), and bound by the adapter to the result it
    belongs to: a cursor's current result, a stream, one result set of a
    batch. ``row_cap`` is the most rows it may hand over; ``tally`` (when it
    touches a scoped table) receives the rows it does hand over, for the
    access ledger. It does no I/O: ``take`` only counts and says yes or no;
    the adapter raises the refusal (``Gate.over_row_cap``).

    ``probe``: what the adapter runs before sending (``probes.run``) when the
    statement names rows by a key only; the ledger access is then recorded
    when the probe passes.

    Made on every statement, so the lane builds it with ``object.__new__`` and
    plain slot stores (a class's ``__init__`` would be one more Python frame).
    """

    __slots__ = ("handed", "params", "plan", "probe", "row_cap", "sql", "tally", "withheld")

    sql: str
    params: Params
    plan: Plan
    row_cap: int | None
    tally: Tally | None
    #: the probe to run before sending (key-bound statements), else None
    probe: Pending | None
    #: rows handed over so far
    handed: int
    #: refused after it ran (over its cap, or the ledger closed): nothing more is handed over
    withheld: bool

    @property
    def decision(self) -> Decision:
        return self.plan.decision

    @property
    def facts(self) -> Facts:
        return self.plan.facts

    @property
    def context(self) -> Context:
        return self.plan.context

    def take(self, n: int) -> bool:
        """Count ``n`` rows about to be handed over; False (withheld from now on) if they may not.

        They may not past the row cap, nor once the ledger that would count
        them is closed (``Gate.close``).
        """
        handed = self.handed + n
        cap = self.row_cap
        if cap is not None and handed > cap:
            self.withheld = True
            return False
        tally = self.tally
        if tally is not None and n > 0:
            if tally.ledger.closed:
                self.withheld = True
                return False
            tally.add(n)
        self.handed = handed
        return True


def authorized(  # noqa: PLR0913 - one statement's parts, by keyword
    *,
    sql: str,
    params: Params,
    plan: Plan,
    row_cap: int | None = None,
    tally: Tally | None = None,
    withheld: bool = False,
    probe: Pending | None = None,
) -> Authorized:
    """An ``Authorized`` built field by field: the lane's fast construction, and sentinels'."""
    ok = _new(Authorized)
    ok.sql = sql
    ok.params = params
    ok.plan = plan
    ok.row_cap = row_cap
    ok.tally = tally
    ok.probe = probe
    ok.handed = 0
    ok.withheld = withheld
    return ok
