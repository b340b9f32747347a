"""Questions over the PostgreSQL sink, asked as SQL on its indexed table and its rollup.

``accessguard.events`` (accessguard.audit.pgsink) is partitioned by month on ``ts``
and indexed on (subject_kind, subject_id, ts) and (user_name, ts). who-read
and what-read are one statement each: the matching ledger rows are found
through one of those indexes (and the window prunes partitions), summed per
(employee, ticket, kind, subject) on the server, and only the groups come
back. subject-export streams its entries through a server-side cursor. The
session is read-only, in UTC, and reads one snapshot.

The report's sums (per employee, per customer, per period) would read every
ledger entry of the month; with the hourly rollup (accessguard.investigate.rollup)
they read whole hours from it and only the edges and the entries written since
its last refresh from the events (``sink_sql.ledger_rows``). A keyed rollup is
used only while it holds exactly what its refreshes wrote; otherwise the events
answer alone.

A ledger entry's ``ts`` is its ``@timestamp``, which the ledger writes as the
entry's last statement (``accessguard.last``): the window applies to ``ts``,
so it uses the indexes.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import psycopg

from accessguard.audit.chain import load_key
from accessguard.audit.verification import Verification
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
from accessguard.investigate.rollup import current, trusted_upto
from accessguard.investigate.sink_sql import (
    ENTRIES,
    KEY,
    ROLLUP,
    TABLE,
    ledger_rows,
    window_clause,
)

# Built from the constants of sink_sql.py only (no input): S608 does not apply.
# One hash aggregate, grouped by the entry's key and by its arrays as they are
# (a desk's statements have few shapes): the arrays of a group are united in
# Python (accessguard.investigate.core), so no row is sorted or spilled.
_GROUPS = f"""
SELECT {KEY}, sum(statements)::bigint, sum(rows)::bigint, min(first), max(last)
FROM ({{rows}}) AS matched {{where}} GROUP BY {KEY}
"""  # noqa: S608
# the report's figures (accessguard.investigate.report_engine), over ledger rows
_EMPLOYEES = "user_name IS NOT NULL"
_OF_SCOPE = "user_name IS NOT NULL AND subject_kind = %s"
_OF_SUBJECTS = "user_name IS NOT NULL AND subject_kind = %s AND subject_id = ANY(%s)"
_BUCKETS = """
SELECT user_name, roles, date_trunc('{unit}', first_hour) AS start,
       count(DISTINCT subject_id) FILTER (WHERE subject_kind = 'customer'),
       sum(rows)::bigint, sum(statements)::bigint
FROM ({rows}) AS ledger GROUP BY user_name, roles, start
"""
_VOLUMES = """
SELECT user_name, array_agg(DISTINCT roles),
       count(DISTINCT subject_id) FILTER (WHERE subject_kind = 'customer'),
       count(DISTINCT ARRAY[subject_kind, subject_id])
           FILTER (WHERE subject_kind IS DISTINCT FROM 'customer'),
       count(DISTINCT ticket_id), sum(statements)::bigint, sum(rows)::bigint,
       min(ts_min), max(ts_max)
FROM ({rows}) AS ledger GROUP BY user_name ORDER BY user_name
"""
_REACH = """
SELECT subject_id, count(DISTINCT user_name), sum(statements)::bigint, sum(rows)::bigint
FROM ({rows}) AS ledger GROUP BY subject_id
"""
_READERS = "SELECT DISTINCT subject_id, user_name FROM ({rows}) AS ledger"
# a period of whole hours is a function of the row's hour, which a rollup row holds
_TIMELINE = """
SELECT user_name, to_timestamp(floor(extract(epoch FROM {at}) / %s) * %s) AS start,
       count(DISTINCT subject_id) FILTER (WHERE subject_kind = 'customer'),
       sum(rows)::bigint, sum(statements)::bigint
