"""The Guard: the one place that performs effects.

It looks tickets up, runs the pure analysis and decision, writes the audit
event for every refusal, and raises. Adapters (psycopg, DB-API) call
``authorize`` before anything reaches the server and send what it returns.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accessguard import metrics, telemetry
from accessguard.alerts import Alerter, Notifier
from accessguard.alerts_rules import ALERTS_FILE, AlertRules, load_alerts
from accessguard.analysis import (
    Facts,
    Param,
    analyze,
    as_text,
    audit_text,
    fingerprint,
    redact_tokens,
    render,
    screen,
    screen_placeholders,
    shape,
    subject_marker,
    unanalyzable,
    with_redaction,
)
from accessguard.analysis.crosscheck import verify_sent
from accessguard.analysis.shape import quick_shape
from accessguard.audit import Auditor, AuditSink, as_sink, utcnow
from accessguard.catalog import Drift, SchemaDriftWarning, database_key, read_drift
from accessguard.decision import Context, Decision, decide
from accessguard.errors import (
    AccessDenied,
    AccessGuardError,
    AuditError,
    ConfigurationError,
    PolicyError,
    Reason,
    Throttled,
)
from accessguard.lane import Authorized, Convert, Lane, Session
from accessguard.ledger import Access, Ledger
from accessguard.plan import Params, Plan, Unverified, combine, params_shape
from accessguard.policy import SHADOW_FILE, Policy, load_policy
from accessguard.probes import keyed, plan_probes, unprobed, with_literals
from accessguard.throttle import Limits, Throttle, ThrottleStoreUnavailable, load_limits
from accessguard.tickets import Ticket, TicketStore, as_store

if TYPE_CHECKING:
    from types import TracebackType

    from accessguard.watch import PolicyWatcher


__all__ = ["Authorized", "Guard", "Session"]

_DB_SYSTEM = {"postgres": "postgresql", "sqlite": "sqlite"}
LIMITS_FILE = "limits.toml"


class Guard:
    """Checks every statement against the policy and the employee's ticket."""

    def __init__(  # noqa: PLR0913 - keyword-only options
        self,
        policy: Policy,
        *,
        tickets: TicketStore | Iterable[Ticket] | None = None,
        audit: AuditSink | str | Path | None = None,
        audit_allowed: bool = False,
        limits: Limits | None = None,
        throttle_storage: str = "memory://",
        throttle_clock: Callable[[], float] = time.time,
        ledger: AuditSink | str | Path | None = None,
        ledger_interval: float = 1.0,
        ledger_pseudonym_key: bytes | None = None,
        ledger_spool: str | Path | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        cache_size: int = 4096,
        shadow: Policy | None = None,
        alerts: AlertRules | None = None,
        on_alert: Notifier | None = None,
    ) -> None:
        self.policy = policy
        #: candidate rules evaluated beside the enforced ones, audited as "would deny"
        self.shadow = shadow
        self.tickets = as_store(tickets)
        self.auditor = Auditor(as_sink(audit), clock=clock)
        self.audit_allowed = audit_allowed
        ledger_sink = self.auditor.sink if ledger is None else _ledger_sink(ledger, ledger_spool)
        for sink in {id(s): s for s in (self.auditor.sink, ledger_sink)}.values():
            check = getattr(sink, "check", None)
            if callable(check):
                check()  # unwritable now: raise AuditError here, not at the first event
        self.throttle = (
            Throttle(limits, storage=throttle_storage, clock=throttle_clock)
            if limits is not None
            else None
        )
        #: how to make a throttle when a reload brings limits.toml to a guard without one
        self._throttle_options: dict[str, Any] = {
            "storage": throttle_storage,
            "clock": throttle_clock,
        }
        #: whether the running limits came from the directory's limits.toml
        self._limits_from_file = False
        self.ledger = Ledger(
            ledger_sink,
            clock=time.time if clock is utcnow else (lambda: clock().timestamp()),
            interval=ledger_interval,
            pseudonym_key=ledger_pseudonym_key,
            refused=self._ledger_refused,
        )
        #: alert rules, evaluated as the ledger flushes; ticket changes become audit events
        self.alerter = Alerter(
            alerts or AlertRules(),
            emit=self.auditor.emit,
            notifiers=[on_alert] if on_alert is not None else [],
            pseudonym=self.ledger.pseudonym,
            stamp=self.auditor.stamp,
        )
        self.alerter.set_rules(self.alerter.rules, policy.watchlist)
        self.ledger.on_flush = self.alerter.evaluate
        subscribe = getattr(self.tickets, "subscribe", None)
        if callable(subscribe):
            subscribe(self.alerter.ticket_changed)
        self._cache: OrderedDict[tuple[str, str, bool, str, bool], Facts] = OrderedDict()
        #: the plans of each (employee, ticket id, dialect); every plan holds the
        #: policy it was decided by and is used only while that policy is
        self._lanes: dict[tuple[str, str | None, str], Lane] = {}
        #: every lane made, the map's and those only connections still hold: their plans
        #: together stay within 2 x cache_size (past it, every lane forgets its plans)
        self._every_lane: weakref.WeakSet[Lane] = weakref.WeakSet()
        self._planned = 0
        self.directory: Path | None = None
        self._bound: ContextVar[Session | None] = ContextVar(
            f"accessguard_session_{id(self)}", default=None
        )
        self._cache_size = cache_size
        self._lock = threading.Lock()
        #: the databases (and schema versions) whose catalog was compared with schema.toml
        self._schemas_seen: set[tuple[object, ...]] = set()
        #: set by close(): every statement, and every fetch the ledger would count, is refused
        self.closed = False

    @classmethod
    def from_directory(
        cls,
        path: str | Path,
        *,
        tickets: TicketStore | Iterable[Ticket] | None = None,
        audit: AuditSink | str | Path | None = None,
        **options: Any,
    ) -> Guard:
        """Load the policy files in ``path``: model.conf, policy.csv, schema.toml, limits.toml.

        watchlist.toml, alerts.toml and policy.shadow.csv are read too when present. Without
        a ``limits.toml`` the guard has no volume limits; an empty or
        undecodable one, like any such policy file, is a PolicyError.
        """
        policy = load_policy(path)
        limits_file = Path(path) / LIMITS_FILE
        if "shadow" not in options and (Path(path) / SHADOW_FILE).exists():
            options["shadow"] = load_policy(path, policy_file=SHADOW_FILE)
        options.setdefault("alerts", load_alerts(Path(path) / ALERTS_FILE))
        from_file = "limits" not in options and limits_file.exists()
        if from_file:
            options["limits"] = load_limits(limits_file, known_roles=policy.known_roles)
        guard = cls(policy, tickets=tickets, audit=audit, **options)
        guard.directory = Path(path)
        guard._limits_from_file = from_file
        return guard

    def reload(self) -> bool:
        """Load the policy directory again; swap it in atomically, or keep the last good one.

        A malformed edit is reported (an audit event naming the file and line,
        and the return value False) and the running policy stays in force; so
        is an undecodable or empty file, and any other error while loading
        (never raised: a watcher thread calling this must not die). A
        limits.toml added to a guard that had none starts its limits; one
        removed is a failed reload (the running limits stay until a restart:
        a deleted file is not a switch that turns them off). The next
        statement after a successful reload is decided by the new policy.
        """
        if self.directory is None:
            raise ConfigurationError("reload() needs a guard made with Guard.from_directory")
        old = self.policy.version
        try:
            policy = load_policy(self.directory)
            shadow_file = self.directory / SHADOW_FILE
            shadow = (
                load_policy(self.directory, policy_file=SHADOW_FILE)
                if shadow_file.exists()
                else None
            )
            limits_file = self.directory / LIMITS_FILE
            limits = (
                load_limits(limits_file, known_roles=policy.known_roles)
                if limits_file.exists()
                else None
            )
            if limits is None and self._limits_from_file:
                raise PolicyError(  # noqa: TRY301 - reported like every failed load below
                    "the limits file was removed; the running limits stay until a restart",
                    path=str(limits_file),
                )
            alerts = load_alerts(self.directory / ALERTS_FILE)
            throttle = self.throttle
            if throttle is None and limits is not None:
                throttle = Throttle(limits, **self._throttle_options)
        except Exception as exc:  # noqa: BLE001 - fail closed: the last good policy stays
            message = (
                exc.message
                if isinstance(exc, PolicyError)
                else f"cannot load the policy directory ({type(exc).__name__})"
            )
            self.auditor.emit(
                **{
                    "event.kind": "event",
                    "event.category": ["configuration"],
                    "event.action": "policy.reload",
                    "event.outcome": "failure",
                    "event.reason": str(Reason.POLICY_INVALID),
                    "message": message,
                    "accessguard.policy.version": old,
                }
            )
            return False
        if throttle is not None and limits is not None:
            throttle.set_limits(limits)
            self._limits_from_file = True
        self.throttle = throttle
        self.policy = policy
        self.shadow = shadow
        self.alerter.set_rules(alerts, policy.watchlist)
        self._lanes = {}  # lanes still held by connections re-plan: their plans' policy is gone
        if policy.version != old:
            self.auditor.emit(
                **{
                    "event.kind": "event",
                    "event.category": ["configuration"],
                    "event.action": "policy.reload",
                    "event.outcome": "success",
                    "message": f"policy {old} replaced by {policy.version}",
                    "accessguard.policy.version": policy.version,
                }
            )
        return True

    # ------------------------------------------------------------------ deciding

    def analyze(
        self,
        sql: str | bytes,
        *,
        dialect: str = "postgres",
        params: bool = False,
        policy: Policy | None = None,
        sending: bool = True,
    ) -> Facts:
        """Facts for ``sql``, cached by its text (and the schema version).

        ``sending=False``: for a decision only (see ``accessguard.analysis.analyze``).
        """
        catalog = (policy or self.policy).catalog
        if not isinstance(sql, str) or screen(sql) is not None:  # refused, never cached
            return analyze(sql, catalog=catalog, dialect=dialect)
        key = (sql, dialect, params, catalog.version, sending)
        facts = self._cache.get(key)
        if facts is not None:
            return facts
        started = time.perf_counter()
        facts = analyze(sql, catalog=catalog, dialect=dialect, params=params, sending=sending)
        metrics.ANALYSIS.observe(time.perf_counter() - started)
        with self._lock:
            self._cache[key] = facts
            if len(self._cache) > self._cache_size:
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
        (``accessguard.probes``), and check has no database. Bytes are read
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
                return self._unscreened(text, unread, session)
            from accessguard.adapters.psycopg3 import convert_query

            try:
                sql, params = convert_query(text, params)
            except Exception:  # noqa: BLE001 - any conversion error is this refusal
                message = "Refused: the placeholders do not match the values bound to them."
                self.refuse(Reason.SQL_PARAMS_MISMATCH, message, session, kind="unknown")
                return Decision(
                    outcome="denied", reason=Reason.SQL_PARAMS_MISMATCH, message=message
                )
        try:
            found = self.tickets.get(ticket) if ticket is not None else None
            facts, decision, context = self._decide(
                sql, params, session, dialect, found, self.policy, sending=False
            )
            if decision.allowed and keyed(facts):  # no database to probe: as an adapter without
                decision = unprobed(facts, decision, context, self.policy.catalog)
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
            self._audit(decision, context, with_redaction(facts, sql))
        return decision

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
        facts = self.analyze(sql, dialect=dialect, params=escape, policy=policy, sending=sending)
        started = time.perf_counter()
        decision = decide(facts, context, policy)
        metrics.DECIDE.observe(time.perf_counter() - started)
        return facts, decision, context

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
        employee's lane (``Guard.lane``), keyed by its text and the
        parameters' shape. The next execution reuses the plan only if the
        policy and the ticket are unchanged (a closed or reassigned ticket is a
        different value) and every bound value that carries the row scope
        still equals the ticket's subject; otherwise it is decided afresh.

        ``convert`` (psycopg's ``%s`` -> ``$n`` conversion, for positional
        parameters, which it leaves in order) is applied only when the plan
        must be made: a repeated statement skips it. ``probing``: the caller
        runs the returned ``probe`` before sending (``accessguard.probes``).
        """
        try:
            lane = self.lane(session, dialect)
        except AccessGuardError:
            raise
        except Exception:  # noqa: BLE001 - fail closed: an internal error denies, audited
            raise self._failed(session, dialect) from None
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
                if len(self._lanes) >= self._cache_size:
                    self._lanes.clear()
                lane = self._lanes.setdefault(key, Lane(self, session, dialect))
                self._every_lane.add(lane)
        return lane

    def _count_plan(self) -> None:
        """One more plan kept by a lane; past the budget, every lane forgets its plans."""
        self._planned += 1  # approximate across threads: it only says when to forget
        if self._planned > 2 * self._cache_size:
            with self._lock:
                self._planned = 0
                lanes = list(self._every_lane)
            for lane in lanes:
                lane.forget()

    def _fresh(  # noqa: PLR0913, PLR0917 - one decision's inputs
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
                sql, params = self._convert(convert, sql, params, session)
            shaped = self._by_shape(lane, sql, params, ticket, policy)
            if shaped is not None:
                return shaped[0], shaped[1], False
        facts, decision, context = self._decide(sql, params, session, dialect, ticket, policy)
        plan = self._allowed_plan(facts, decision, context, ticket, policy)
        return plan, plan.sql, True

    def _failed(self, session: Session, dialect: str) -> AccessDenied:
        """Audit a decision the guard could not finish (an internal error); return the error."""
        return self.refuse(
            Reason.INTERNAL_ERROR,
            "Refused: the guard failed while deciding.",
            session,
            kind="unknown",
            dialect=dialect,
        )

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
            self._audit(decision, context, facts)
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
            self._audit(refused, context, facts)
            raise AccessDenied(refused.message, reason=Reason.SQL_PARSER_DISAGREEMENT) from None

    def _convert(
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
            refused = self._unscreened(sql, unscreened, session)
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
            refused = self._unscreened(text, problem, session)
            raise AccessDenied(refused.message, reason=Reason.SQL_UNANALYZABLE)

    def _unscreened(self, sql: str, problem: str, session: Session) -> Decision:
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
        self._audit(decision, context, unanalyzable(sql, problem, dialect="postgres"))
        return decision

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
            if plan is not None and plan.holds(policy, ticket, combine(params, quick.values)):
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
        valid = context.valid
        subjects = dict(decision.subjects)
        checks = tuple(
            (value.key, subjects[ref.scope])
            for ref in facts.scopes
            for value in ref.values
            if isinstance(value, Param)
        )
        kind = valid.kind if valid is not None else None
        roles = tuple(sorted(context.roles))
        accesses = tuple(
            Access(
                user=context.user,
                roles=roles,
                ticket_id=context.ticket_id,
                ticket_kind=kind,
                scope=scope,
                subject=subject,
                fingerprint=facts.fingerprint or "",
                tables=decision.tables,
                columns=decision.columns,
                policy_version=policy.version,
            )
            for scope, subject in decision.subjects
        )
        sent = self._sent_sql(facts, decision)
        if facts.dialect == "postgres":
            # the second wall, checked by PostgreSQL's parser before the plan is trusted
            scoped = {
                t: spec.scope_column or ""
                for t in facts.tables
                if (spec := policy.catalog.tables.get(t)) is not None and spec.scope is not None
            }
            problem = verify_sent(
                sent,
                facts,
                scoped,
                pyformat=bool(facts.params),
                subjects=[subject for _scope, subject in decision.subjects],
            )
            if problem is not None:
                raise Unverified(problem)
        notices: list[Decision] = []
        if self.shadow is not None:
            shadow_context = replace(context, roles=self.shadow.roles_of(context.user))
            verdict = decide(facts, shadow_context, self.shadow)
            if not verdict.allowed:
                notices.append(replace(verdict, outcome="allowed", limit="shadow"))
        for scope, subject in decision.subjects:
            if (scope, subject) in policy.watchlist.canaries:
                notices.append(
                    replace(
                        decision,
                        limit="canary",
                        message=f"Canary {scope} read: no legitimate work touches it.",
                    )
                )
            elif (scope, subject) in policy.watchlist.watched:
                notices.append(
                    replace(
                        decision,
                        limit="watchlist",
                        message=f"Watch-listed {scope} read under ticket {context.ticket_id}.",
                    )
                )
        return Plan(
            policy=policy,
            notices=tuple(notices),
            facts=facts,
            decision=decision,
            context=context,
            ticket=ticket,
            kind=kind,
            sql=sent,
            checks=checks,
            probes=plan_probes(facts, policy.catalog, subjects, context) if keyed(facts) else None,
            tally=(
                self.ledger.tally(accesses, facts.row_weight, writes=facts.kind == "update")
                if accesses
                else None
            ),
            customers=frozenset(i for scope, i in decision.subjects if scope == "customer"),
        )

    def _throttle(self, plan: Plan) -> int | None:
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
            self._audit(refused, context, facts)
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
            self._audit(refused, context, facts, window=verdict.window_seconds, count=verdict.count)
            raise verdict.error()
        if not decision.subjects:
            return None
        cap = self.throttle.row_cap(context.roles, plan.kind)
        weight = plan.facts.row_weight
        # each result row carries ``weight`` rows of a scoped table (pivots, subqueries)
        return cap // weight if cap is not None and weight > 1 else cap

    def _notify(self, plan: Plan) -> None:
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
            else:
                extra = {"accessguard.watch": notice.limit}
                if notice.limit == "canary":
                    extra |= {"event.kind": "alert", "log.level": "critical"}
            self._audit(replace(notice, limit=None), plan.context, plan.facts, extra=extra)

    def over_row_cap(self, ok: Authorized, count: int) -> Throttled:
        """Audit a statement whose result passed its row cap; return the error to raise."""
        limit = f"rows_per_statement: {ok.row_cap}"
        message = (
            f"Throttled: the statement returns more than {ok.row_cap} rows of a "
            "scoped table; narrow it down."
        )
        refused = replace(
            ok.decision,
            outcome="throttled",
            reason=Reason.THROTTLE_ROWS,
            message=message,
            limit=limit,
        )
        self._audit(refused, ok.context, ok.facts, count=count)
        return Throttled(message, reason=Reason.THROTTLE_ROWS, limit=limit)

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
        self._audit(decision, context, None, dialect=dialect)
        return AccessDenied(message, reason=reason)

    @staticmethod
    def _sent_sql(facts: Facts, decision: Decision) -> str:
        sent = facts.sent or ""
        for scope, subject in decision.subjects:
            sent = sent.replace(subject_marker(scope), str(int(subject)))
        if "__ag_subject_" in sent:  # a scope without a proven subject: never send
            raise AccessDenied(
                "Refused: the guard could not scope the statement.", reason=Reason.INTERNAL_ERROR
            )
        return sent

    # ------------------------------------------------------------------ audit

    def _audit(  # noqa: PLR0913 - keyword-only details of throttle events
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
        redacted = audit_text(facts.redacted) if facts is not None else None
        if facts is not None:  # the statement's own dialect: a sqlite event says sqlite
            dialect = facts.dialect
        ticket = context.ticket
        fields: dict[str, Any] = {
            "event.kind": "event",
            "event.category": ["database", "iam"],
            "event.type": ["allowed" if decision.allowed else "denied"],
            "event.action": "query",
            "event.outcome": "success" if decision.allowed else "failure",
            "event.reason": str(decision.reason) if decision.reason else None,
            "message": decision.message,
            "accessguard.outcome": decision.outcome,
            "user.name": context.user,
            "user.roles": sorted(context.roles),
            "accessguard.ticket.id": context.ticket_id,
            "accessguard.ticket.kind": ticket.kind if ticket is not None else None,
            "db.system.name": _DB_SYSTEM.get(dialect, dialect),
            "db.operation.name": decision.kind.upper(),
            "db.query.summary": " ".join([decision.kind.upper(), *decision.tables]),
            "db.query.text": redacted,
            "accessguard.tables": list(decision.tables),
            "accessguard.columns": list(decision.columns),
            "accessguard.fingerprint": facts.fingerprint if facts is not None else None,
            "accessguard.policy.version": self.policy.version,
        }
        if len(decision.tables) == 1:
            fields["db.collection.name"] = decision.tables[0]
        # allowed (or throttled): the subjects it was proven to stay within; refused: the
        # ones it named, so "who tried to read customer 7?" is answered too
        subjects = decision.subjects or decision.named
        if subjects:  # subject ids, as the ledger keeps them (pseudonyms with its key)
            fields["accessguard.subjects"] = [
                {"kind": scope, "id": self.ledger.pseudonym(subject)} for scope, subject in subjects
            ]
        if extra:
            fields.update(extra)
        if decision.limit is not None:
            fields["accessguard.limit"] = decision.limit
            fields["accessguard.window.seconds"] = window
            fields["accessguard.count"] = count
            retry = decision.retry_after
            fields["accessguard.retry_after"] = (
                retry if retry is not None and math.isfinite(retry) else None
            )
        telemetry.refused(fields)
        self.auditor.emit(**fields)
        self.alerter.observe(fields)

    def _ledger_refused(self, accesses: tuple[Access, ...], error: AuditError) -> None:
        """Audit a statement refused because the ledger cannot be written (best effort)."""
        access = accesses[0]
        fields = {
            "event.kind": "event",
            "event.category": ["database", "iam"],
            "event.type": ["denied"],
            "event.action": "query",
            "event.outcome": "failure",
            "event.reason": str(error.reason),
            "message": error.message,
            "accessguard.outcome": "denied",
            "user.name": access.user,
            "user.roles": sorted(access.roles),
            "accessguard.ticket.id": access.ticket_id,
            "accessguard.ticket.kind": access.ticket_kind,
            "accessguard.tables": list(access.tables),
            "accessguard.columns": list(access.columns),
            "accessguard.fingerprint": access.fingerprint,
            "accessguard.policy.version": access.policy_version,
        }
        telemetry.refused(fields)
        with contextlib.suppress(AuditError):  # the audit sink is down too: still refused
            self.auditor.emit(**fields)

    # ------------------------------------------------------------------ connections

    def connect(
        self, conninfo: str = "", *, user: str, ticket: str | None = None, **kwargs: Any
    ) -> Any:
        """Open a psycopg 3 connection and return it guarded for ``user`` on ``ticket``."""
        from accessguard.adapters.psycopg3 import GuardedConnection

        conn = GuardedConnection.connect(self, conninfo, self.bind(user, ticket), **kwargs)
        self._check_schema(conn._raw)  # the raw connection, before any statement
        return conn

    def wrap(
        self, connection: Any, *, user: str, ticket: str | None = None, dialect: str | None = None
    ) -> Any:
        """Guard an open connection: psycopg 3, sqlite3 or any DB-API 2.0 one (with ``dialect``)."""
        session = self.bind(user, ticket)
        from accessguard.adapters import wrap_connection

        guarded = wrap_connection(self, connection, session, dialect=dialect)
        if dialect in (None, "postgres"):
            self._check_schema(connection)  # the raw connection, before any statement
        return guarded

    def _check_schema(self, raw: Any) -> None:
        """At the first connection to a PostgreSQL database: report drift from schema.toml.

        Reads information_schema through ``raw`` (the raw connection, never a
        guarded one). A difference is audited (``schema.drift``) and warned
        (``SchemaDriftWarning``), by table and column names only. Never raises
        and never refuses: the second wall sends no column schema.toml lacks.
        """
        catalog = self.policy.catalog
        database = database_key(raw)
        if database is None:
            return
        key = (*database, catalog.version)
        with self._lock:
            if key in self._schemas_seen:
                return
            self._schemas_seen.add(key)
        try:
            found = read_drift(catalog, raw)
        except Exception:  # noqa: BLE001 - a report only: the connection is still guarded
            with self._lock:
                self._schemas_seen.discard(key)
            return
        if found is None:  # inside the application's transaction: at the next connection
            with self._lock:
                self._schemas_seen.discard(key)
            return
        if found.found:
            self._report_drift(found)

    def _report_drift(self, found: Drift) -> None:
        """Audit and warn schema drift; a report only, so a failing sink does not stop service."""
        with contextlib.suppress(AccessGuardError):  # the warning below still tells
            self.auditor.emit(
                **{
                    "event.kind": "event",
                    "event.category": ["configuration", "database"],
                    "event.action": "schema.drift",
                    "event.outcome": "unknown",
                    "event.reason": "schema.drift",
                    "message": found.message,
                    "accessguard.schema.undeclared": list(found.undeclared),
                    "accessguard.schema.missing": list(found.missing),
                    "accessguard.schema.missing_tables": list(found.missing_tables),
                    "accessguard.policy.version": self.policy.version,
                }
            )
        with contextlib.suppress(Exception):  # -W error must not turn a report into a refusal
            warnings.warn(found.message, SchemaDriftWarning, stacklevel=4)

    def watch(self, *, interval: float = 2.0, dsn: str | None = None) -> PolicyWatcher:
        """Reload on changes to the policy directory (and on NOTIFY when ``dsn`` is given)."""
        from accessguard.watch import PolicyWatcher

        return PolicyWatcher(self, interval=interval, dsn=dsn).start()

    # ------------------------------------------------------------------ sessions

    def bind(self, user: object, ticket: object = None) -> Session:
        """The session of ``user`` on ``ticket``, or an audited refusal.

        ``user`` must be an employee's name: a non-empty string of valid text
        (None, "", blanks or another type would bind an anonymous employee);
        ``ticket`` a ticket id or None. Else ``ConfigurationError`` with
        ``session.unbound``, after one audit event (that names neither).
        """
        problem = _binding_problem(user, ticket)
        if problem is None:
            return Session(user=user, ticket=ticket)  # type: ignore[arg-type] # checked above
        message = f"Refused: {problem}; bind an employee by name (user=...)."
        decision = Decision(
            outcome="denied", reason=Reason.SESSION_UNBOUND, message=message, kind="unknown"
        )
        context = Context(user="", roles=frozenset(), ticket_id=None, ticket=None)
        self._audit(decision, context, None, extra={"user.name": None})
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

    async def connect_async(
        self, conninfo: str = "", *, user: str, ticket: str | None = None, **kwargs: Any
    ) -> Any:
        """Open a psycopg 3 AsyncConnection and return it guarded."""
        from accessguard.adapters.aio import AsyncGuardedConnection

        return await AsyncGuardedConnection.connect(
            self, conninfo, self.bind(user, ticket), **kwargs
        )

    def wrap_async(self, connection: Any, *, user: str, ticket: str | None = None) -> Any:
        """Guard an open psycopg 3 AsyncConnection."""
        from accessguard.adapters.aio import wrap_async

        return wrap_async(self, connection, self.bind(user, ticket))

    def pool(self, conninfo: str = "", **kwargs: Any) -> Any:
        """A psycopg_pool ConnectionPool whose checkouts are guarded per employee."""
        from accessguard.adapters.pool import GuardedPool

        return GuardedPool(self, conninfo, **kwargs)

    def pool_async(self, conninfo: str = "", **kwargs: Any) -> Any:
        """A psycopg_pool AsyncConnectionPool whose checkouts are guarded per employee.

        ``async with guard.pool_async(dsn) as pool:`` opens it;
        ``async with pool.connection(user=..., ticket=...) as conn:`` checks one out.
        """
        from accessguard.adapters.pool import GuardedAsyncPool

        return GuardedAsyncPool(self, conninfo, **kwargs)

    def instrument(self, engine: Any) -> Any:
        """Guard every statement a SQLAlchemy 2 Engine sends (Core and ORM)."""
        from accessguard.adapters.sqlalchemy import instrument

        return instrument(self, engine)

    def close(self) -> None:
        """Flush the access ledger and release what the guard holds."""
        self.closed = True
        try:
            self.ledger.close()
        finally:
            self.alerter.close()
            if self.throttle is not None:
                self.throttle.close()
            for owned in (self.tickets, self.ledger.sink, self.auditor.sink):
                close = getattr(owned, "close", None)
                if callable(close):
                    close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _binding_problem(user: object, ticket: object) -> str | None:
    """Why ``user`` and ``ticket`` cannot be bound (see ``Guard.bind``); None if they can."""
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


def _ledger_sink(ledger: AuditSink | str | Path, spool: str | Path | None) -> AuditSink:
    """A sink object, a JSON-lines file path, or a PostgreSQL DSN (the PostgresSink)."""
    if isinstance(ledger, str) and ledger.startswith(("postgresql://", "postgres://")):
        from accessguard.pgsink import PostgresSink

        sink = PostgresSink(ledger, spool=spool)
        # an insert-only role cannot create the table: it was set up already;
        # if not, the construction check (PostgresSink.check) says so
        with contextlib.suppress(Exception):
            sink.setup()
        return sink
    return as_sink(ledger)
