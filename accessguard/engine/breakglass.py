"""Break-glass: a time-boxed, justified elevation, reviewed afterwards.

An emergency kind is a ticket kind of policy.csv named ``break_glass`` (or
``break_glass.<name>``): its rules grant nothing to an ordinary ticket
flow, they are the elevation's own rules::

    p, support_agent, break_glass, customers.phone, read

``guard.break_glass(user, scope, minutes, reason)`` opens an elevation: the
employee holds a role with rules of ``scope.kind``, ``minutes`` is 1 to
``MAX_MINUTES``, ``reason`` a written justification (``MIN_REASON`` to
``MAX_REASON`` characters of text). It is audited (``elevation.open``,
critical) before it exists, and returns an ``Elevation`` whose ``ticket`` is
the id to connect with (``guard.connect(dsn, user=..., ticket=e.ticket)``).

Under it every statement is decided like one under a ticket of the
emergency kind about the scope's customer (or product): parsed, allowed by
the elevation's rules only, row-scoped to its subject, throttled, counted
in the ledger; and each one, allowed or refused, writes a critical audit
event carrying ``accessguard.elevation.id``. A ticket of an emergency kind
from the ticket system is treated the same way (critical, reviewed): the
ticket system opened it.

The elevation is looked up in its store (``accessguard.tickets.elevations``) on
every statement and its status worked out against the guard's clock, so it
stops at ``expires`` and at ``revoke`` on the very next statement, in every
thread and (with a shared store) every process; the refusal is
``ticket.not_open`` ("Ticket BG-... is revoked, not open.").
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from accessguard.audit.chain import load_key
from accessguard.errors import AccessDenied, AccessGuardError, Reason
from accessguard.tickets.elevations import ElevationRecord, ElevationStore, as_elevation_store
from accessguard.tickets.stores import Ticket, TicketStoreUnavailable

if TYPE_CHECKING:
    from accessguard.audit.ledger import Ledger
    from accessguard.audit.sinks import Auditor
    from accessguard.engine.plan import Session
    from accessguard.policy.rules import Policy


class ElevationHost(Protocol):
    """What elevations need of the gate (``Gate`` is one): its clock and trail, binding."""

    @property
    def auditor(self) -> Auditor: ...

    @property
    def ledger(self) -> Ledger: ...

    @property
    def policy(self) -> Policy: ...

    def bind(self, user: object, ticket: object = None) -> Session: ...


__all__ = [
    "EMERGENCY_KIND",
    "ID_PREFIX",
    "MAX_MINUTES",
    "BreakGlass",
    "Elevation",
    "Scope",
    "critical_fields",
    "is_elevation",
    "is_emergency",
]

EMERGENCY_KIND = "break_glass"
#: elevation ids (the ticket id statements are made under) start with this
ID_PREFIX = "BG-"
MAX_MINUTES = 240
MIN_REASON = 10
MAX_REASON = 500


def is_emergency(kind: str | None) -> bool:
    """Whether ``kind`` is an emergency ticket kind (its rules apply under an elevation)."""
    return kind is not None and (kind == EMERGENCY_KIND or kind.startswith(EMERGENCY_KIND + "."))


def is_elevation(ticket_id: str | None) -> bool:
    """Whether ``ticket_id`` names an elevation rather than a ticket of the ticket system."""
    return ticket_id is not None and ticket_id.startswith(ID_PREFIX)


def critical_fields(ticket: Ticket | None) -> dict[str, Any]:
    """What every audit event of a statement under an elevation carries; {} for others."""
    if ticket is None or not is_emergency(ticket.kind):
        return {}
    return {"log.level": "critical", "accessguard.elevation.id": ticket.id}


@dataclass(frozen=True, slots=True, kw_only=True)
class Scope:
    """What an elevation reaches: the rules of ``kind``, for one customer and/or product."""

    kind: str = EMERGENCY_KIND
    customer_id: int | None = None
    product_id: int | None = None

    @classmethod
    def of(cls, scope: Scope | Mapping[str, Any]) -> Scope:
        if isinstance(scope, Scope):
            return scope
        if not isinstance(scope, Mapping):
            raise TypeError("scope is a Scope or a mapping with kind, customer_id, product_id")
        unknown = set(scope) - {"kind", "customer_id", "product_id"}
        if unknown:
            raise TypeError("scope takes kind, customer_id and product_id only")
        return cls(**dict(scope))


class Elevation:
    """An open elevation: ``ticket`` to connect with, ``revoke()`` to end it at once."""

    __slots__ = ("_breakglass", "record")

    def __init__(self, breakglass: BreakGlass, record: ElevationRecord) -> None:
        self._breakglass = breakglass
        self.record = record

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def ticket(self) -> str:
        """The ticket id statements under the elevation are made with."""
        return self.record.id

    @property
    def expires(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.record.expires, dt.UTC)

    def status(self) -> str:
        """``open``, ``expired`` or ``revoked``, as the store says now."""
        return self._breakglass.status(self.record.id)

    def revoke(self, *, by: str | None = None) -> None:
        """End the elevation: the next statement under it is refused."""
        self._breakglass.revoke(self.record.id, by=by)

    def __repr__(self) -> str:
        return f"<Elevation {self.record.id} of {self.record.user} until {self.expires}>"


class BreakGlass:
    """The guard's elevations: opening, look-up on every statement, revocation."""

    def __init__(self, guard: ElevationHost, store: ElevationStore | str | None = None) -> None:
        self.guard = guard
        self.store = as_elevation_store(store, key=load_key())  # records MAC'd with the audit key
        self._closed_seen: set[str] = set()
        #: elevations this process has seen revoked: never open again here, whatever the
        #: store says later (a revocation deleted from a shared store is tampering)
        self._revoked_seen: set[str] = set()
        self._lock = threading.Lock()

    def now(self) -> float:
        return self.guard.auditor.clock().timestamp()

    # ------------------------------------------------------------------ opening

    def open(
        self, user: str, scope: Scope | Mapping[str, Any], minutes: int, reason: str
    ) -> Elevation:
        """Open an elevation (audited first); AccessDenied ``elevation.refused`` when it may not."""
        session = self.guard.bind(user)
        problem = None
        try:
            scope = Scope.of(scope)
        except TypeError as exc:
            problem = str(exc)
        else:
            problem = self._problem(session.user, scope, minutes, reason)
        if problem is not None:
            message = f"Refused: cannot open an elevation: {problem}."
            self._emit(
                "elevation.open",
                session.user,
                outcome="failure",
                message=message,
                extra={"event.reason": str(Reason.ELEVATION_REFUSED)},
            )
            raise AccessDenied(message, reason=Reason.ELEVATION_REFUSED)
        assert isinstance(scope, Scope)  # noqa: S101 - Scope.of succeeded above
        opened = self.now()
        record = ElevationRecord(
            id=ID_PREFIX + secrets.token_hex(8),
            user=session.user,
            kind=scope.kind,
            customer_id=scope.customer_id,
            product_id=scope.product_id,
            reason=reason.strip(),
            opened=opened,
            expires=opened + 60 * minutes,
        )
        self._emit(  # the trail first: no elevation exists that the audit does not show
            "elevation.open",
            session.user,
            outcome="success",
            message=f"{session.user} opened elevation {record.id} for {minutes} minutes",
            record=record,
            extra={
                "accessguard.elevation.reason": record.reason,
                "accessguard.elevation.minutes": minutes,
                "accessguard.elevation.expires": _iso(record.expires),
            },
        )
        self.store.put(record)
        return Elevation(self, record)

    def _problem(self, user: str, scope: Scope, minutes: object, reason: object) -> str | None:
        policy = self.guard.policy
        if not is_emergency(scope.kind):
            return f"{scope.kind!r} is not an emergency kind ({EMERGENCY_KIND}[.NAME])"
        roles = policy.roles_of(user)
        if not any(policy.grants.get((role, scope.kind)) for role in roles):
            return f"no rule of {scope.kind} names a role of {user}"
        subjects = (scope.customer_id, scope.product_id)
        if all(s is None for s in subjects) or any(
            s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 0)
            for s in subjects
        ):
            return "the scope names no customer or product id (non-negative integers)"
        if isinstance(minutes, bool) or not isinstance(minutes, int):
            return "minutes is a whole number"
        if not 1 <= minutes <= MAX_MINUTES:
            return f"minutes is 1 to {MAX_MINUTES}"
        if not isinstance(reason, str):
            return "the reason is text"
        text = reason.strip()
        if not MIN_REASON <= len(text) <= MAX_REASON:
            return f"the reason is {MIN_REASON} to {MAX_REASON} characters of justification"
        if not text.replace("\n", " ").isprintable():
            return "the reason holds control characters"
        return None

    # ------------------------------------------------------------------ every statement

    def ticket(self, elevation_id: str) -> Ticket | None:
        """The elevation as a ticket now: open, ``expired`` or ``revoked``; None if unknown.

        The first time this process sees it ended, the closing is audited.
        """
        record = self.store.get(elevation_id)
        if record is None:
            return None
        status = record.status(self.now())
        if status == "revoked":
            self._revoked_seen.add(record.id)
        elif record.id in self._revoked_seen:
            raise TicketStoreUnavailable(
                f"the elevation store no longer holds the revocation of {elevation_id} "
                "this process saw (tampered?)"
            )
        if status != "open":
            self._closing(record, status)
        return Ticket(
            id=record.id,
            assignee=record.user,
            kind=record.kind,
            status=status,
            customer_id=record.customer_id,
            product_id=record.product_id,
        )

    def status(self, elevation_id: str) -> str:
        record = self.store.get(elevation_id)
        return "unknown" if record is None else record.status(self.now())

    # ------------------------------------------------------------------ ending

    def revoke(self, elevation: Elevation | str, *, by: str | None = None) -> None:
        """Revoke now (in the store first, so it holds even if the audit then fails)."""
        elevation_id = elevation.id if isinstance(elevation, Elevation) else elevation
        if not is_elevation(elevation_id):
            raise AccessDenied("Refused: not an elevation id.", reason=Reason.ELEVATION_REFUSED)
        record = self.store.revoke(elevation_id, at=self.now(), by=by)
        if record is None:
            raise AccessDenied(
                f"Refused: there is no elevation {elevation_id}.", reason=Reason.ELEVATION_REFUSED
            )
        status = record.status(self.now())
        if status == "revoked":
            self._revoked_seen.add(record.id)
        self._closing(record, status)

    def _closing(self, record: ElevationRecord, status: str) -> None:
        with self._lock:
            if record.id in self._closed_seen:
                return
            self._closed_seen.add(record.id)
        ended = record.revoked if status == "revoked" and record.revoked else record.expires
        extra: dict[str, Any] = {
            "accessguard.elevation.status": status,
            "accessguard.elevation.closed": _iso(ended),
        }
        if record.revoked_by is not None:
            extra["accessguard.elevation.revoked_by"] = record.revoked_by
        with contextlib.suppress(AccessGuardError):  # the statement's own event still follows
            self._emit(
                "elevation.close",
                record.user,
                outcome="success",
                message=f"elevation {record.id} {status}",
                record=record,
                extra=extra,
            )

    def _emit(  # noqa: PLR0913 - keyword-only parts of one event
        self,
        action: str,
        user: str,
        *,
        outcome: str,
        message: str,
        record: ElevationRecord | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        fields: dict[str, Any] = {
            "event.kind": "event",
            "event.category": ["iam"],
            "event.type": ["start" if action == "elevation.open" else "end"],
            "event.action": action,
            "event.outcome": outcome,
            "log.level": "critical",
            "message": message,
            "user.name": user,
            "user.roles": sorted(self.guard.policy.roles_of(user)),
            "accessguard.policy.version": self.guard.policy.version,
        }
        if record is not None:
            subjects = [
                {"kind": kind, "id": self.guard.ledger.pseudonym(subject)}
                for kind, subject in (
                    ("customer", record.customer_id),
                    ("product", record.product_id),
                )
                if subject is not None
            ]
            fields |= {
                "accessguard.elevation.id": record.id,
                "accessguard.ticket.id": record.id,
                "accessguard.ticket.kind": record.kind,
                "accessguard.elevation.opened": _iso(record.opened),
                "accessguard.subjects": subjects,
            }
        fields.update(extra or {})
        self.guard.auditor.emit(**fields)

    def close(self) -> None:
        close = getattr(self.store, "close", None)
        if callable(close):
            close()


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")