FROM ({rows}) AS ledger GROUP BY user_name, start
"""
_TICKETS = "WHERE ticket_id = ANY(%s) OR ticket_kind = %s OR starts_with(ticket_kind, %s)"
_OF_TICKETS = "WHERE ticket_id = ANY(%s)"
_OTHERS = f"SELECT event FROM {TABLE} WHERE action <> 'ledger' ORDER BY id"  # noqa: S608
# the lifecycle events of some tickets, through the same partial index (no JSON sent for others)
_LIFECYCLE = (
    f"SELECT event FROM {TABLE} WHERE action <> 'ledger' "  # noqa: S608
    "AND starts_with(action, 'ticket.') AND ticket_id = ANY(%s) ORDER BY id"
)
# the refusals naming one subject, through the partial index of non-ledger events (its id as
# the trail writes it, a number; or as text, for an id that is not one)
_REFUSALS = (
    f"SELECT event FROM {TABLE} WHERE action <> 'ledger' "  # noqa: S608
    "AND event->>'accessguard.outcome' IN ('denied', 'throttled') "
    "AND (event->'accessguard.subjects' @> %s::jsonb "
    "OR event->'accessguard.subjects' @> %s::jsonb){window} ORDER BY id"
)
_HOUR = 3600


class SinkEngine:
    """who-read, what-read, subject-export and the report's sums as SQL over the PostgreSQL sink."""

    def __init__(self, dsn: str, *, rollup: bool = True) -> None:
        self._conn = psycopg.connect(dsn, autocommit=False)
        try:
            self._open(rollup)
        except BaseException:
            self._conn.close()  # (a row security policy, say, fails the first question)
            raise

    def _open(self, rollup: bool) -> None:
        # one snapshot for the whole session: the rollup, its mark and the events agree
        self._conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        self._conn.read_only = True
        self._conn.execute("SET TIME ZONE 'UTC'")
        self._conn.execute("SET work_mem = '64MB'")  # a month's groups hash in memory
        self._conn.execute("SET jit = off")  # compiling costs more than these queries
        # a row security policy (its owner's: one may hide rows from some statements and not
        # from the verifier's) makes a question fail instead of answering from fewer rows
        self._conn.execute("SET row_security = off")
        self._mark: int | None = None
        if rollup and current(self._conn):
            # None (the rollup unused) when the audit key is set and the rollup holds anything
            # its refreshes did not write
            self._mark = trusted_upto(self._conn, load_key())
        last = self._conn.execute(f"SELECT max(id) FROM {TABLE}").fetchone()  # noqa: S608
        self._head = int(last[0]) if last and last[0] is not None else 0
        self.name = f"postgresql {TABLE}" + (f" and {ROLLUP}" if self._mark is not None else "")

    def verify(self, dsn: str) -> Verification:
        """Verify the events in this session's own snapshot (resumed from the investigator's
        mark), so the answers come from exactly the rows verified: an edit made between a
        verification and the question, to rows the question reads from the events, would
        otherwise be answered unverified. Without the audit key, the whole trail is verified
        as ``verify_resumed`` does (no mark can be trusted)."""
        from accessguard.audit.pgresume import verify_resumed, verify_snapshot

        key = load_key()
        if key is None:
            return verify_resumed(dsn, key=None)
        return verify_snapshot(self._conn, dsn, key=key)

    def _rows(
        self, match: str, values: list[Any], window: Window, *, rollup: bool = True
    ) -> tuple[str, list[Any]]:
        rolled = (self._mark, self._head) if rollup and self._mark is not None else None
        return ledger_rows(match, values, start=window.start, end=window.end, rolled=rolled)

    def _groups(self, match: str, key: list[Any], window: Window) -> list[Group]:
        rows, values = self._rows(match, key, window)
        sql = _GROUPS.replace("{rows}", rows).replace("{where}", "")
        return _as_groups(self._conn.execute(sql, values).fetchall())

    def by_subject(self, scope: str, subject: str, window: Window) -> list[Group]:
        return self._groups("subject_kind = %s AND subject_id = %s", [scope, subject], window)

    def by_user(self, user: str, window: Window) -> list[Group]:
        return self._groups("user_name = %s", [user], window)

    def entries(self, scope: str, subject: str, window: Window) -> Iterator[Entry]:
        clause, params = window_clause("ts", window.start, window.end)
        with self._conn.cursor(name="accessguard_subject_export") as cur:
            cur.itersize = 2000
            cur.execute(ENTRIES.replace("{window}", clause), [scope, subject, *params])
            yield from map(Entry.of_row, cur)

    def buckets(self, window: Window, unit: str = "hour") -> list[Bucket]:
        """Distinct customers, rows and statements per (employee, role set, hour or day)."""
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {', '.join(UNITS)}")
        rows, values = self._rows(_EMPLOYEES, [], window)
        found = self._conn.execute(
            _BUCKETS.replace("{unit}", unit).replace("{rows}", rows), values
        ).fetchall()
        merged: dict[tuple[str, tuple[str, ...], Any], list[int]] = {}
        for user, roles, hour, customers, n_rows, statements in found:
            sums = merged.setdefault((user, tuple(sorted(strs(roles))), utc(hour)), [0, 0, 0])
            sums[0] += customers
            sums[1] += n_rows
            sums[2] += statements
        return sorted(Bucket(u, r, h, *sums) for (u, r, h), sums in merged.items())

    def volumes(self, window: Window) -> list[Volume]:
        """Per employee: roles, distinct customers, other subjects and tickets, sums, span."""
        rows, values = self._rows(_EMPLOYEES, [], window)
        found = self._conn.execute(_VOLUMES.replace("{rows}", rows), values).fetchall()
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
            for u, roles, c, p, t, st, rw, lo, hi in found
        ]

    def reach(self, scope: str, window: Window) -> list[Reach]:
        """Per subject of ``scope``: distinct readers, statements, rows."""
        rows, values = self._rows(_OF_SCOPE, [scope], window)
        return [Reach(*row) for row in self._conn.execute(_REACH.replace("{rows}", rows), values)]

    def readers_of(
        self, scope: str, subjects: Sequence[str], window: Window
    ) -> list[tuple[str, str]]:
        """(subject, employee) for each employee who read one of ``subjects``."""
        if not subjects:
            return []
        rows, values = self._rows(_OF_SUBJECTS, [scope, list(subjects)], window)
        found = self._conn.execute(_READERS.replace("{rows}", rows), values).fetchall()
        return [(s, u) for s, u in found]

    def timeline(self, window: Window, seconds: int) -> list[Cell]:
        """Per employee and period of ``seconds`` (from the epoch): customers, rows, statements."""
        whole = seconds % _HOUR == 0  # else only the entries' own times place them
        rows, values = self._rows(_EMPLOYEES, [], window, rollup=whole)
        sql = _TIMELINE.replace("{at}", "hour" if whole else "ts_min").replace("{rows}", rows)
        found = self._conn.execute(sql, [seconds, seconds, *values]).fetchall()
        return [Cell(u, utc_at(start), c, rw, st) for u, start, c, rw, st in found]

    def by_tickets(self, tickets: Sequence[str], kind: str | None) -> list[Group]:
        """Every ledger group of ``tickets``, or of a ticket kind ``kind`` or ``kind.*``."""
        rows, values = self._rows("true", [], Window())
        params: list[Any]
        if kind is None:
            where, params = _OF_TICKETS, [list(tickets)]
        else:
            where, params = _TICKETS, [list(tickets), kind, f"{kind}."]
        sql = _GROUPS.replace("{rows}", rows).replace("{where}", where)
        return _as_groups(self._conn.execute(sql, [*values, *params]).fetchall())

    def lifecycle(self, tickets: Collection[str]) -> Iterator[dict[str, Any]]:
        """The ticket lifecycle events (``ticket.*``) of ``tickets``, in the order written."""
        for (event,) in self._conn.execute(_LIFECYCLE, [sorted(tickets)]):
            if isinstance(event, dict):
                yield event

    def refusals_of(self, scope: str, subject: str, window: Window) -> Iterator[dict[str, Any]]:
        """The refusals whose statement named ``subject`` (``accessguard.subjects``)."""
        clause, params = window_clause("ts", window.start, window.end)
        as_text = json.dumps([{"kind": scope, "id": subject}])
        as_number = as_text
        if subject.isdigit() and len(subject) <= 19:  # the trail writes ids as JSON numbers
            as_number = json.dumps([{"kind": scope, "id": int(subject)}])
        sql = _REFUSALS.replace("{window}", clause)
        # through the partial index of the few non-ledger events: the planner, unable to
        # estimate the JSON conditions, scanned the whole month (0.7-2.5 s, not 35 ms)
        self._conn.execute("SET enable_seqscan = off")
        try:
            found = self._conn.execute(sql, [as_number, as_text, *params]).fetchall()
        finally:
            self._conn.execute("RESET enable_seqscan")
        for (event,) in found:
            if isinstance(event, dict):
                yield event

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


def _as_groups(rows: list[tuple[Any, ...]]) -> list[Group]:
    return [
        Group(u, t, k, s, i, st, rw, strs(c), strs(tb), strs(r), utc(f), utc(last))
        for u, t, k, s, i, c, tb, r, st, rw, f, last in rows
    ]
