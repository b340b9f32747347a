"""The gate's state and lifecycle: policy, tickets, sinks, ledger, limits; load, reload, close.

``Configured`` holds what one gate is made of and how it changes: built from a
policy directory, reloaded atomically (or kept on a bad edit), compared with the
live catalog at the first connection, closed with the ledger flushed. The
refusals (``accessguard.engine.refusals``) and the decisions
(``accessguard.engine.gate``) build on it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, cast

from accessguard.audit.alerts import Alerter, Notifier
from accessguard.audit.ledger import Access, Ledger
from accessguard.audit.sinks import Auditor, AuditSink, as_sink, utcnow
from accessguard.engine.breakglass import BreakGlass
from accessguard.errors import AccessGuardError, AuditError, ConfigurationError, PolicyError, Reason
from accessguard.policy.alerts import ALERTS_FILE, AlertRules, load_alerts
from accessguard.policy.catalog import Drift, SchemaDriftWarning, database_key, read_drift
from accessguard.policy.rules import SHADOW_FILE, Policy, load_policy
from accessguard.throttle.limits import Limits, load_limits
from accessguard.throttle.window import Throttle
from accessguard.tickets.stores import Ticket, TicketStore, as_store

if TYPE_CHECKING:
    from types import TracebackType

    from accessguard.analysis import Facts
    from accessguard.engine.breakglass import ElevationHost
    from accessguard.engine.lane import Lane, Session
    from accessguard.tickets.elevations import ElevationStore

__all__ = ["LIMITS_FILE", "Configured"]

LIMITS_FILE = "limits.toml"


class Configured:
    """What a gate is made of, and its lifecycle (load, reload, drift report, close)."""

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
        elevations: ElevationStore | str | None = None,
        alerts: AlertRules | None = None,
        on_alert: Notifier | None = None,
    ) -> None:
        self.policy = policy
        #: candidate rules evaluated beside the enforced ones, audited as "would deny"
        self.shadow = shadow
        self.tickets = as_store(tickets)
        #: break-glass elevations (``elevations``: a store or redis:// URL shared by processes)
        # a Configured is only ever made as a Gate (its base): the elevations bind and audit
        self.breakglass = BreakGlass(cast("ElevationHost", self), elevations)
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
            refused=self.ledger_refused,
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
        #: keys mask=hash (accessguard.policy.masking): the ledger's key, so a hashed column
        #: equals the ledger's pseudonym of its value; else one random key per guard
        self._mask_key = ledger_pseudonym_key or secrets.token_bytes(32)
        self._cache: OrderedDict[tuple[object, ...], Facts] = OrderedDict()
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
        self.cache_size = cache_size
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
    ) -> Self:
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
        self.alerter.set_rules(alerts, policy.watchlist)
        self.policy = policy
        self.shadow = shadow
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

    def check_schema(self, raw: Any) -> None:
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
                    "event.reason": str(Reason.SCHEMA_DRIFT),
                    "message": found.message,
                    "accessguard.schema.undeclared": list(found.undeclared),
                    "accessguard.schema.missing": list(found.missing),
                    "accessguard.schema.missing_tables": list(found.missing_tables),
                    "accessguard.policy.version": self.policy.version,
                }
            )
        with contextlib.suppress(Exception):  # -W error must not turn a report into a refusal
            warnings.warn(found.message, SchemaDriftWarning, stacklevel=4)

    def close(self) -> None:
        """Flush the access ledger and release what the guard holds."""
        self.closed = True
        try:
            self.ledger.close()
        finally:
            self.alerter.close()
            if self.throttle is not None:
                self.throttle.close()
            for owned in (self.tickets, self.breakglass, self.ledger.sink, self.auditor.sink):
                close = getattr(owned, "close", None)
                if callable(close):
                    close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def ledger_refused(self, accesses: tuple[Access, ...], error: AuditError) -> None:
        """Audit a statement the ledger could not record (``Refusals`` writes the event)."""
        raise NotImplementedError


def _ledger_sink(ledger: AuditSink | str | Path, spool: str | Path | None) -> AuditSink:
    """A sink object, a JSON-lines file path, or a PostgreSQL DSN (the PostgresSink)."""
    if isinstance(ledger, str) and ledger.startswith(("postgresql://", "postgres://")):
        from accessguard.audit.pgsink import PostgresSink

        sink = PostgresSink(ledger, spool=spool)
        # an insert-only role cannot create the table: it was set up already;
        # if not, the construction check (PostgresSink.check) says so
        with contextlib.suppress(Exception):
            sink.setup()
        return sink
    return as_sink(ledger)
