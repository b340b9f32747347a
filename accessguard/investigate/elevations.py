"""The break-glass review queue: each elevation, who, why, when, how long, and what it read.

Built from the audit trail alone: the ``elevation.open`` and
``elevation.close`` events, every statement event carrying
``accessguard.elevation.id`` (each statement under an elevation writes one,
allowed or refused), and the ledger entries of the elevation's ticket id
(rows counted at the cursor). A ticket of an emergency kind opened in the
ticket system appears too, with no justification of its own (the ticket is
it). ``accessguard audit elevations`` prints it; ``accessguard audit
report`` shows it as its first section.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from accessguard.engine.breakglass import is_emergency
from accessguard.investigate.sums import Event, event_time, parse_time

__all__ = ["Review", "render_html", "render_text", "review"]


@dataclass(slots=True, kw_only=True)
class Review:
    """One elevation in the review queue."""

    id: str
    user: str | None = None
    kind: str | None = None
    reason: str | None = None
    opened: dt.datetime | None = None
    expires: dt.datetime | None = None
    minutes: int | None = None
    closed: dt.datetime | None = None
    status: str = "open"
    revoked_by: str | None = None
    statements: int = 0
    refused: int = 0
    rows: int = 0
    tables: set[str] = field(default_factory=set)
    columns: set[str] = field(default_factory=set)
    subjects: set[tuple[str, str]] = field(default_factory=set)
    #: reason code -> how many statements under it were refused or throttled so
    refusals: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        def iso(value: dt.datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        return {
            "elevation": self.id,
            "user": self.user,
            "kind": self.kind,
            "reason": self.reason,
            "opened": iso(self.opened),
            "expires": iso(self.expires),
            "minutes": self.minutes,
            "closed": iso(self.closed),
            "status": self.status,
            "revoked_by": self.revoked_by,
            "statements": self.statements,
            "refused": self.refused,
            "rows": self.rows,
            "tables": sorted(self.tables),
            "columns": sorted(self.columns),
            "subjects": [f"{kind}:{ident}" for kind, ident in sorted(self.subjects)],
            "refusals": dict(sorted(self.refusals.items())),
        }


def _strs(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list | tuple) else []


def _subjects(event: Event) -> set[tuple[str, str]]:
    found = set()
    for item in event.get("accessguard.subjects") or ():
        if isinstance(item, dict) and item.get("id") is not None:
            found.add((str(item.get("kind")), str(item["id"])))
    if event.get("accessguard.subject.id") is not None:
        found.add(
            (str(event.get("accessguard.subject.kind")), str(event["accessguard.subject.id"]))
        )
    return found


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def review(
    events: Iterable[Event], *, since: dt.datetime | None = None, now: dt.datetime | None = None
) -> list[Review]:
    """The review queue, oldest elevation first (``since``: those still open or ended since)."""
    queue: dict[str, Review] = {}
    for event in events:
        _fold(queue, event)
    moment = now or dt.datetime.now(dt.UTC)
    for item in queue.values():
        if item.status == "open" and item.expires is not None and moment >= item.expires:
            item.status, item.closed = "expired", item.expires
    items = sorted(queue.values(), key=lambda r: (r.opened or moment, r.id))
    if since is not None:
        items = [r for r in items if (r.closed or moment) >= since]
    return items


def _fold(queue: dict[str, Review], event: Event) -> None:
    """Fold one audit event into the queue (events of no elevation are skipped)."""
    action = event.get("event.action")
    if action == "ledger":
        ticket_id = event.get("accessguard.ticket.id")
        if ticket_id is None or not (
            is_emergency(_opt(event.get("accessguard.ticket.kind"))) or ticket_id in queue
        ):
            return
        item = queue.setdefault(str(ticket_id), Review(id=str(ticket_id)))
        item.rows += _int(event.get("accessguard.rows"))
    else:
        elevation_id = event.get("accessguard.elevation.id")
        if action not in _ACTIONS or not isinstance(elevation_id, str):
            return
        item = queue.setdefault(elevation_id, Review(id=elevation_id))
        if action == "elevation.open":
            if event.get("event.outcome") != "success":
                return
            item.reason = _opt(event.get("accessguard.elevation.reason"))
            item.opened = parse_time(event.get("accessguard.elevation.opened"))
            item.expires = parse_time(event.get("accessguard.elevation.expires"))
            item.minutes = _int(event.get("accessguard.elevation.minutes")) or None
        elif action == "elevation.close":
            item.status = str(event.get("accessguard.elevation.status") or "closed")
            item.closed = parse_time(event.get("accessguard.elevation.closed"))
            item.revoked_by = _opt(event.get("accessguard.elevation.revoked_by"))
        elif event.get("accessguard.outcome") != "allowed":
            item.refused += 1  # a query denied or throttled: one event each
            code = str(event.get("event.reason"))
            item.refusals[code] = item.refusals.get(code, 0) + 1
        elif event.get("accessguard.elevation.statement") is True:
            item.statements += 1  # the one review event of each allowed statement
        # else: the same statement's audit_allowed, watch-list or shadow event
    item.user = item.user or _opt(event.get("user.name"))
    item.kind = item.kind or _opt(event.get("accessguard.ticket.kind"))
    if action in ("ledger", "query") and event.get("accessguard.outcome") == "allowed":
        item.tables.update(_strs(event.get("accessguard.tables")))  # read, not only tried
        item.columns.update(_strs(event.get("accessguard.columns")))
        item.subjects |= _subjects(event)
    item.opened = item.opened or event_time(event)


_ACTIONS = frozenset({"elevation.open", "elevation.close", "query"})


def _opt(value: object) -> str | None:
    return None if value is None else str(value)


def _when(value: dt.datetime | None) -> str:
    return "-" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def render_text(items: Sequence[Review]) -> str:
    """One block per elevation, for a terminal."""
    if not items:
        return "no elevations"
    lines = []
    for r in items:
        lines += [
            f"{r.id}  {r.user or '?'}  {r.kind or '?'}  {r.status}",
            f"  why:   {r.reason or '(a ticket of an emergency kind from the ticket system)'}",
            f"  when:  {_when(r.opened)} for {r.minutes or '?'} min, ended {_when(r.closed)}"
            + (f" (revoked by {r.revoked_by})" if r.revoked_by else ""),
            (
                f"  read:  {_count(r.statements, 'statement')} ({r.refused} refused), "
                f"{_count(r.rows, 'row')}; "
                f"subjects {', '.join(f'{k}:{i}' for k, i in sorted(r.subjects)) or '-'}"
            ),
            f"  cols:  {', '.join(sorted(r.columns)) or '-'}",
        ]
        if r.refusals:
            tried = ", ".join(f"{code} x{n}" for code, n in sorted(r.refusals.items()))
            lines.append(f"  refused: {tried}")
    return "\n".join(lines)


def render_html(items: Sequence[Review]) -> str:
    """The report's section body: a table, every string escaped."""
    if not items:
        return '<p class="note">No break-glass elevation in this period.</p>'
    heads = ("Elevation", "Who", "Why", "Opened", "Minutes", "Ended", "Read", "Rows")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
    rows = []
    for r in items:
        ended = f"{_when(r.closed)} ({r.status}" + (f" by {r.revoked_by})" if r.revoked_by else ")")
        read = (
            f"{r.statements} statements, {r.refused} refused; "
            f"{', '.join(sorted(r.columns)) or '-'}; subjects "
            f"{', '.join(f'{k}:{i}' for k, i in sorted(r.subjects)) or '-'}"
        )
        cells: tuple[object, ...] = (r.id, r.user or "?", r.reason or "(emergency ticket)")
        cells += (_when(r.opened), r.minutes or "-", ended, read, r.rows)
        rows.append(
            '<tr class="elevation">'
            + "".join(f"<td>{html.escape(str(c), quote=True)}</td>" for c in cells)
            + "</tr>"
        )
    return (
        '<p class="note">Every statement under an elevation is audited critical; '
        "review each one.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
