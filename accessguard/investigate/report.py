"""The access report: one self-contained HTML file security can read.

``write_report`` summarises audit events held in Python (small trails and
tests); ``accessguard audit report`` draws the same page from an engine
(accessguard.investigate.report_engine), which never loads a trail. A single
page with inline CSS and inline SVG charts (accessguard.investigate.report_charts):
no scripts, fonts, images or style sheets from anywhere, so it opens with no
network. Every string from the events goes through ``html.escape``. Events
hold no row data; the report shows counts, names, ticket ids, customer ids
and reason codes only (never ``db.query.text``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from pathlib import Path

from accessguard.investigate.baselines import Collector, baselines
from accessguard.investigate.report_charts import OUTLIER, bar_chart, e, line_chart, num
from accessguard.investigate.summary import Employee, Incident, Summary, summarize
from accessguard.investigate.sums import Event

TITLE = "accessguard access report"
BADGE = '<span class="badge">far above peers</span>'
PALETTE = ("#2f6fdf", "#0c8599", "#5f3dc4", "#2b8a3e", "#e67700", "#495057", "#a61e4d", "#1864ab")
CROWD = "#adb5bd"  # every non-outlier line when there are too many to tell apart
#: the outliers' lines: warm, none of them in PALETTE, each outlier its own (then again)
OUTLIERS = (OUTLIER, "#f76707", "#9c36b5", "#d6336c", "#5c940d", "#862e9c")
MAX_COLOURS = len(PALETTE)
TOP_BARS = 30

CSS = """
:root{--ink:#1f2933;--muted:#616e7c;--line:#e4e7eb;--soft:#f5f7fa;--accent:#2f6fdf;
--bad:#c92a2a;--badbg:#fff5f5}
*{box-sizing:border-box}
body{margin:0;background:var(--soft);color:var(--ink);font:15px/1.5 system-ui,-apple-system,
"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans",sans-serif}
main{max-width:1180px;margin:0 auto;padding:32px 28px 48px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:0 0 4px}
h3{font-size:15px;margin:16px 0 6px;color:var(--muted);font-weight:600}
p.lead,.note{color:var(--muted);margin:0 0 14px}
section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:20px 24px;
margin:18px 0}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(160px,1fr));gap:12px;margin-top:18px}
.kpi{background:#fff;border:1px solid var(--line);border-radius:10px;padding:12px 16px;min-width:0}
.kpi b{display:block;font-size:22px;font-variant-numeric:tabular-nums;overflow-wrap:anywhere}
.kpi span{color:var(--muted);font-size:13px}
.kpi.alert{border-color:var(--bad);background:var(--badbg)}
.kpi.alert b{color:var(--bad)}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{text-align:left;padding:7px 10px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);font-weight:600}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#fafbfc}
tr.outlier,tr.outlier:nth-child(even){background:var(--badbg)}tr.outlier td:first-child{
box-shadow:inset 3px 0 0 var(--bad)}
.badge{display:inline-block;margin-left:8px;padding:1px 8px;border-radius:999px;
background:var(--bad);color:#fff;font-size:11px;font-weight:600;letter-spacing:.02em;vertical-align:1px}
.callout{border-left:4px solid var(--bad);background:var(--badbg);padding:10px 14px;
border-radius:6px;margin:8px 0}
.ok{border-left:4px solid #2b8a3e;background:#ebfbee;padding:10px 14px;border-radius:6px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));gap:20px}
.legend{display:flex;flex-wrap:wrap;gap:6px 18px;margin:8px 0 0;padding:0;list-style:none;
font-size:13px}
.legend i{display:inline-block;width:14px;height:4px;border-radius:2px;margin-right:6px;
vertical-align:middle}
svg{display:block;max-width:100%;height:auto;font-family:inherit}
svg text{fill:#616e7c;font-size:12px}svg .grid{stroke:#e9ecef}svg .axis{stroke:#ced4da}
code{font:13px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:var(--soft);
padding:1px 5px;border-radius:4px}
footer{color:var(--muted);font-size:13px;margin-top:24px}
"""


def _when(value: dt.datetime | None) -> str:
    return "-" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


# ---------------------------------------------------------------------- sections


def _table(heads: Sequence[str], rows: Iterable[Sequence[object]], *, numeric: int = 0) -> str:
    """A table whose last ``numeric`` columns are right-aligned numbers; cells are escaped."""
    first_num = len(heads) - numeric

    def cls(i: int) -> str:
        return ' class="n"' if i >= first_num else ""

    head = "".join(f"<th{cls(i)}>{e(h)}</th>" for i, h in enumerate(heads))
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{e(c)}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _colours(summary: Summary) -> dict[str, str]:
    readers = [p for p in summary.employees if p.statements and not p.outlier]
    many = len(readers) > MAX_COLOURS
    colours = {p.user: CROWD if many else PALETTE[i] for i, p in enumerate(readers)}
    colours.update({u: OUTLIERS[i % len(OUTLIERS)] for i, u in enumerate(sorted(summary.outliers))})
    return colours


def _volume(summary: Summary) -> str:
    colours = _colours(summary)
    users = [p.user for p in summary.employees if p.user in colours]
    if not users:
        return "<p class='note'>No ledger entries in this period.</p>"
    index = {b: i for i, b in enumerate(summary.buckets)}
    customers = {u: [0] * len(index) for u in users}
    rows = {u: [0] * len(index) for u in users}
    for b in summary.timeline:
        if b.user in customers:
            customers[b.user][index[b.start]] = b.customers
            rows[b.user][index[b.start]] = b.rows
    strong = set(summary.outliers)
    size = num(summary.bucket / dt.timedelta(hours=1))
    legend = "".join(
        f'<li><i style="background:{colours[u]}"></i>{e(u)}{BADGE if u in strong else ""}</li>'
        for u in users
    )
    charts = "".join(
        f"<h3>{e(what)} per employee, per {e(size)} h</h3>"
        + line_chart(
            summary.buckets,
            [(u, colours[u], data[u], u in strong) for u in users],
            label=f"{what} per employee over time",
        )
        for what, data in (("Distinct customers", customers), ("Rows fetched", rows))
    )
    medians = {r.role: r.median_customers for r in summary.roles}
    ranked = sorted(summary.employees, key=lambda p: (not p.outlier, -p.customers, p.user))
    shown = ranked[:TOP_BARS]
    more = f" (top {TOP_BARS} of {len(ranked)})" if len(ranked) > TOP_BARS else ""
    return (
        f'<ul class="legend">{legend}</ul>{charts}'
        f"<h3>Distinct customers per employee{e(more)}; dashed: median of the role</h3>"
        + bar_chart(
            [(p.user, p.customers) for p in shown],
            label="Distinct customers per employee",
            strong=frozenset(strong),
            marks={p.user: medians[p.role] for p in shown},
        )
    )


def _employee_row(p: Employee) -> str:
    name = e(p.user) + (BADGE if p.outlier else "")
    cells = (p.customers, p.products, p.tickets, p.statements, p.rows, p.refusals, p.throttles)
    nums = "".join(f'<td class="n">{e(f"{c:,}")}</td>' for c in cells)
    why = f'<div class="note">{e(p.why)}</div>' if p.why else ""
    return (
        f'<tr class="{"outlier" if p.outlier else ""}" data-user="{e(p.user)}">'
        f"<td>{name}{why}</td><td>{e(p.role)}</td>{nums}</tr>"
    )


def _employees(summary: Summary) -> str:
    heads = ("Customers", "Products", "Tickets", "Statements", "Rows", "Refusals", "Throttles")
    ordered = sorted(summary.employees, key=lambda p: (not p.outlier, -p.customers, p.user))
    roles = _table(
        ("Role", "Employees", "Median customers", "Median rows"),
        ((r.role, r.employees, num(r.median_customers), num(r.median_rows)) for r in summary.roles),
        numeric=3,
    )
    return (
        '<table class="employees"><thead><tr><th>Employee</th><th>Role</th>'
        + "".join(f'<th class="n">{e(h)}</th>' for h in heads)
        + "</tr></thead><tbody>"
        + "".join(_employee_row(p) for p in ordered)
        + f"</tbody></table><h3>Role medians</h3>{roles}"
    )


def _incidents(items: Sequence[Incident], *, limit: int = 50) -> str:
    latest = sorted(items, key=lambda i: i.time or dt.datetime.min.replace(tzinfo=dt.UTC))
    rows = [
        (_when(i.time), i.user, i.ticket or "-", i.outcome, i.reason, i.detail)
        for i in reversed(latest[-limit:])
    ]
    more = f'<p class="note">Latest {limit} of {len(items)}.</p>' if len(items) > limit else ""
    return more + _table(("Time", "Employee", "Ticket", "Outcome", "Reason", "Detail"), rows)


def _header(summary: Summary, title: str, generated: dt.datetime) -> str:
    since = f"since {_when(summary.since)}; " if summary.since is not None else ""
    kpis = [
        ("Employees", len(summary.employees), False),
        ("Customers read", summary.customers, False),
        ("Statements", summary.statements, False),
        ("Rows fetched", summary.rows, False),
        ("Refusals", summary.refusals, False),
        ("Throttles", summary.throttles, False),
        ("Far above peers", len(summary.outliers), bool(summary.outliers)),
    ]
    cards = "".join(
        f'<div class="kpi{" alert" if alert else ""}"><b>{e(f"{v:,}")}</b><span>{e(k)}</span></div>'
        for k, v, alert in kpis
    )
    if summary.outliers:
        by_user = {p.user: p for p in summary.employees}
        flagged = "".join(
            f'<div class="callout"><b>{e(u)}</b>{BADGE} ({e(by_user[u].role)}): '
            f"{e(by_user[u].why)}</div>"
            for u in summary.outliers
        )
    else:
        flagged = '<div class="ok">No employee is far above the peers of her role.</div>'
    return (
        f"<header><h1>{e(title)}</h1><p class='lead'>{e(since)}activity from "
        f"{e(_when(summary.start))} to {e(_when(summary.end))}; generated "
        f"{e(_when(generated))}</p><div class='kpis'>{cards}</div></header>"
        f"<section id='outliers'><h2>Employees far above their peers</h2>{flagged}</section>"
    )


def _peers(found: Collector | None) -> str:
    """Employees against their role's peers per active hour and day; alerts; short tickets."""
    if found is None:
        return '<p class="note">Not computed for this report.</p>'
    rows = [
        (
            b.user + (" (far above peers)" if b.outlier else ""),
            ", ".join(r for r in b.roles if r != "everyone"),
            b.hours,
            num(b.customers_per_hour),
            num(b.peers_customers_per_hour),
            "-" if b.customers_ratio is None else f"{b.customers_ratio:g}x",
            num(b.rows_per_hour),
            num(b.peers_rows_per_hour),
            "-" if b.rows_ratio is None else f"{b.rows_ratio:g}x",
            num(b.customers_per_day),
            num(b.peers_customers_per_day),
            "-" if b.day_ratio is None else f"{b.day_ratio:g}x",
            f"{found.short_tickets[b.user]:,} of {found.closed_tickets[b.user]:,}",
        )
        for b in baselines(found.buckets("hour"), found.buckets("day"))
    ]
    table = _table(
        (
            "Employee",
            "Role",
            "Active hours",
            "Customers/h",
            "Peers",
            "Ratio",
            "Rows/h",
            "Peers",
            "Ratio",
            "Customers/day",
            "Peers",
            "Ratio",
            "Self-assigned tickets closed in 20 min",
        ),
        rows,
        numeric=11,
    )
    raised = sorted(found.alerts.values(), key=lambda a: (a.rule, -a.count, a.user))
    listed = _table(
        ("Rule", "Employee", "First", "Last", "Latest evidence", "Alerts"),
        ((a.rule, a.user, a.first[:19], a.last[:19], a.message, a.count) for a in raised),
        numeric=1,
    )
    return (
        "<p class='note'>Medians per active hour and day; an employee at 3x the median of "
        "the employees with the same roles, or more, is far above peers.</p>"
        + table
        + (f"<h3>Alerts raised</h3>{listed}" if raised else "<p>No alert was raised.</p>")
    )


def render_report(
    summary: Summary,
    *,
    title: str = TITLE,
    generated: dt.datetime | None = None,
    elevations: str | None = None,
    peers: Collector | None = None,
) -> str:
    """The report's HTML for a summary (pure: ``generated`` defaults to ``summary.end``)."""
    made = generated or summary.end or dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    watch = (
        _incidents(summary.watch)
        if summary.watch
        else '<p class="note">No watch-list or canary customer was touched in this period.</p>'
    )
    top = _table(
        ("Customer", "Readers", "Employees", "Statements", "Rows"),
        (
            (c.customer, ", ".join(c.readers), len(c.readers), f"{c.statements:,}", f"{c.rows:,}")
            for c in summary.top_customers
        ),
        numeric=3,
    )
    throttles = (
        bar_chart(summary.throttles_by_reason, label="Throttles by limit", colour="#e67700")
        + _incidents(summary.throttle_events)
        if summary.throttle_events
        else '<p class="note">No statement was throttled in this period.</p>'
    )
    sections = (
        *((("elevations", "Break-glass review queue", elevations),) if elevations else ()),
        ("volume", "Volume per employee over time", _volume(summary)),
        ("employees", "Employees", _employees(summary)),
        (
            "refusals",
            "Refusals",
            '<div class="grid"><div><h3>By reason</h3>'
            + bar_chart(summary.refusals_by_reason, label="Refusals by reason", colour="#495057")
            + "</div><div><h3>By employee</h3>"
            + bar_chart(
                summary.refusals_by_employee,
                label="Refusals by employee",
                colour="#495057",
                strong=frozenset(summary.outliers),
            )
            + "</div></div>",
        ),
        ("throttles", "Throttles", throttles),
        ("watch", "Watch-list and canary touches", watch),
        ("readers", "Customers with the most readers", top),
        ("peers", "Against role peers (per active hour and day); alerts raised", _peers(peers)),
    )
    body = "".join(
        f'<section id="{key}"><h2>{e(name)}</h2>{content}</section>'
        for key, name, content in sections
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{e(title)}</title><style>{CSS}</style></head><body><main>"
        f"{_header(summary, title, made)}{body}<footer>Far above peers: {e(summary.rule)}. "
        "Counts come from the access ledger (allowed statements on scoped tables, rows "
        "counted at the cursor) and the refusal events of the hash-chained audit trail; "
        "the report holds no row data.</footer></main></body></html>\n"
    )


def write_report(
    events: Iterable[Event],
    out: str | Path,
    *,
    since: dt.datetime | None = None,
    title: str = TITLE,
    generated: dt.datetime | None = None,
) -> None:
    """Summarise ``events`` and write the report to ``out`` (one self-contained HTML file).

    Every event is held in memory: for a trail of any size, use
    ``report_engine.write_engine_report`` (what ``accessguard audit report`` runs).
    """
    from accessguard.investigate.elevations import render_html, review

    made = generated or dt.datetime.now(dt.UTC)
    events = list(events)
    queue = render_html(review(events, since=since, now=made))
    peers = Collector(since)
    summary = summarize(peers.watch(events), since=since)
    page = render_report(summary, title=title, generated=made, elevations=queue, peers=peers)
    Path(out).write_text(page, encoding="utf-8")
