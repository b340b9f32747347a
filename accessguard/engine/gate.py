"""The gate: the one place that performs effects.

It looks tickets up, runs the pure analysis and decision, writes the audit
event for every refusal, and raises. Adapters (psycopg, DB-API) call
``authorize`` before anything reaches the server and send what it returns.
``accessguard.guard.Guard`` adds the connection factories on top; the gate
imports no adapter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from accessguard import metrics
from accessguard.analysis import (
    Facts,
    analyze,
    as_text,
    fingerprint,
    redact_tokens,
    render,
    screen,
    screen_placeholders,
    shape,
    with_redaction,
)
from accessguard.analysis.rewrite import mask_texts
from accessguard.analysis.shape import literals_bare, quick_shape
from accessguard.decision import Context, Decision, decide
from accessguard.engine.breakglass import is_elevation
from accessguard.engine.config import LIMITS_FILE
from accessguard.engine.lane import Authorized, Convert, Lane, Session
from accessguard.engine.plan import Params, Plan, Unverified, combine, params_shape
from accessguard.engine.planning import build_plan
from accessguard.engine.probes import keyed, unprobed, with_literals
from accessguard.engine.refusals import Refusals
from accessguard.errors import (
    AccessDenied,
    AccessGuardError,
    Reason,
    Throttled,
)
from accessguard.policy.masking import NO_MASKING, Masking
from accessguard.policy.rules import Policy
from accessguard.throttle.window import ThrottleStoreUnavailable
from accessguard.tickets.stores import Ticket, TicketStoreUnavailable

if TYPE_CHECKING:
    pass


__all__ = ["LIMITS_FILE", "Authorized", "Gate", "Session"]


class Gate(Refusals):
    """Checks every statement against the policy and the employee's ticket."""

    # ------------------------------------------------------------------ deciding

    def analyze(  # noqa: PLR0913 - keyword-only options
        self,
        sql: str | bytes,
        *,
        dialect: str = "postgres",
        params: bool = False,
        policy: Policy | None = None,
        sending: bool = True,
        masking: Masking = NO_MASKING,
    ) -> Facts:
        """Facts for ``sql``, cached by its text (and the schema version, and the masks).

        ``sending=False``: for a decision only (see ``accessguard.analysis.analyze``).
        ``masking``: the columns the SQL sent reads masked (``accessguard.policy.masking``).
        """
        catalog = (policy or self.policy).catalog
        if not isinstance(sql, str) or screen(sql) is not None:  # refused, never cached
            return analyze(sql, catalog=catalog, dialect=dialect)
        key = (sql, dialect, params, catalog.version, sending, masking.columns)
        facts = self._cache.get(key)
        if facts is not None:
            return facts
        started = time.perf_counter()
        facts = analyze(
            sql, catalog=catalog, dialect=dialect, params=params, sending=sending, masking=masking
        )
        metrics.ANALYSIS.observe(time.perf_counter() - started)
        with self._lock:
            self._cache[key] = facts
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return facts

    def check(
        self,
        sql: str | bytes,
        params: Params = None,
        *,
        user: str,
        ticket: str | None = None,
        dialect: str = "postgres",
    ) -> Decision:
        """Decide without a database. Nothing is sent, nothing is counted against
        the volume limits or the ledger; like every refusal, a refused decision
        writes one audit event.

        ``sql`` uses the dialect's native placeholders (``$1`` for PostgreSQL,
        ``?`` for SQLite) or psycopg's ``%s`` / ``%(name)s`` when ``params`` are
        given for PostgreSQL. A statement bound only by a key
        (``WHERE orders.id = 421``) is refused ``row_scope.unbound`` here: a
        guarded connection allows it only after probing the database
        (``accessguard.engine.probes``), and check has no database. Bytes are read
        as UTF-8; a statement that is too long or not valid text is refused
        (``sql.unanalyzable``) before any scan.
        A ``user`` that is None, empty or not a string is refused
        (``ConfigurationError``, ``session.unbound``), audited.
        """
        session = self.bind(user, ticket)
        text, unscreened = as_text(sql)
        if unscreened is None:
            sql = text
        else:
            params = None  # nothing of it is read, the placeholders neither: analyze refuses it
        if dialect == "postgres" and params is not None:
            unread = screen_placeholders(text)
            if unread is not None:
                return self.unscreened(text, unread, session)
            from accessguard.engine.paramstyle import convert_query

            try:
                sql, params = convert_query(text, params)
            except Exception:  # noqa: BLE001 - any conversion error is this refusal
                message = "Refused: the placeholders do not match the values bound to them."
                self.refuse(Reason.SQL_PARAMS_MISMATCH, message, session, kind="unknown")
                return Decision(
                    outcome="denied", reason=Reason.SQL_PARAMS_MISMATCH, message=message
                )
        try:
            found = self.find_ticket(ticket)
            facts, decision, context = self._decide(
                sql, params, session, dialect, found, self.policy, sending=False
            )
            if decision.allowed and keyed(facts):  # no database to probe: as an adapter without
                decision = unprobed(facts, decision, context, self.policy.catalog)
        except TicketStoreUnavailable:
            refused = self.ticket_store_down(session, dialect)
            reason = Reason.TICKET_STORE_UNAVAILABLE
            return Decision(outcome="denied", reason=reason, message=refused.message)
        except AccessGuardError:
            raise
        except Exception:  # noqa: BLE001 - fail closed: an internal error denies
            decision = Decision(
                outcome="denied",
                reason=Reason.INTERNAL_ERROR,
                message="Refused: the guard failed while deciding.",
            )
            self.refuse(
                Reason.INTERNAL_ERROR, decision.message, session, kind="unknown", dialect=dialect
            )
            return decision
        if not decision.allowed:
            self.audit(decision, context, with_redaction(facts, sql))
        return decision

    def find_ticket(self, ticket_id: str | None) -> Ticket | None:
        """The ticket ``ticket_id`` names now: the ticket store's, or an elevation's (``BG-``).

        Raises ``TicketStoreUnavailable`` when the store cannot answer.
        """
        if ticket_id is None:
            return None
        if is_elevation(ticket_id):
            return self.breakglass.ticket(ticket_id)
        return self.tickets.get(ticket_id)

    def _decide(  # noqa: PLR0913, PLR0917 - one decision's inputs
        self,
        sql: str | bytes,
        params: Params,
        session: Session,
        dialect: str,
        ticket: Ticket | None,
        policy: Policy,
        *,
        escape: bool | None = None,
        sending: bool = True,
    ) -> tuple[Facts, Decision, Context]:
        context = Context(
            user=session.user,
            roles=policy.roles_of(session.user),
            ticket_id=session.ticket,
            ticket=ticket,
            params=params,
        )
        escape = params is not None if escape is None else escape
        masking = self.masking(policy, context) if sending else NO_MASKING
        facts = self.analyze(
            sql, dialect=dialect, params=escape, policy=policy, sending=sending, masking=masking
        )
        started = time.perf_counter()
        decision = decide(facts, context, policy)
        metrics.DECIDE.observe(time.perf_counter() - started)
        return facts, decision, context

    def masking(self, policy: Policy, context: Context) -> Masking:
        """The masks the employee's reads go through under ``context`` (with this guard's key)."""
        valid = context.valid
        columns = policy.masks_for(context.roles, valid.kind if valid is not None else None)
        return Masking(columns, self._mask_key) if columns else NO_MASKING

    def authorize(  # noqa: PLR0913 - keyword-only options
        self,
        sql: str,
        params: Params,
        session: Session,
        *,
        dialect: str,
        convert: Convert | None = None,
        probing: bool = False,
    ) -> Authorized:
        """Decide; on refusal audit and raise; on allow return what to send.

        The hot path: an allowed statement is remembered as a plan of the
        employee's lane (``Gate.lane``), keyed by its text and the
        parameters' shape. The next execution reuses the plan only if the
        policy and the ticket are unchanged (a closed or reassigned ticket is a
        different value) and every bound value that carries the row scope
        still equals the ticket's subject; otherwise it is decided afresh.

        ``convert`` (psycopg's ``%s`` -> ``$n`` conversion, for positional
        parameters, which it leaves in order) is applied only when the plan
        must be made: a repeated statement skips it. ``probing``: the caller
        runs the returned ``probe`` before sending (``accessguard.engine.probes``).
        """
        try:
            lane = self.lane(session, dialect)
        except AccessGuardError:
            raise
        except Exception:  # noqa: BLE001 - fail closed: an internal error denies, audited
            raise self.failed(session, dialect) from None
        return lane.authorize(sql, params, convert, probing=probing)

    def lane(self, session: Session, dialect: str) -> Lane:
        """The plans and hot path of one employee on one ticket (adapters keep theirs).

        A session whose employee is not a name (None, empty, not a string) gets
        no lane: ``ConfigurationError`` (``session.unbound``), audited.
        """
        key = (session.user, session.ticket, dialect)
        lane = self._lanes.get(key)
        if lane is None:
            self.bind(session.user, session.ticket)
            with self._lock:
                if len(self._lanes) >= self.cache_size:
                    self._lanes.clear()
                lane = self._lanes.setdefault(key, Lane(self, session, dialect))
                self._every_lane.add(lane)
        return lane

    def count_plan(self) -> None:
        """One more plan kept by a lane; past the budget, every lane forgets its plans."""
        self._planned += 1  # approximate across threads: it only says when to forget
        if self._planned > 2 * self.cache_size:
            with self._lock:
                self._planned = 0
                lanes = list(self._every_lane)
            for lane in lanes:
                lane.forget()

    def fresh(  # noqa: PLR0913, PLR0917 - one decision's inputs
        self,
        lane: Lane,
        sql: str,
        params: Params,
        ticket: Ticket | None,
        policy: Policy,
        convert: Convert | None,
    ) -> tuple[Plan, str, bool]:
        """The slow path: (plan, SQL to send, whether the plan is of this exact text).

        A refusal (or an unverified rewrite) is audited and raised.
        """
        session, dialect = lane.session, lane.dialect
        if screen(sql) is None:  # else no scan runs: analyze refuses it, audited below
            if convert is not None and params is not None:
                sql, params = self.convert_params(convert, sql, params, session)
            shaped = self._by_shape(lane, sql, params, ticket, policy)
            if shaped is not None:
                return shaped[0], shaped[1], False
        facts, decision, context = self._decide(sql, params, session, dialect, ticket, policy)
        plan = self._allowed_plan(facts, decision, context, ticket, policy)
        return plan, plan.sql, True

    def _allowed_plan(
        self,
        facts: Facts,
        decision: Decision,
        context: Context,
        ticket: Ticket | None,
        policy: Policy,
    ) -> Plan:
        """The plan of a fresh decision; a refusal (or an unverified rewrite) is audited, raised."""
        if not decision.allowed:
            self.audit(decision, context, facts)
            raise AccessDenied(decision.message, reason=decision.reason or Reason.INTERNAL_ERROR)
        try:
            return self._plan(facts, decision, context, ticket, policy)
        except Unverified as exc:
            refused = replace(
                decision,
                outcome="denied",
                reason=Reason.SQL_PARSER_DISAGREEMENT,
                message=f"Refused: the SQL to send failed its check ({exc.problem}).",
            )
            self.audit(refused, context, facts)
            raise AccessDenied(refused.message, reason=Reason.SQL_PARSER_DISAGREEMENT) from None

    def convert_params(
        self,
        convert: Callable[[str, Any], tuple[str, list[Any]]],
        sql: str,
        params: Params,
        session: Session,
    ) -> tuple[str, list[Any]]:
        """The driver's placeholder conversion; a mismatch is a refusal, audited.

        A statement ``screen`` or ``screen_placeholders`` stops is refused
        first (no conversion scans it).
        """
        unscreened = screen(sql) or screen_placeholders(sql)
        if unscreened is not None:
            refused = self.unscreened(sql, unscreened, session)
            raise AccessDenied(refused.message, reason=Reason.SQL_UNANALYZABLE)
        try:
            return convert(sql, params)
        except Exception as exc:
            raise self.refuse(
                Reason.SQL_PARAMS_MISMATCH,
                "Refused: the placeholders do not match the values bound to them.",
                session,
                kind="unknown",
            ) from exc

    def _by_shape(
        self,
        lane: Lane,
        sql: str,
        params: Params,
        ticket: Ticket | None,
        policy: Policy,
    ) -> tuple[Plan, str] | None:
        """An allowed plan for the statement's literal-free shape, and its sent SQL.

        None when the statement has no literal, or its shape is not allowed as
        such (the caller then decides the text itself, with exact reasons).
        """
        session, dialect = lane.session, lane.dialect
        escape = params is not None
        quick = quick_shape(sql, dialect)
        if quick is not None:
            # only shape_of's templates, made from real tokens, are ever keys
            key = (quick.text, params_shape(params))
            plan = lane.shapes.get(key)
            # holds only reads the values: the literals alone need no copy
            values = quick.values if params is None else combine(params, quick.values)
            if plan is not None and plan.holds(policy, ticket, values):
                return with_literals(plan, quick.values), render(
                    plan.sql, quick, escape_percent=escape
                )
        found = shape(sql, dialect)
        if found is None:
            return None
        lifted, tokens = found
        combined = combine(params, lifted.values)
        key = (lifted.text, params_shape(params))
        plan = lane.shapes.get(key)
        if plan is None or not plan.holds(policy, ticket, combined):
            facts, decision, context = self._decide(
                lifted.text,
                combined,
                session,
                dialect,
                ticket,
                policy,
                escape=escape,
            )
            if not decision.allowed:
                return None
            redacted = redact_tokens(tokens)  # the statement's own, not its shape's
            facts = replace(facts, redacted=redacted, fingerprint=fingerprint(redacted))
            try:
                plan = self._plan(facts, decision, context, ticket, policy)
            except Unverified:
                return None  # decided again on the text itself, which audits the refusal
            if not literals_bare(plan.sql, len(lifted.sources)):
                return None  # a literal the SQL sent would not hold as written: the text's way
            lane.remember(lane.shapes, key, plan)
        return with_literals(plan, lifted.values), render(plan.sql, lifted, escape_percent=escape)

    def _plan(
        self,
        facts: Facts,
        decision: Decision,
        context: Context,
        ticket: Ticket | None,
        policy: Policy,
    ) -> Plan:
        return build_plan(
            facts,
            decision,
            context,
            ticket,
            policy,
            shadow=self.shadow,
            ledger=self.ledger,
            masks=mask_texts(self.masking(policy, context), facts.reads),
        )

    def count_against_limits(self, plan: Plan) -> int | None:
        """Count the statement against the volume limits; raise Throttled past one."""
        assert self.throttle is not None  # noqa: S101 - checked by the caller
        decision, context, facts = plan.decision, plan.context, plan.facts
        try:
            verdict = self.throttle.hit(context.user, context.roles, plan.kind, plan.customers)
        except ThrottleStoreUnavailable as exc:
            refused = replace(
                decision,
                outcome="throttled",
                reason=Reason.THROTTLE_STORE_UNAVAILABLE,
                message=exc.message,
                limit="store",
            )
            self.audit(refused, context, facts)
            raise Throttled(
                exc.message, reason=Reason.THROTTLE_STORE_UNAVAILABLE, limit="store"
            ) from exc
        if verdict is not None:
            refused = replace(
                decision,
                outcome="throttled",
                reason=verdict.reason,
                message=verdict.message,
                limit=verdict.limit,
                retry_after=verdict.retry_after,
            )
            self.audit(refused, context, facts, window=verdict.window_seconds, count=verdict.count)
            raise verdict.error()
        if not decision.subjects:
            return None
        cap = self.throttle.row_cap(context.roles, plan.kind)
        weight = plan.facts.row_weight
        # each result row carries ``weight`` rows of a scoped table (pivots, subqueries)
        return cap // weight if cap is not None and weight > 1 else cap
