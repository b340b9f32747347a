"""Plans: allowed statements remembered per employee, ticket and parameter shape.

A plan holds what an allowed decision needs on the next execution: the SQL to
send, the parameter keys whose values carry the row scope (re-checked every
time), the ledger accesses and the audit notices. Pure data and small helpers;
the guard makes and keeps them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from accessguard.analysis import Facts
from accessguard.audit.ledger import Tally
from accessguard.decision import Context, Decision
from accessguard.engine.probes import Probes
from accessguard.policy.rules import Policy
from accessguard.tickets.stores import Ticket

Params = Sequence[Any] | Mapping[str, Any] | None


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
