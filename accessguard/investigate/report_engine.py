"""The access report served by an engine: a month is summed where it lives, never loaded.

The ledger entries (almost all of a trail) are summed by the engine that
answers who-read and what-read (DuckDB over the trail's index, SQL over the
PostgreSQL sink): per employee (``Engine.volumes``), per customer
(``Engine.reach``, then ``Engine.readers_of`` for the top ones), per period
(``Engine.timeline``) and per hour and day for the peer baselines
(``Engine.buckets``). The events that are not ledger entries (refusals,
throttles, watch-list notices, alerts, elevations, ticket lifecycle: a small
fraction) are read one by one from ``Engine.others`` and folded as the
in-Python report folds them. The break-glass queue also needs the ledger
entries of its elevations and emergency tickets: ``Engine.by_tickets``.

The page is the one ``write_report`` draws from events (the same
``Summary``, sections and HTML).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from accessguard.engine.breakglass import EMERGENCY_KIND
from accessguard.investigate.baselines import Collector
from accessguard.investigate.core import Engine, Group, Window, subject_of
from accessguard.investigate.report import TITLE, render_report
from accessguard.investigate.summary import (
    Bucket,
    Readers,
    Reads,
    Summary,
    Tally,
    assemble,
    bucket_size,
)
from accessguard.investigate.sums import Event, aware, subject_key

__all__ = ["engine_summary", "write_engine_report"]


def engine_summary(
    engine: Engine, *, since: dt.datetime | None, top: int = 20, peers: Collector | None = None
) -> Summary:
    """``summarize``'s answer, with the ledger summed by ``engine`` (``peers`` folds the others)."""
    since = aware(since)
    window = Window(start=since)
    tally = Tally(since)
    for event in engine.others():
        tally.add(event)
        if peers is not None:
            peers.add(event)
    reads: dict[str, Reads] = {}
    for v in engine.volumes(window):
        tally.roles[v.user].update(v.roles)
        tally.seen(v.first)
        tally.seen(v.last)
        reads[v.user] = Reads(
            customers=v.customers,
            products=v.products,
            tickets=v.tickets,
            statements=v.statements,
            rows=v.rows,
        )
    reach = sorted(
        engine.reach("customer", window),
        key=lambda r: (-r.readers, -r.rows, subject_key(subject_of(r.subject))),
    )
    chosen = reach[:top]
    readers: dict[str, list[str]] = {r.subject: [] for r in chosen}
    for subject, user in engine.readers_of("customer", list(readers), window):
        readers[subject].append(user)
    size = bucket_size(tally.start, tally.end)
    cells = engine.timeline(window, int(size.total_seconds()))
    return assemble(
        tally,
        reads,
        customers=len(reach),
        top_customers=tuple(
            Readers(
                customer=subject_of(r.subject),
                readers=tuple(sorted(readers[r.subject])),
                statements=r.statements,
                rows=r.rows,
            )
            for r in chosen
        ),
        size=size,
        timeline=tuple(
            sorted(
                (
                    Bucket(
                        user=c.user,
                        start=c.start,
                        customers=c.customers,
                        rows=c.rows,
                        statements=c.statements,
                    )
                    for c in cells
                ),
                key=lambda b: (b.user, b.start),
            )
        ),
    )


def _elevated(groups: list[Group]) -> Iterator[Event]:
    """Ledger groups as the ledger events the review queue folds (sums and unions compose)."""
    for g in groups:
        event: dict[str, Any] = {
            "event.action": "ledger",
            "accessguard.outcome": "allowed",
            "user.name": g.user,
            "accessguard.ticket.id": g.ticket,
            "accessguard.ticket.kind": g.ticket_kind,
            "accessguard.subject.kind": g.scope,
            "accessguard.subject.id": g.subject,
            "accessguard.rows": g.rows,
            "accessguard.tables": list(g.tables),
            "accessguard.columns": list(g.columns),
            # its earliest statement: when the queue first saw an emergency ticket
            "accessguard.last": None if g.first is None else g.first.isoformat(),
        }
        yield event


def write_engine_report(
    engine: Engine,
    out: str | Path,
    *,
    since: dt.datetime | None = None,
    title: str = TITLE,
    generated: dt.datetime | None = None,
) -> Summary:
    """Write the report to ``out`` from ``engine``'s answers; return its summary."""
    from accessguard.investigate.elevations import render_html, review

    made = generated or dt.datetime.now(dt.UTC)
    queue = review(_review_events(engine), since=since, now=made)
    peers = Collector(since)
    summary = engine_summary(engine, since=since, peers=peers)
    for unit in ("hour", "day"):  # the ledger's hours and days, summed by the engine
        peers.given[unit] = list(engine.buckets(Window(start=aware(since)), unit))
    page = render_report(
        summary, title=title, generated=made, elevations=render_html(queue), peers=peers
    )
    Path(out).write_text(page, encoding="utf-8")
    return summary


def _review_events(engine: Engine) -> Iterator[Event]:
    """The events that are not ledger entries, then the ledger of elevations and emergencies."""
    elevations: set[str] = set()
    for event in engine.others():
        found = event.get("accessguard.elevation.id")
        if isinstance(found, str):
            elevations.add(found)
        yield event
    yield from _elevated(list(engine.by_tickets(sorted(elevations), EMERGENCY_KIND)))
