"""An hourly rollup of the PostgreSQL sink's ledger, so a month is a few thousand rows.

The sink keeps one ~1 KB row per ledger entry; an employee's entries of a
month lie on tens of thousands of pages, so summing them reads them all.
``accessguard.ledger_hours`` keeps the same entries summed per hour of their
time, hour of their first statement and (employee, ticket, kind, subject,
columns, tables, roles), with their earliest and latest times: narrow, typed
and indexed by employee and by subject. A rollup of an earlier release is
dropped and built again by the next refresh. ``refresh`` adds the entries written
since the last refresh (by ``id``; ``ledger_hours_mark`` says how far), so it
can run from cron or after each batch; it needs CREATE and INSERT on the
``accessguard`` schema, the questions only SELECT.

The questions (accessguard.investigate.sink: who-read, what-read and every sum
of the report) read whole hours inside the window from the rollup, and from
the events table only the entries the rollup does not hold: those of a
partial hour at either end of the window, and those written after the mark
(accessguard.investigate.sink_sql). Sums, minima, maxima, unions and distinct
counts compose, so the answer is the same as from the events alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg

from accessguard.audit.chain import load_key
from accessguard.investigate.sink_sql import (
    KEY,
    LEDGER,
    ROLLUP,
    ROLLUP_CONTENT,
    ROLLUP_MARK,
    ROW,
    TABLE,
    rollup_mac,
)

MARK = ROLLUP_MARK
_WRITERS_LOCK = 0x61636365  # accessguard.audit.pgsink's: writers hold it while inserting a batch
_REFRESH_LOCK = 0x61676872  # "aghr": one refresher at a time

_DDL = f"""
CREATE TABLE IF NOT EXISTS {ROLLUP} (
    hour timestamptz NOT NULL,
    first_hour timestamptz NOT NULL,
    user_name text, ticket_id text, ticket_kind text, subject_kind text, subject_id text,
    columns jsonb NOT NULL, tables jsonb NOT NULL, roles jsonb NOT NULL,
    statements bigint NOT NULL, rows bigint NOT NULL,
    first timestamptz, last timestamptz,
    ts_min timestamptz NOT NULL, ts_max timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_hours_user ON {ROLLUP} (user_name, hour);
CREATE INDEX IF NOT EXISTS ledger_hours_subject ON {ROLLUP} (subject_kind, subject_id, hour);
CREATE TABLE IF NOT EXISTS {MARK} (
    upto bigint NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE {MARK} ADD COLUMN IF NOT EXISTS mac text;
"""

# Built from the constants of sink.py and above only (no input): S608 does not apply.
_ADD = f"""
INSERT INTO {ROLLUP} (hour, first_hour, {KEY}, statements, rows, first, last, ts_min, ts_max)
SELECT date_trunc('hour', ts), date_trunc('hour', first), {KEY},
       sum(statements), sum(rows), min(first), max(last), min(ts), max(ts)
FROM (SELECT ts, {ROW} FROM {TABLE} WHERE {LEDGER} AND id > %s AND id <= %s) AS entries
GROUP BY 1, 2, {KEY}
"""  # noqa: S608
_MARKED = f"SELECT coalesce(max(upto), 0) FROM {MARK}"  # noqa: S608


def _outdated(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    """Whether the rollup exists without the columns this release's questions read."""
    row = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL AND NOT EXISTS (SELECT FROM pg_attribute "
        "WHERE attrelid = to_regclass(%s) AND attname = 'first_hour' AND NOT attisdropped)",
        [ROLLUP, ROLLUP],
    ).fetchone()
    return bool(row and row[0])


@dataclass(frozen=True, slots=True)
class Refreshed:
    """What one refresh did: the events it rolled up (by id) and the rows it added."""

    start: int
    upto: int
    rows: int
    seconds: float


def refresh(dsn: str, *, step: int = 500_000, until: int | None = None) -> Refreshed:
    """Roll up the ledger entries written since the last refresh (``step`` ids a transaction).

    ``until`` stops at that id (tests leave a tail to the events table that way).
    """
    started = time.perf_counter()
    key = load_key()
    with psycopg.connect(dsn) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [_REFRESH_LOCK])
            if _outdated(conn):  # an earlier release's rollup: derived data, built again
                conn.execute(f"DROP TABLE {ROLLUP}, {MARK}")
            conn.execute(_DDL)
        with conn.transaction():
            # every id up to this one is committed: writers insert under this lock
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [_WRITERS_LOCK])
            row = conn.execute(f"SELECT coalesce(max(id), 0) FROM {TABLE}").fetchone()  # noqa: S608
        head = int(row[0]) if row else 0
        if until is not None:
            head = min(head, until)
        conn.execute("SET TIME ZONE 'UTC'")
        conn.execute("SET work_mem = '64MB'")
        added, first = 0, None
        while True:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", [_REFRESH_LOCK])
                marked = conn.execute(_MARKED).fetchone()
                done = int(marked[0]) if marked else 0
                first = done if first is None else first
                if done >= head:
                    break
                upto = min(head, done + step)
                added += conn.execute(_ADD, [done, upto]).rowcount
                mac = None
                if key is not None:  # keyed: a rollup edited later is not answered from
                    content = conn.execute(ROLLUP_CONTENT).fetchone()
                    mac = rollup_mac(key, upto, str(content[0]) if content else "")
                conn.execute(
                    f"INSERT INTO {MARK} (upto, mac) VALUES (%s, %s)",  # noqa: S608
                    [upto, mac],
                )
    return Refreshed(first or 0, head, added, time.perf_counter() - started)
