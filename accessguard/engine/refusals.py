"""The audited refusals of the gate, and the binding of employees to sessions.

Every way a statement is refused ends here: an audit event is written (the
``event.*`` fields of ``accessguard.engine.events``) before the error is
returned or raised, so nothing is refused silently. ``Gate`` inherits these;
adapters call them for the paths they never let through (COPY, pipelines,
forbidden hooks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from accessguard import metrics
from accessguard.analysis import Facts, as_text, screen_placeholders, unanalyzable
from accessguard.decision import Context, Decision
from accessguard.engine import events, telemetry
from accessguard.engine.breakglass import is_elevation
from accessguard.engine.config import Configured
from accessguard.engine.lane import Session
from accessguard.errors import AccessDenied, AuditError, ConfigurationError, Reason, Throttled
from accessguard.tickets.stores import TicketStoreUnavailable

if TYPE_CHECKING:
    from accessguard.audit.ledger import Access
    from accessguard.engine.lane import Authorized
    from accessguard.engine.plan import Plan

__all__ = ["Refusals", "binding_problem"]


class Refusals(Configured):
    """Audit, then refuse: the gate's refusals and its employee bindings."""

    def failed(self, session: Session, dialect: str) -> AccessDenied:
        """Audit a decision the guard could not finish (an internal error); return the error."""
        return self.refuse(
            Reason.INTERNAL_ERROR,
            "Refused: the guard failed while deciding.",
            session,
            kind="unknown",
            dialect=dialect,
        )

    def refuse_unreadable(
        self, sql: str | bytes, session: Session, *, placeholders: bool = False
    ) -> None:
        """Raise the audited refusal of a text no scan may read; return if it may be read.

        For adapters, before anything of theirs scans the text: too long, not
        valid text (bytes: not UTF-8), or with ``placeholders`` (psycopg's
        conversion to run next) too many unclosed ``%(``. ``AccessDenied``
        with ``sql.unanalyzable``, after one audit event.
        """
        text, problem = as_text(sql)
        if problem is None and placeholders:
            problem = screen_placeholders(text)
        if problem is not None:
            refused = self.unscreened(text, problem, session)
            raise AccessDenied(refused.message, reason=Reason.SQL_UNANALYZABLE)

    def ticket_store_down(self, session: Session, dialect: str) -> AccessDenied:
        """Audit a statement refused because its ticket's store cannot answer; return the error."""
        return self.refuse(
            Reason.TICKET_STORE_UNAVAILABLE,
            f"Refused: the ticket system cannot say now whether ticket {session.ticket} is open.",
            session,
            kind="unknown",
            dialect=dialect,
        )

    def unscreened(self, sql: str, problem: str, session: Session) -> Decision:
        """Audit the refusal of a statement no scan may read (``problem``); return it."""
        decision = Decision(
            outcome="denied",
            reason=Reason.SQL_UNANALYZABLE,
            message=f"Refused: {problem}.",
            kind="unknown",
        )
        context = Context(
            user=session.user,
            roles=self.policy.roles_of(session.user),
            ticket_id=session.ticket,
            ticket=None,
        )
        self.audit(decision, context, unanalyzable(sql, problem, dialect="postgres"))
        return decision

    def notify(self, plan: Plan) -> None:
        """Audit what an allowed statement must not do silently: shadow denials, watched reads."""
        for notice in plan.notices:
            extra: dict[str, Any] = {}
            if notice.limit == "shadow":
                extra = {
                    "accessguard.shadow.outcome": "denied",
                    "accessguard.shadow.reason": str(notice.reason),
                    "accessguard.shadow.version": self.shadow.version if self.shadow else None,
                    "message": f"would deny: {notice.message}",
                }
            elif notice.limit == "elevation":  # the event is critical, with the elevation id
                extra = {"accessguard.elevation.statement": True}
            else:
                extra = {"accessguard.watch": notice.limit}
                if notice.limit == "canary":
                    extra |= {"event.kind": "alert", "log.level": "critical"}
            self.audit(replace(notice, limit=None), plan.context, plan.facts, extra=extra)

    def over_row_cap(self, ok: Authorized, count: int) -> Throttled:
        """Audit a statement whose result passed its row cap; return the error to raise."""
        limit = f"rows_per_statement: {ok.row_cap}"
        weight = ok.plan.facts.row_weight
        if weight <= 1:
            message = (
                f"Throttled: the statement returns more than {ok.row_cap} rows of a "
                "scoped table; narrow it down."
            )
        else:  # the cap was divided by the weight (Gate.row_cap): say why it is so small
            message = (
                f"Throttled: each row of this result carries {weight} rows of a scoped table "
                "(a pivot, a count of chosen rows, a subquery that fills or chooses its rows), "
                "so it may return "
                f"at most {ok.row_cap} rows; narrow it down."
            )
        refused = replace(
            ok.decision,
            outcome="throttled",
            reason=Reason.THROTTLE_ROWS,
            message=message,
            limit=limit,
        )
        self.audit(refused, ok.context, ok.facts, count=count)
        return Throttled(message, reason=Reason.THROTTLE_ROWS, limit=limit)

    def recheck(self, ok: Authorized, session: Session, dialect: str) -> None:
        """Raise (audited) unless the ticket ``ok`` was allowed under still justifies its rows.

        For a server-side cursor, whose every fetch is a round trip for rows the
        server is still producing: a ticket closed, reassigned or unknown since,
        an elevation revoked or expired, or a ticket now of another kind or about
        another subject, and the rows not yet handed over are withheld. The same
        ticket (unchanged) costs one lookup in its store.
        """
        ticket_id = session.ticket
        if ticket_id is None:
            return
        try:
            if is_elevation(ticket_id):
                ticket = self.breakglass.ticket(ticket_id)
            else:
                ticket = self.tickets.get(ticket_id)
        except TicketStoreUnavailable:
            ok.withheld = True
            raise self.ticket_store_down(session, dialect) from None
        then = ok.plan.ticket
        if ticket is then or ticket == then:
            return
        ok.withheld = True
        context = Context(
            user=session.user,
            roles=self.policy.roles_of(session.user),
            ticket_id=ticket_id,
            ticket=ticket,
        )
        problem = context.ticket_problem
        if problem is not None:
            reason, message = problem.reason, problem.message
        elif ticket is not None and then is not None and ticket.kind != then.kind:
            reason = Reason.TICKET_WRONG_KIND
            message = f"Ticket {ticket_id} changed its kind while the statement was fetched."
        else:
            reason = Reason.ROW_SCOPE_OTHER_SUBJECT
            message = f"Ticket {ticket_id} is about another subject since the statement ran."
        refused = replace(ok.decision, outcome="denied", reason=reason, message=message)
        self.audit(refused, context, ok.facts, dialect=dialect)
        raise AccessDenied(message, reason=reason)

    def refuse(
        self,
        reason: Reason,
        message: str,
        session: Session,
        *,
        kind: str,
        dialect: str = "postgres",
    ) -> AccessDenied:
        """Audit a refusal decided by an adapter (a path it never guards); return the error."""
        decision = Decision(outcome="denied", reason=reason, message=message, kind=kind)
        context = Context(
            user=session.user,
            roles=self.policy.roles_of(session.user),
            ticket_id=session.ticket,
            ticket=None,
        )
        self.audit(decision, context, None, dialect=dialect)
        return AccessDenied(message, reason=reason)

    # ------------------------------------------------------------------ audit

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
    ) -> None:
        metrics.DECISIONS.decided(decision.outcome, str(decision.reason or ""))
        if decision.outcome == "throttled":
            metrics.THROTTLED.labels(reason=str(decision.reason)).inc()
        fields = events.decision_event(
            decision,
            context,
            facts,
            policy_version=self.policy.version,
            pseudonym=self.ledger.pseudonym,
            dialect=dialect,
            window=window,
            count=count,
            extra=extra,
        )
        telemetry.refused(fields)
        self.auditor.emit(**fields)
        self.alerter.observe(fields)

    def ledger_refused(self, accesses: tuple[Access, ...], error: AuditError) -> None:
        """Audit a statement refused because the ledger cannot be written (best effort)."""
        fields = events.ledger_refused_event(accesses[0], error)
        telemetry.refused(fields)
        with contextlib.suppress(AuditError):  # the audit sink is down too: still refused
            self.auditor.emit(**fields)

    # ------------------------------------------------------------------ sessions

    def bind(self, user: object, ticket: object = None) -> Session:
        """The session of ``user`` on ``ticket``, or an audited refusal.

        ``user`` must be an employee's name: a non-empty string of valid text
        (None, "", blanks or another type would bind an anonymous employee);
        ``ticket`` a ticket id or None. Else ``ConfigurationError`` with
        ``session.unbound``, after one audit event (that names neither).
        """
        problem = binding_problem(user, ticket)
        if problem is None:
            return Session(user=user, ticket=ticket)  # type: ignore[arg-type] # checked above
        message = f"Refused: {problem}; bind an employee by name (user=...)."
        decision = Decision(
            outcome="denied", reason=Reason.SESSION_UNBOUND, message=message, kind="unknown"
        )
        context = Context(user="", roles=frozenset(), ticket_id=None, ticket=None)
        self.audit(decision, context, None, extra={"user.name": None})
        raise ConfigurationError(message, reason=Reason.SESSION_UNBOUND)

    @contextmanager
    def acting_as(self, *, user: str, ticket: str | None = None) -> Iterator[Session]:
        """Bind the employee for this context (thread or asyncio task) and what it calls.

        Instrumented sessions (SQLAlchemy, Django, pools) take the employee from
        here; nested bindings restore the outer one on exit.
        """
        token = self._bound.set(self.bind(user, ticket))
        try:
            yield self._bound.get()  # type: ignore[misc] # set just above
        finally:
            self._bound.reset(token)

    def current_session(self) -> Session:
        """The employee bound by ``acting_as``; ConfigurationError when none is."""
        session = self._bound.get()
        if session is None:
            raise ConfigurationError(
                "No employee is bound: wrap the work in guard.acting_as(user=..., ticket=...).",
                reason=Reason.SESSION_UNBOUND,
            )
        return session


def binding_problem(user: object, ticket: object) -> str | None:
    """Why ``user`` and ``ticket`` cannot be bound (see ``Refusals.bind``); None if they can."""
    if not isinstance(user, str) or not user.strip():
        return "no employee is named (the user is None, empty or not a string)"
    if ticket is not None and (not isinstance(ticket, str) or not ticket.strip()):
        return "the ticket is not a ticket id (a non-empty string, or None)"
    for text in (user, ticket):
        if isinstance(text, str) and not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return "the employee or ticket name is not valid text"
    return None
