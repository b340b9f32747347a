"""The Guard: the one place that performs effects.

It looks tickets up, runs the pure analysis and decision, writes the audit
event for every refusal, and raises. Adapters (psycopg, DB-API) call
``authorize`` before anything reaches the server and send what it returns.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accessguard.analysis import Facts, analyze, fingerprint, redact, subject_marker
from accessguard.audit import Auditor, AuditSink, as_sink, utcnow
from accessguard.decision import Context, Decision, decide
from accessguard.errors import AccessDenied, AccessGuardError, Reason
from accessguard.policy import EVERYONE, Policy, load_policy
from accessguard.tickets import Ticket, TicketStore, as_store

if TYPE_CHECKING:
    from types import TracebackType

Params = Sequence[Any] | Mapping[str, Any] | None

_DB_SYSTEM = {"postgres": "postgresql", "sqlite": "sqlite"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    """The employee a connection acts for, and the ticket they work under."""

    user: str
    ticket: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Authorized:
    """What an adapter sends after an allow: the guarded SQL and its parameters."""

    sql: str
    params: Params
    decision: Decision
    facts: Facts


class Guard:
    """Checks every statement against the policy and the employee's ticket."""

    def __init__(  # noqa: PLR0913 - keyword-only options
        self,
        policy: Policy,
        *,
        tickets: TicketStore | Iterable[Ticket] | None = None,
        audit: AuditSink | str | Path | None = None,
        audit_allowed: bool = False,
        clock: Callable[[], dt.datetime] = utcnow,
        cache_size: int = 4096,
    ) -> None:
        self.policy = policy
        self.tickets = as_store(tickets)
        self.auditor = Auditor(as_sink(audit), clock=clock)
        self.audit_allowed = audit_allowed
        self._cache: OrderedDict[tuple[str, str, bool, str], Facts] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @classmethod
    def from_directory(
        cls,
        path: str | Path,
        *,
        tickets: TicketStore | Iterable[Ticket] | None = None,
        audit: AuditSink | str | Path | None = None,
        **options: Any,
    ) -> Guard:
        """Load the policy files in ``path`` (model.conf, policy.csv, schema.toml)."""
        return cls(load_policy(path), tickets=tickets, audit=audit, **options)

    # ------------------------------------------------------------------ deciding

    def analyze(self, sql: str, *, dialect: str = "postgres", params: bool = False) -> Facts:
        """Facts for ``sql``, cached by its text (and the schema version)."""
        key = (sql, dialect, params, self.policy.catalog.version)
        facts = self._cache.get(key)
        if facts is not None:
            return facts
        facts = analyze(sql, catalog=self.policy.catalog, dialect=dialect, params=params)
        with self._lock:
            self._cache[key] = facts
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return facts

    def check(
        self,
        sql: str,
        params: Params = None,
        *,
        user: str,
        ticket: str | None = None,
        dialect: str = "postgres",
    ) -> Decision:
        """Decide without a database and without side effects (nothing is audited).

        ``sql`` uses the dialect's native placeholders (``$1`` for PostgreSQL,
        ``?`` for SQLite) or psycopg's ``%s`` / ``%(name)s`` when ``params`` are
        given for PostgreSQL.
        """
        if dialect == "postgres" and params is not None:
            from accessguard.adapters.psycopg3 import convert_query

            sql, params = convert_query(sql, params)
        _facts, decision, _ctx = self._decide(
            sql, params, Session(user=user, ticket=ticket), dialect
        )
        return decision

    def _decide(
        self, sql: str, params: Params, session: Session, dialect: str
    ) -> tuple[Facts, Decision, Context]:
        ticket = self.tickets.get(session.ticket) if session.ticket is not None else None
        context = Context(
            user=session.user,
            roles=self.policy.roles_of(session.user),
            ticket_id=session.ticket,
            ticket=ticket,
            params=params,
        )
        facts = self.analyze(sql, dialect=dialect, params=params is not None)
        return facts, decide(facts, context, self.policy), context

    def authorize(self, sql: str, params: Params, session: Session, *, dialect: str) -> Authorized:
        """Decide; on refusal audit and raise; on allow return what to send."""
        try:
            facts, decision, context = self._decide(sql, params, session, dialect)
        except AccessGuardError:
            raise
        except Exception:  # noqa: BLE001 - fail closed: an internal error denies
            facts = Facts(kind="unknown", problem=Reason.INTERNAL_ERROR)
            decision = Decision(
                outcome="denied",
                reason=Reason.INTERNAL_ERROR,
                message="Refused: the guard failed while deciding.",
            )
            context = Context(
                user=session.user, roles=frozenset({EVERYONE}), ticket_id=session.ticket
            )
        if not decision.allowed:
            self._audit(decision, context, sql, dialect)
            raise AccessDenied(decision.message, reason=decision.reason or Reason.INTERNAL_ERROR)
        if self.audit_allowed:
            self._audit(decision, context, sql, dialect)
        return Authorized(
            sql=self._sent_sql(facts, decision),
            params=_reorder(facts, params),
            decision=decision,
            facts=facts,
        )

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
        self._audit(decision, context, None, dialect)
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

    def _audit(self, decision: Decision, context: Context, sql: str | None, dialect: str) -> None:
        redacted = redact(sql, dialect=dialect) if sql is not None else None
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
            "accessguard.fingerprint": fingerprint(redacted),
            "accessguard.policy.version": self.policy.version,
        }
        if len(decision.tables) == 1:
            fields["db.collection.name"] = decision.tables[0]
        if decision.limit is not None:
            fields["accessguard.limit"] = decision.limit
        self.auditor.emit(**fields)

    # ------------------------------------------------------------------ connections

    def connect(
        self, conninfo: str = "", *, user: str, ticket: str | None = None, **kwargs: Any
    ) -> Any:
        """Open a psycopg 3 connection and return it guarded for ``user`` on ``ticket``."""
        from accessguard.adapters.psycopg3 import GuardedConnection

        return GuardedConnection.connect(
            self, conninfo, Session(user=user, ticket=ticket), **kwargs
        )

    def wrap(
        self, connection: Any, *, user: str, ticket: str | None = None, dialect: str | None = None
    ) -> Any:
        """Guard an open connection: psycopg 3, sqlite3 or any DB-API 2.0 one (with ``dialect``)."""
        session = Session(user=user, ticket=ticket)
        from accessguard.adapters import wrap_connection

        return wrap_connection(self, connection, session, dialect=dialect)

    def close(self) -> None:
        """Release what the guard holds (a ticket store's connection, for instance)."""
        close = getattr(self.tickets, "close", None)
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


def _reorder(facts: Facts, params: Params) -> Params:
    """The bound values in the order the sent SQL uses them."""
    if params is None:
        return None
    if isinstance(params, Mapping):
        return {str(k): params[str(k)] for k in facts.param_order}
    return [params[int(k)] for k in facts.param_order]
