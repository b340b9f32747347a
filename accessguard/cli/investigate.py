"""``accessguard audit who-read / who-tried / what-read / subject-export / after-close``.

With DuckDB missing, a file trail is read into Python as before
(``accessguard.investigate``), and the command says so on stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from accessguard.investigate import (
    Engine,
    Entry,
    Export,
    LateRead,
    Window,
    available,
    open_engine,
    reads_after_close,
    subject_export,
    what_read,
    who_read,
    who_tried,
)
from accessguard.investigate import sums as investigate
from accessguard.investigate.closings import marked, reads_after_close_in, spans_of
from accessguard.investigate.sums import Attempt, Reader, Touch

#: the heading of the refused attempts under the readers (who-read, subject-export's text)
_TRIED = "\nrefused while naming it (who tried and failed):\n"

FALLBACK = (
    "accessguard: DuckDB is not installed (pip install 'accessguard[investigate]'): "
    "reading the whole trail into Python instead"
)


def run(
    args: argparse.Namespace,
    out: IO[str] | None = None,
    *,
    check: Callable[[Engine | None], object] | None = None,
) -> int:
    """Answer one question; 0 on success (ValueError/OSError for the CLI to report).

    ``check`` verifies the source before the question is asked: it is handed the
    engine once it is open (None on the in-Python path), so the PostgreSQL sink is
    verified in the snapshot its answers come from.
    """
    out = out or sys.stdout
    if args.audit_command == "index":
        return _index(args, out)
    window = Window.of(
        since=args.since,
        start=getattr(args, "from_", None),
        end=getattr(args, "until", None),
        now=dt.datetime.now(dt.UTC),
    )
    scope = "product" if getattr(args, "product", False) else "customer"
    if args.dsn is None and not available():
        if check is not None:
            check(None)
        sys.stderr.write(FALLBACK + "\n")
        return _in_python(args, window, scope, out)
    engine = open_engine(
        audit=args.audit,
        dsn=args.dsn,
        index=getattr(args, "index", None),
        use_index=not getattr(args, "no_index", False),
    )
    try:
        if check is not None:
            check(engine)
        note = getattr(engine, "note", None)
        if note:
            sys.stderr.write(f"accessguard: {note}\n")
        if args.audit_command == "after-close":
            customer = None if args.customer is None else str(_id(args.customer))
            late = reads_after_close(
                engine,
                window=window,
                customer=customer,
                scope=scope,
                grace=_grace(args.grace),
            )
            _write_late(late, args, out)
            return 0
        if args.audit_command == "subject-export":
            export = subject_export(engine, customer=_id(args.customer), window=window, scope=scope)
            write_export(export, args, out)
            return 0
        rows: list[Reader] | list[Touch]
        if args.audit_command == "who-tried":
            tried = who_tried(engine, customer=_id(args.customer), window=window, scope=scope)
            _write_attempts(tried, args, out)
            return 0
        if args.audit_command == "who-read":
            rows = who_read(engine, customer=_id(args.customer), window=window, scope=scope)
            tried = []
            if args.format == "text":  # (scripts ask who-tried: the JSON rows stay readers)
                tried = who_tried(engine, customer=_id(args.customer), window=window, scope=scope)
            _write_rows(rows, args, out, tried)
        else:
            rows = what_read(engine, user=args.user, window=window)
            _write_rows(rows, args, out)
    finally:
        engine.close()
    return 0


def _grace(text: str) -> dt.timedelta:
    """--grace: a duration, or 0 (every read after the closing counts)."""
    return dt.timedelta(0) if text.strip() == "0" else investigate.parse_since(text)


def _write_late(rows: list[LateRead], args: argparse.Namespace, out: IO[str]) -> None:
    if args.format == "json":
        out.write(json.dumps([r.as_dict() for r in rows], indent=2) + "\n")
        return
    if not rows:
        out.write("no reads after a ticket closed\n")
        return
    for r in rows:
        e = r.entry
        out.write(
            f"{_when(e.last)}  {e.user}  {e.ticket or '-'}  {r.scope} {r.subject}  "
            f"{r.seconds_after:,.0f} s after the ticket closed ({_when(r.closed.at)}"
            f"{', by ' + r.closed.by if r.closed.by else ''})  statements={e.statements}  "
            f"rows={e.rows}  {', '.join(e.columns)}\n"
        )


def _write_rows(
    rows: list[Reader] | list[Touch],
    args: argparse.Namespace,
    out: IO[str],
    tried: list[Attempt] | None = None,
) -> None:
    if args.format == "json":
        out.write(json.dumps([r.as_dict() for r in rows], indent=2) + "\n")
        return
    out.write((investigate.render_table(rows) if rows else "no reads recorded") + "\n")
    if tried:
        out.write(_TRIED + investigate.render_attempts(tried) + "\n")


def _write_attempts(rows: list[Attempt], args: argparse.Namespace, out: IO[str]) -> None:
    if args.format == "json":
        out.write(json.dumps([r.as_dict() for r in rows], indent=2) + "\n")
    else:
        out.write((investigate.render_attempts(rows) if rows else "no refused attempts") + "\n")


def _index(args: argparse.Namespace, out: IO[str]) -> int:
    """Bring the trail's index, or the sink's hourly rollup, up to date."""
    started = time.perf_counter()
    if args.dsn is not None:
        from accessguard.investigate.rollup import RollupRefused, refresh

        try:
            done = refresh(args.dsn)
        except RollupRefused as exc:
            sys.stderr.write(f"accessguard: {exc}\n")
            return 1
        if done.upto <= done.start:
            out.write(f"accessguard.ledger_hours: up to date (event {done.upto})\n")
            return 0
        out.write(
            f"accessguard.ledger_hours: rolled up events {done.start + 1}..{done.upto} "
            f"into {done.rows} rows in {done.seconds:.1f} s\n"
        )
        return 0
    if not available():
        sys.stderr.write(
            "accessguard: audit index needs DuckDB: pip install 'accessguard[investigate]'\n"
        )
        return 2
    from accessguard.investigate.trail import TrailEngine

    engine = TrailEngine(args.audit, index=args.index)
    engine.close()
    if engine.note:
        sys.stderr.write(f"accessguard: {engine.note}\n")
        return 1
    out.write(f"{engine.name}: up to date in {time.perf_counter() - started:.1f} s\n")
    return 0


def _id(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--customer takes a whole number, not {text!r}") from None


# ---------------------------------------------------------------------- export


def write_export(export: Export, args: argparse.Namespace, out: IO[str]) -> None:
    target: Path | None = getattr(args, "out", None)
    fmt = args.format
    if target is not None:
        with target.open("w", encoding="utf-8") as fh:
            _render(export, fmt, fh)
        out.write(f"wrote {target}\n")
    else:
        _render(export, fmt, out)


def _render(export: Export, fmt: str, fh: IO[str]) -> None:
    if fmt == "json":
        head = json.dumps(export.head(), indent=1)
        fh.write(head[:-2] + ',\n "entries": [')  # the entries stream: never all in memory
        for n, entry in enumerate(export.entries):
            fh.write(("\n  " if n == 0 else ",\n  ") + json.dumps(entry.as_dict()))
        fh.write("\n ]\n}\n")
    elif fmt == "html":
        _html(export, fh)
    else:
        fh.write(f"{export.scope} {export.subject}: read by\n")
        fh.write(
            (investigate.render_table(export.readers) if export.readers else "no reads recorded")
            + "\n"
        )
        if export.attempts:
            fh.write(_TRIED + investigate.render_attempts(export.attempts) + "\n")
        fh.write("\nentries:\n")
        for entry in export.entries:
            fh.write(_line(entry) + "\n")


def _when(value: dt.datetime | None) -> str:
    return "-" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _line(entry: Entry) -> str:
    late = (
        f"  AFTER ITS TICKET CLOSED ({_when(entry.ticket_closed)})"
        if entry.ticket_closed is not None
        else ""
    )
    return (
        f"{_when(entry.first)}  {_when(entry.last)}  {entry.user}  {entry.ticket or '-'}"
        f"  {entry.ticket_kind or '-'}  statements={entry.statements}  rows={entry.rows}"
        f"  {', '.join(entry.columns)}{late}"
    )


_STYLE = (
    "body{font:13px system-ui,sans-serif;margin:2em}table{border-collapse:collapse;"
    "margin-bottom:2em}td,th{border:1px solid #bbb;padding:2px 6px;text-align:left}"
    "td.n{text-align:right}@media print{body{margin:0}}"
)


def _html(export: Export, fh: IO[str]) -> None:
    esc = html.escape
    title = f"Everything read about {export.scope} {export.subject}"
    span = f"{export.window.start or 'the start'} to {export.window.end or 'now'}"
    fh.write(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{esc(title)}</h1>"
        f"<p>From {esc(str(span))}, from the access ledger.</p><h2>Who read it</h2>"
    )
    _table(
        fh,
        ("employee", "roles", "ticket", "kind", "statements", "rows", "first", "last", "columns"),
        (
            (
                r.user,
                ", ".join(r.roles),
                r.ticket or "-",
                r.ticket_kind or "-",
                r.statements,
                r.rows,
                _when(r.first),
                _when(r.last),
                ", ".join(r.columns),
            )
            for r in export.readers
        ),
    )
    fh.write("<h2>Who tried and was refused</h2>")
    _table(
        fh,
        ("employee", "ticket", "kind", "outcome", "reason", "attempts", "first", "last", "columns"),
        (
            (
                a.user,
                a.ticket or "-",
                a.ticket_kind or "-",
                a.outcome,
                a.reason,
                a.attempts,
                _when(a.first),
                _when(a.last),
                ", ".join(a.columns),
            )
            for a in export.attempts
        ),
    )
    fh.write("<h2>Every entry</h2>")
    _table(
        fh,
        (
            "first",
            "last",
            "employee",
            "ticket",
            "kind",
            "statements",
            "rows",
            "columns",
            "after its ticket closed",
        ),
        (
            (
                _when(e.first),
                _when(e.last),
                e.user or "-",
                e.ticket or "-",
                e.ticket_kind or "-",
                e.statements,
                e.rows,
                ", ".join(e.columns),
                "" if e.ticket_closed is None else f"yes: closed {_when(e.ticket_closed)}",
            )
            for e in export.entries
        ),
    )
    fh.write("</body></html>\n")


def _table(fh: IO[str], heads: tuple[str, ...], rows: Iterable[Iterable[Any]]) -> None:
    """One HTML table, written row by row (the entries stream: never all in memory)."""
    fh.write("<table>" + _cells(heads, "th"))
    for row in rows:
        fh.write(_cells(row, "td"))
    fh.write("</table>")


def _cells(cells: Iterable[Any], tag: str) -> str:
    parts = "".join(
        f"<{tag}{' class=n' if isinstance(c, int) else ''}>{html.escape(str(c))}</{tag}>"
        for c in cells
    )
    return f"<tr>{parts}</tr>"


# ---------------------------------------------------------------------- fallback


def _in_python(args: argparse.Namespace, window: Window, scope: str, out: IO[str]) -> int:
    """The old path (no DuckDB): every event of the trail in Python, ``investigate``'s answers."""
    everything = list(investigate.events_from_file(args.audit))
    if args.audit_command == "after-close":
        customer = None if args.customer is None else str(_id(args.customer))
        late = reads_after_close_in(
            everything, window=window, customer=customer, scope=scope, grace=_grace(args.grace)
        )
        _write_late(late, args, out)
        return 0
    events = [e for e in everything if window.holds(investigate.event_time(e))]
    if args.audit_command == "what-read":
        _write_rows(investigate.what_read(events, user=args.user, since=None), args, out)
        return 0
    customer_id = _id(args.customer)
    tried = investigate.who_tried(events, customer=customer_id, scope=scope)
    if args.audit_command == "who-tried":
        _write_attempts(tried, args, out)
        return 0
    readers = investigate.who_read(events, customer=customer_id, since=None, scope=scope)
    if args.audit_command == "who-read":
        _write_rows(readers, args, out, tried if args.format == "text" else None)
        return 0
    mine = [
        e
        for e in investigate.ledger_entries(events, None)
        if e.get("accessguard.subject.kind") == scope
        and str(e["accessguard.subject.id"]) == str(customer_id)
    ]
    spans = spans_of(everything, {r.ticket for r in readers if r.ticket is not None})
    entries = sorted(
        marked((Entry.of_event(e) for e in mine), spans),
        key=lambda x: (x.first or _EPOCH, x.last or _EPOCH),
    )
    export = Export(
        scope=scope,
        subject=customer_id,
        window=window,
        readers=readers,
        entries=iter(entries),
        attempts=tried,
    )
    write_export(export, args, out)
    return 0


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
