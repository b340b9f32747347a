"""The hot path: one employee's statements, and the plans that let them run again cheaply.

A ``Lane`` is the guard's state for one employee on one ticket in one
dialect. ``Gate.lane`` hands out one per (employee, ticket, dialect) and
every adapter connection keeps its own for as long as it lives, so a
repeated statement costs one dictionary lookup and a few identity checks
before it is sent:

- the plan was made under the policy in force (a reload, or a new schema,
  makes a new policy object);
- the ticket the store returns now is the one the plan was decided with (a
  closed, reassigned or edited ticket is another value);
- every bound value that carries the row scope equals the ticket's subject.

Anything else goes to the guard's slow path (``Gate.fresh``), which
decides the statement afresh, audits a refusal and raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from accessguard import metrics
from accessguard.engine import telemetry
from accessguard.engine.breakglass import BreakGlass, is_elevation
from accessguard.engine.plan import (
    Authorized,
    Convert,
    Params,
    Plan,
    Session,
    authorized,
    params_shape,
    reorder,
)
from accessguard.engine.probes import prepare
from accessguard.errors import AccessGuardError, Reason
from accessguard.tickets.stores import TicketStoreUnavailable

if TYPE_CHECKING:
    from accessguard.analysis import Facts
    from accessguard.audit.ledger import Ledger
    from accessguard.decision import Context, Decision
    from accessguard.errors import AccessDenied
    from accessguard.policy.rules import Policy
    from accessguard.throttle.window import Throttle
    from accessguard.tickets.stores import Ticket, TicketStore

_new = object.__new__

__all__ = ["Authorized", "Convert", "Ended", "Gatekeeper", "Lane", "Session", "authorized"]


class Gatekeeper(Protocol):
    """What a lane needs of the gate (``Gate`` is one): the slow path, limits, refusals."""

    @property
    def policy(self) -> Policy: ...

    @property
    def tickets(self) -> TicketStore: ...

    @property
    def breakglass(self) -> BreakGlass: ...

    @property
    def throttle(self) -> Throttle | None: ...

    @property
    def ledger(self) -> Ledger: ...

    @property
    def audit_allowed(self) -> bool: ...

    @property
    def cache_size(self) -> int: ...

    @property
    def closed(self) -> bool: ...

    def fresh(  # noqa: PLR0913, PLR0917 - one decision's inputs
        self,
        lane: Lane,
        sql: str,
        params: Params,
        ticket: Ticket | None,
        policy: Policy,
        convert: Convert | None,
    ) -> tuple[Plan, str, bool]: ...

    def convert_params(
        self,
        convert: Callable[[str, Any], tuple[str, list[Any]]],
        sql: str,
        params: Params,
        session: Session,
    ) -> tuple[str, list[Any]]: ...

    def count_plan(self) -> None: ...

    def refuse_unreadable(
        self, sql: str | bytes, session: Session, *, placeholders: bool = False
    ) -> None: ...

    def count_against_limits(self, plan: Plan) -> int | None: ...

    def notify(self, plan: Plan) -> None: ...

    def failed(self, session: Session, dialect: str) -> AccessDenied: ...

    def ticket_store_down(self, session: Session, dialect: str) -> AccessDenied: ...

    def refuse(
        self,
        reason: Reason,
        message: str,
        session: Session,
        *,
        kind: str,
        dialect: str = "postgres",
    ) -> AccessDenied: ...

    def audit(  # noqa: PLR0913 - keyword-only details of throttle events
        self,
        decision: Decision,
        context: Context,
        facts: Facts | None,
        *,
        dialect: str = "postgres",
        window: int | None = None,
        count: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None: ...


class Lane:
    """One employee on one ticket in one dialect: their plans, and the path that reuses them."""

    __slots__ = (
        "__weakref__",
        "dialect",
        "elevated",
        "guard",
        "once",
        "plans",
        "session",
        "shapes",
    )

    def __init__(self, guard: Gatekeeper, session: Session, dialect: str) -> None:
        self.guard = guard
        self.session = session
        self.dialect = dialect
        #: allowed plans by (statement text, parameters' shape)
        self.plans: dict[tuple[str, object], Plan] = {}
        #: plans of statements' literal-free shapes (see accessguard.analysis.shape)
        self.shapes: dict[tuple[str, object], Plan] = {}
        #: texts served once by a shape plan: a second time, they get a plan of their own
        self.once: dict[tuple[str, object], None] = {}
        #: the session's ticket names a break-glass elevation: looked up in its store
        self.elevated = is_elevation(session.ticket)
        telemetry.refresh()  # a tracer provider set since the last lane

    def authorize(  # noqa: PLR0915 - the hot path stays one frame on purpose
        self,
        sql: str,
        params: Params,
        convert: Convert | None = None,
        *,
        probing: bool = False,
    ) -> Authorized:
        """Decide one statement; on refusal audit and raise; on allow return what to send.

        ``convert`` (for positional parameters, which it leaves in order) is
        applied only when a plan must be made: a repeated statement skips it.
        ``probing``: the caller runs ``Authorized.probe`` before sending
        (``accessguard.engine.probes``); without it a key-bound statement is refused.
        """
        guard = self.guard
        if guard.closed:  # its ledger no longer records: refuse rather than run unaccounted
            raise guard.refuse(
                Reason.GUARD_CLOSED,
                "Refused: the guard was closed; open a new one.",
                self.session,
                kind="unknown",
                dialect=self.dialect,
            )
        policy = guard.policy  # one policy for the whole decision, even across a reload
        try:
            shape = len(params) if type(params) is list or type(params) is tuple else None
            if convert is not None and params is not None and shape is None:
                # not positional: convert now, so the plan and the values sent agree
                sql, params = guard.convert_params(convert, sql, params, self.session)
                shape, convert = len(params), None
            # the shape, and whether the driver converts the text: one text, two readings
            key = (sql, (shape if shape is not None else params_shape(params), convert is None))
            ticket_id = self.session.ticket
            if ticket_id is None:
                ticket = None
            elif self.elevated:
                ticket = guard.breakglass.ticket(ticket_id)
            else:
                ticket = guard.tickets.get(ticket_id)
            plan = self.plans.get(key)
            if plan is not None and plan.holds(policy, ticket, params):
                sent = plan.sql  # the hot path: a repeated statement whose decision holds
            else:
                plan, sent, exact = guard.fresh(self, sql, params, ticket, policy, convert)
                if exact:
                    self.remember(self.plans, key, plan)
                elif key in self.once:  # a repeated text with inlined literals: skip shaping
                    self.remember(self.plans, key, plan.exactly(sent))
                else:
                    if len(self.once) >= guard.cache_size:
                        self.once.clear()
                    self.once[key] = None
        except AccessGuardError:
            raise
        except TicketStoreUnavailable:
            raise guard.ticket_store_down(self.session, self.dialect) from None
        except Exception:  # noqa: BLE001 - fail closed: an internal error denies, audited
            raise guard.failed(self.session, self.dialect) from None
        # what every allowed execution does, plan reused or new
        probe = None if plan.probes is None else prepare(guard, plan, params, probing=probing)
        row_cap = guard.count_against_limits(plan) if guard.throttle is not None else None
        tally = plan.tally
        if probe is None:  # a probed statement's, when its probe passes (probes.allowed)
            metrics.DECISIONS.allowed()
            if telemetry.TRACER is not None:  # OpenTelemetry: only with a tracer provider
                telemetry.allowed(plan, self.dialect)
            if plan.notices:
                guard.notify(plan)
            if guard.audit_allowed:
                guard.audit(plan.decision, plan.context, plan.facts)
            if tally is not None:
                guard.ledger.record(tally)
        if params is not None and (shape is None or not plan.facts.in_order):
            params = reorder(plan.facts, params)  # else: positional, already in sent order
        ok = _new(Authorized)  # what authorized() does, inline: this is every statement's path
        ok.sql = sent
        ok.params = params
        ok.plan = plan
        ok.row_cap = row_cap
        ok.tally = tally
        ok.probe = probe
        ok.handed = 0
        ok.withheld = False
        return ok

    def kept(self, sql: str, params: Params, convert: Convert | None = None) -> bool:
        """Whether ``authorize`` would find a plan for this statement: one dictionary lookup.

        No decision and no I/O: the async adapters ask it to decide on the event
        loop only what the hot path can serve (the key is ``authorize``'s).
        """
        if type(params) is list or type(params) is tuple:
            shape: object = len(params)
        elif convert is not None and params is not None:
            return False  # converted before its plan is looked up
        else:
            shape = params_shape(params)
        return (sql, (shape, convert is None)) in self.plans

    def remember(
        self, table: dict[tuple[str, object], Plan], key: tuple[str, object], plan: Plan
    ) -> None:
        """Keep a plan in ``table`` (``plans`` or ``shapes``), within the guard's budget."""
        self.guard.count_plan()
        table[key] = plan

    def forget(self) -> None:
        """Drop every plan (the guard's budget is spent); the next statements re-plan."""
        self.plans.clear()
        self.shapes.clear()
        self.once.clear()


class Ended(Lane):
    """The lane of a session that ended (a pooled checkout returned): every statement refused.

    Put in place of a connection's and its cursors' lanes when the session
    ends, so a reference kept past it refuses (audited) instead of running on
    a backend that now serves someone else; the live path pays nothing for it.
    """

    __slots__ = ()

    def authorize(
        self,
        sql: str,  # noqa: ARG002 - Lane.authorize's signature
        params: Params,  # noqa: ARG002
        convert: Convert | None = None,  # noqa: ARG002
        *,
        probing: bool = False,  # noqa: ARG002
    ) -> Authorized:
        raise self.guard.refuse(
            Reason.SESSION_RETURNED,
            "Refused: this connection was returned to the pool; check out another one.",
            self.session,
            kind="unknown",
            dialect=self.dialect,
        )
