"""The hot path: one employee's statements, and the plans that let them run again cheaply.

A ``Lane`` is the guard's state for one employee on one ticket in one
dialect. ``Guard.lane`` hands out one per (employee, ticket, dialect) and
every adapter connection keeps its own for as long as it lives, so a
repeated statement costs one dictionary lookup and a few identity checks
before it is sent:

- the plan was made under the policy in force (a reload, or a new schema,
  makes a new policy object);
- the ticket the store returns now is the one the plan was decided with (a
  closed, reassigned or edited ticket is another value);
- every bound value that carries the row scope equals the ticket's subject.

Anything else goes to the guard's slow path (``Guard._fresh``), which
decides the statement afresh, audits a refusal and raises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from accessguard import metrics, telemetry
from accessguard.errors import AccessGuardError
from accessguard.ledger import Tally
from accessguard.plan import Params, Plan, params_shape, reorder

if TYPE_CHECKING:
    from accessguard.analysis import Facts
    from accessguard.decision import Context, Decision
    from accessguard.guard import Guard

#: psycopg's ``%s`` -> ``$n`` conversion (or any driver's), applied only to make a plan
Convert = Callable[[str, Any], tuple[str, list[Any]]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    """The employee a connection acts for, and the ticket they work under."""

    user: str
    ticket: str | None = None


class Authorized(NamedTuple):
    """What an adapter sends after an allow: the guarded SQL and its parameters.

    ``row_cap`` is the most rows the cursor may hand over; ``tally`` receives
    the rows it does hand over (the access ledger), when the statement touches
    a scoped table. Made on every statement, so the lane builds it with
    ``tuple.__new__`` (a call into C; a class's ``__init__`` is a Python frame).
    """

    sql: str
    params: Params
    plan: Plan
    row_cap: int | None
    tally: Tally | None

    @property
    def decision(self) -> Decision:
        return self.plan.decision

    @property
    def facts(self) -> Facts:
        return self.plan.facts

    @property
    def context(self) -> Context:
        return self.plan.context


_authorized = tuple.__new__


class Lane:
    """One employee on one ticket in one dialect: their plans, and the path that reuses them."""

    __slots__ = ("__weakref__", "dialect", "guard", "once", "plans", "session", "shapes")

    def __init__(self, guard: Guard, session: Session, dialect: str) -> None:
        self.guard = guard
        self.session = session
        self.dialect = dialect
        #: allowed plans by (statement text, parameters' shape)
        self.plans: dict[tuple[str, object], Plan] = {}
        #: plans of statements' literal-free shapes (see accessguard.analysis.shape)
        self.shapes: dict[tuple[str, object], Plan] = {}
        #: texts served once by a shape plan: a second time, they get a plan of their own
        self.once: dict[tuple[str, object], None] = {}
        telemetry.refresh()  # a tracer provider set since the last lane

    def authorize(self, sql: str, params: Params, convert: Convert | None = None) -> Authorized:
        """Decide one statement; on refusal audit and raise; on allow return what to send.

        ``convert`` (for positional parameters, which it leaves in order) is
        applied only when a plan must be made: a repeated statement skips it.
        """
        guard = self.guard
        policy = guard.policy  # one policy for the whole decision, even across a reload
        try:
            shape = len(params) if type(params) is list or type(params) is tuple else None
            if convert is not None and params is not None and shape is None:
                # not positional: convert now, so the plan and the values sent agree
                sql, params = guard._convert(convert, sql, params, self.session)
                shape, convert = len(params), None
            # the shape, and whether the driver converts the text: one text, two readings
            key = (sql, (shape if shape is not None else params_shape(params), convert is None))
            ticket_id = self.session.ticket
            ticket = guard.tickets.get(ticket_id) if ticket_id is not None else None
            plan = self.plans.get(key)
            if plan is not None and plan.holds(policy, ticket, params):
                sent = plan.sql  # the hot path: a repeated statement whose decision holds
            else:
                plan, sent, exact = guard._fresh(self, sql, params, ticket, policy, convert)
                if exact:
                    self.remember(self.plans, key, plan)
                elif key in self.once:  # a repeated text with inlined literals: skip shaping
                    self.remember(self.plans, key, plan.exactly(sent))
                else:
                    if len(self.once) >= guard._cache_size:
                        self.once.clear()
                    self.once[key] = None
        except AccessGuardError:
            raise
        except Exception:  # noqa: BLE001 - fail closed: an internal error denies, audited
            raise guard._failed(self.session, self.dialect) from None
        # what every allowed execution does, plan reused or new
        row_cap = guard._throttle(plan) if guard.throttle is not None else None
        if row_cap is not None and plan.facts.row_weight > 1:
            row_cap //= plan.facts.row_weight  # each result row carries that many rows
        metrics.DECISIONS.allowed()
        if telemetry.TRACER is not None:  # OpenTelemetry: only with a tracer provider
            telemetry.allowed(plan, self.dialect)
        if plan.notices:
            guard._notify(plan)
        if guard.audit_allowed:
            guard._audit(plan.decision, plan.context, plan.facts)
        tally = plan.tally
        if tally is not None:
            guard.ledger.record(tally)
        if params is not None and (shape is None or not plan.facts.in_order):
            params = reorder(plan.facts, params)  # else: positional, already in sent order
        return _authorized(Authorized, (sent, params, plan, row_cap, tally))

    def remember(
        self, table: dict[tuple[str, object], Plan], key: tuple[str, object], plan: Plan
    ) -> None:
        """Keep a plan in ``table`` (``plans`` or ``shapes``), within the guard's budget."""
        self.guard._count_plan()
        table[key] = plan

    def forget(self) -> None:
        """Drop every plan (the guard's budget is spent); the next statements re-plan."""
        self.plans.clear()
        self.shapes.clear()
        self.once.clear()
