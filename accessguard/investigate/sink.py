"""Questions over the PostgreSQL sink, asked as SQL on its indexed table.

``accessguard.events`` (accessguard.audit.pgsink) is partitioned by month on ``ts``
and indexed on (subject_kind, subject_id, ts) and (user_name, ts). who-read
and what-read are one statement each: the matching ledger rows are found
through one of those indexes (and the window prunes partitions), summed per
(employee, ticket, kind, subject) on the server, and only the groups come
back. subject-export streams its entries through a server-side cursor. The
session is read-only and in UTC.

A ledger entry's ``ts`` is its ``@timestamp``, which the ledger writes as the
entry's last statement (``accessguard.last``): the window applies to ``ts``,
so it uses the indexes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg

from accessguard.audit.chain import load_key
from accessguard.investigate.core import (
    UNITS,
    Bucket,
    Cell,
    Entry,
    Group,
    Reach,
    Volume,
    Window,
    strs,
    utc,
    utc_at,
)

TABLE = "accessguard.events"
_TIME = r"'^\d{4}-\d\d-\d\d'"


def _count(field: str) -> str:
    # investigate counts JSON integers only (not floats, not booleans)
    return (
        f"CASE WHEN jsonb_typeof(event->'{field}') = 'number' "
        f"AND (event->>'{field}') ~ '^-?[0-9]{{1,18}}$' "
        f"THEN (event->>'{field}')::bigint ELSE 0 END"
    )


def _time(field: str) -> str:
    return (
        f"CASE WHEN (event->>'{field}') ~ {_TIME} THEN (event->>'{field}')::timestamptz ELSE ts END"
    )


def _strings(field: str) -> str:
    return (
        f"CASE WHEN jsonb_typeof(event->'{field}') = 'array' "
        f"THEN event->'{field}' ELSE '[]'::jsonb END"
    )


#: one ledger row of accessguard.events, as the columns the rollup keeps (see rollup.py)
ROW = f"""
user_name, ticket_id, event->>'accessguard.ticket.kind' AS ticket_kind, subject_kind, subject_id,
{_strings("accessguard.columns")} AS columns, {_strings("accessguard.tables")} AS tables,
{_strings("user.roles")} AS roles,
{_count("accessguard.statements")} AS statements, {_count("accessguard.rows")} AS rows,
{_time("accessguard.first")} AS first, {_time("accessguard.last")} AS last
"""
LEDGER = "action = 'ledger' AND subject_id IS NOT NULL"
KEY = "user_name, ticket_id, ticket_kind, subject_kind, subject_id, columns, tables, roles"
# Built from the constants above only (no input): S608 does not apply.
# One hash aggregate, grouped by the entry's key and by its arrays as they are
# (a desk's statements have few shapes): the arrays of a group are united in
# Python (accessguard.investigate.core), so no row is sorted or spilled.
_GROUPS = f"""
SELECT {KEY}, sum(statements)::bigint, sum(rows)::bigint, min(first), max(last)
FROM ({{rows}}) AS matched GROUP BY {KEY}
"""  # noqa: S608
_RAW = f"SELECT {ROW} FROM {TABLE} WHERE {LEDGER} AND {{where}}"  # noqa: S608
ROLLUP = "accessguard.ledger_hours"
#: the rollup's content as one canonical digest (a few thousand rows: milliseconds)
ROLLUP_CONTENT = (
    "SELECT md5(coalesce(string_agg(r::text, '|' ORDER BY r::text), '')) "  # noqa: S608
    f"FROM {ROLLUP} AS r"
)


def rollup_mac(key: bytes, upto: int, content: str) -> str:
    """The MAC of the rollup as refreshed through event ``upto`` (its content's digest)."""
    body = f"accessguard ledger_hours\n{upto}\n{content}".encode()
    return hmac.new(key, body, hashlib.sha256).hexdigest()
_TAIL = (
    f"SELECT {ROW} FROM (SELECT * FROM {TABLE} WHERE id > %s OFFSET 0) AS tail "  # noqa: S608
    f"WHERE {LEDGER} AND {{where}}"
)
_ENTRIES = f"""
SELECT {_time("accessguard.first")} AS first, {_time("accessguard.last")} AS last,
       user_name, event->'user.roles', ticket_id, event->>'accessguard.ticket.kind',
       event->'accessguard.tables', event->'accessguard.columns',
       {_count("accessguard.statements")}, {_count("accessguard.rows")},
       event->>'accessguard.fingerprint'
FROM {TABLE}
WHERE action = 'ledger' AND subject_kind = %s AND subject_id = %s {{window}}
ORDER BY first, last, user_name, ticket_id
"""  # noqa: S608


_BUCKETS = f"""
SELECT user_name, roles, date_trunc('{{unit}}', first) AS start,
       count(DISTINCT subject_id) FILTER (WHERE subject_kind = 'customer'),
       sum(rows)::bigint, sum(statements)::bigint
FROM ({_RAW.replace("{where}", "user_name IS NOT NULL {window}")}) AS matched
GROUP BY user_name, roles, start
"""  # noqa: S608


# the report's figures (accessguard.investigate.report_engine), over the ledger rows
_LEDGER_ROWS = f"(SELECT ts, {ROW} FROM {TABLE} WHERE {LEDGER} {{window}}) AS ledger"  # noqa: S608
_VOLUMES = f"""
SELECT user_name, array_agg(DISTINCT roles),
       count(DISTINCT subject_id) FILTER (WHERE subject_kind = 'customer'),
       count(DISTINCT ARRAY[subject_kind, subject_id])
           FILTER (WHERE subject_kind IS DISTINCT FROM 'customer'),
       count(DISTINCT ticket_id), sum(statements)::bigint, sum(rows)::bigint, min(ts), max(ts)
FROM {_LEDGER_ROWS} WHERE user_name IS NOT NULL GROUP BY user_name ORDER BY user_name
"""  # noqa: S608
_REACH = f"""
SELECT subject_id, count(DISTINCT user_name), sum(statements)::bigint, sum(rows)::bigint
FROM {_LEDGER_ROWS} WHERE user_name IS NOT NULL AND subject_kind = %s GROUP BY subject_id
"""  # noqa: S608
_READERS = f"""
SELECT DISTINCT subject_id, user_name FROM {_LEDGER_ROWS}
WHERE user_name IS NOT NULL AND subject_kind = %s AND subject_id = ANY(%s)
"""  # noqa: S608
_TIMELINE = f"""
SELECT user_name, to_timestamp(floor(extract(epoch FROM ts) / %s) * %s) AS start,
       count(DISTINCT subject_id) FILTER (WHERE subject_kind = 'customer'),
       sum(rows)::bigint, sum(statements)::bigint
FROM {_LEDGER_ROWS} WHERE user_name IS NOT NULL AND ts IS NOT NULL
GROUP BY user_name, start
"""  # noqa: S608
_TICKETS = (
    "(ticket_id = ANY(%s) OR event->>'accessguard.ticket.kind' = %s "
    "OR starts_with(event->>'accessguard.ticket.kind', %s))"
)
_OTHERS = f"SELECT event FROM {TABLE} WHERE action <> 'ledger' ORDER BY id"  # noqa: S608


class SinkEngine:
    """who-read, what-read and subject-export as SQL over the PostgreSQL sink."""

    def __init__(self, dsn: str, *, rollup: bool = True) -> None:
        self._conn = psycopg.connect(dsn, autocommit=False)
        # one snapshot for the whole session: the rollup, its mark and the events agree
        self._conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        self._conn.read_only = True
        self._conn.execute("SET TIME ZONE 'UTC'")
        self._conn.execute("SET work_mem = '64MB'")  # a month's groups hash in memory
        self._conn.execute("SET jit = off")  # compiling costs more than these queries
        self._mark: int | None = None
        if rollup:
            found = self._conn.execute(
                "SELECT to_regclass('accessguard.ledger_hours_mark') IS NOT NULL"
            ).fetchone()
            if found and found[0]:
                self._mark = self._trusted_mark()
        self.name = "postgresql accessguard.events" + (
            " and accessguard.ledger_hours" if self._mark is not None else ""
        )

    def _trusted_mark(self) -> int | None:
        """How far the rollup covers the events; None (the rollup unused) when the audit key
        is set and the rollup or its mark was changed after the refresh that MAC'd them."""
        row = self._conn.execute(
            "SELECT upto, mac FROM accessguard.ledger_hours_mark ORDER BY upto DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return 0
        upto, mac = int(row[0]), row[1]
        key = load_key()
        if key is None:
            return upto
        content = self._conn.execute(ROLLUP_CONTENT).fetchone()
        expected = rollup_mac(key, upto, str(content[0]) if content else "")
        if not isinstance(mac, str) or not hmac.compare_digest(mac, expected):
            return None  # answered from the events themselves, which are verified
        return upto

    def _groups(self, match: str, key: list[Any], window: Window) -> list[Group]:
        clause, params = _window(window)
        parts = [_RAW.replace("{where}", match + clause)]
        values = [*key, *params]
        if self._mark is not None:
            parts, values = self._split(match, key, window)
        sql = _GROUPS.replace("{rows}", " UNION ALL ".join(parts))
        rows = self._conn.execute(sql, values).fetchall()
        return [
            Group(u, t, k, s, i, st, rw, strs(c), strs(tb), strs(r), utc(f), utc(last))
            for u, t, k, s, i, c, tb, r, st, rw, f, last in rows
        ]

    def _split(self, match: str, key: list[Any], window: Window) -> tuple[list[str], list[Any]]:
        """Whole hours from the rollup; partial hours and entries past the mark from events."""
        clause, params = _window(window)
        low = _hour_up(window.start) if window.start is not None else None
        high = _hour_down(window.end) if window.end is not None else None
        hours, hour_params = "", []
        if low is not None:
            hours += " AND hour >= %s"
            hour_params.append(low)
        if high is not None:
            hours += " AND hour < %s"
            hour_params.append(high)
        rollup = f"SELECT {KEY}, statements, rows, first, last FROM {ROLLUP}"  # noqa: S608
        parts = [f"{rollup} WHERE {match}{hours}"]
        values: list[Any] = [*key, *hour_params]
        # the partial hours at either end, as index ranges on ts (none if the window is open)
        if low is not None and high is not None and low >= high:
            edges = [(window.start, window.end)]  # within one or two partial hours: all of it
        else:
            edges = [(window.start, low)] if low is not None else []
            edges += [(high, window.end)] if high is not None else []
        for begin, end in edges:
            bounds = ("ts >= %s" if begin else "true") + (" AND ts < %s" if end else "")
            parts.append(_RAW.replace("{where}", f"{match} AND {bounds} AND id <= %s"))
            values += [*key, *(v for v in (begin, end) if v is not None), self._mark]
        # entries written after the mark: found by id first (the fence keeps the plan so)
        parts.append(_TAIL.replace("{where}", match + clause))
        values += [self._mark, *key, *params]
        return parts, values

    def by_subject(self, scope: str, subject: str, window: Window) -> list[Group]:
        return self._groups("subject_kind = %s AND subject_id = %s", [scope, subject], window)

    def by_user(self, user: str, window: Window) -> list[Group]:
        return self._groups("user_name = %s", [user], window)

    def entries(self, scope: str, subject: str, window: Window) -> Iterator[Entry]:
        clause, params = _window(window)
        with self._conn.cursor(name="accessguard_subject_export") as cur:
            cur.itersize = 2000
            cur.execute(_ENTRIES.replace("{window}", clause), [scope, subject, *params])
            yield from map(Entry.of_row, cur)

    def buckets(self, window: Window, unit: str = "hour") -> list[Bucket]:
        """Distinct customers, rows and statements per (employee, role set, hour or day)."""
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {', '.join(UNITS)}")
        clause, params = _window(window)
        rows = self._conn.execute(
            _BUCKETS.replace("{window}", clause).replace("{unit}", unit), params
        ).fetchall()
        merged: dict[tuple[str, tuple[str, ...], Any], list[int]] = {}
        for user, roles, hour, customers, n_rows, statements in rows:
            sums = merged.setdefault((user, tuple(sorted(strs(roles))), utc(hour)), [0, 0, 0])
            sums[0] += customers
            sums[1] += n_rows
            sums[2] += statements
        return sorted(Bucket(u, r, h, *sums) for (u, r, h), sums in merged.items())

    def volumes(self, window: Window) -> list[Volume]:
        """Per employee: roles, distinct customers, other subjects and tickets, sums, span."""
        clause, params = _window(window)
        rows = self._conn.execute(_VOLUMES.replace("{window}", clause), params).fetchall()
        return [
            Volume(
                u,
                tuple(sorted({r for rs in roles for r in strs(rs)})),
                c,
                p,
                t,
                st,
                rw,
                utc(lo),
                utc(hi),
            )
            for u, roles, c, p, t, st, rw, lo, hi in rows
        ]

    def reach(self, scope: str, window: Window) -> list[Reach]:
        """Per subject of ``scope``: distinct readers, statements, rows."""
        clause, params = _window(window)
        sql = _REACH.replace("{window}", clause)
        return [Reach(*row) for row in self._conn.execute(sql, [*params, scope]).fetchall()]

    def readers_of(
        self, scope: str, subjects: Sequence[str], window: Window
    ) -> list[tuple[str, str]]:
        """(subject, employee) for each employee who read one of ``subjects``."""
        if not subjects:
            return []
        clause, params = _window(window)
        sql = _READERS.replace("{window}", clause)
        rows = self._conn.execute(sql, [*params, scope, list(subjects)]).fetchall()
        return [(s, u) for s, u in rows]

    def timeline(self, window: Window, seconds: int) -> list[Cell]:
        """Per employee and period of ``seconds`` (from the epoch): customers, rows, statements."""
        clause, params = _window(window)
        sql = _TIMELINE.replace("{window}", clause)
        rows = self._conn.execute(sql, [seconds, seconds, *params]).fetchall()
        return [Cell(u, utc_at(start), c, rw, st) for u, start, c, rw, st in rows]

    def by_tickets(self, tickets: Sequence[str], kind: str) -> list[Group]:
        """Every ledger group of ``tickets``, or of a ticket kind ``kind`` or ``kind.*``."""
        sql = _GROUPS.replace("{rows}", _RAW.replace("{where}", _TICKETS))
        rows = self._conn.execute(sql, [list(tickets), kind, f"{kind}."]).fetchall()
        return [
            Group(u, t, k, s, i, st, rw, strs(c), strs(tb), strs(r), utc(f), utc(last))
            for u, t, k, s, i, c, tb, r, st, rw, f, last in rows
        ]

    def others(self) -> Iterator[dict[str, Any]]:
        """Every event that is not a ledger entry, in the order written (a server cursor)."""
        with self._conn.cursor(name="accessguard_report_others") as cur:
            cur.itersize = 2000
            cur.execute(_OTHERS)
            for (event,) in cur:
                if isinstance(event, dict):
                    yield event

    def close(self) -> None:
        self._conn.close()


def _hour_down(when: dt.datetime) -> dt.datetime:
    return when.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def _hour_up(when: dt.datetime) -> dt.datetime:
    down = _hour_down(when)
    return down if down == when else down + dt.timedelta(hours=1)


def _window(window: Window) -> tuple[str, list[Any]]:
    clause, params = "", []
    if window.start is not None:
        clause += " AND ts >= %s"
        params.append(window.start)
    if window.end is not None:
        clause += " AND ts < %s"
        params.append(window.end)
    return clause, params
