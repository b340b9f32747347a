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

With the audit key set, a refresh verifies the events first (resumed from
the refresher's mark, accessguard.audit.pgresume) and sums exactly the rows
that verification read, in the same snapshot: an event edited and put back
between two verifications never reaches the rollup. A trail that does not
verify is not rolled up (``RollupRefused``).

Why a question may trust the rollup without reading it all (``trusted_upto``):
each refresh is one transaction that writes its rows and one mark row, MAC'd
with the key over (start, upto, added, xact), ``xact`` being the refresh's own
transaction id (64 bits: ``pg_current_xact_id``). PostgreSQL stamps every row
version with the id of the transaction that wrote it (``xmin``: xact's low 32
bits), which SQL cannot set. So the rollup holds what refreshes wrote, and
nothing else, when the marks' MACs hold, each mark row was written by the
transaction its MAC names, their ranges follow one another from event 0, no two
marks share a transaction, and the rollup's rows counted per ``xmin`` are
exactly the marks' ``added``, transaction by transaction. An UPDATE, a DELETE,
an INSERT or a mark removed from the middle breaks one of these; so does one
transaction that rewrites a refresh's rows and touches its mark (both then
carry the insider's ``xmin``, which the MAC does not name); removing the
last refresh with all its rows only hands its events back to the events
table, which the questions then read. The check reads one narrow group-by
of the rollup (milliseconds), where a digest of its content took 0.2 s on a
month. Past a billion transactions since the oldest mark, transaction ids
could come round again (``xact`` is 64 bits, so a mark can be compared with the
current transaction id without a wrap): the rollup is then not trusted, and the next refresh
builds it again. A rollup that fails the check is built again by the next
refresh too (it is derived data; the events are verified first).

The questions (accessguard.investigate.sink: who-read, what-read and every sum
of the report) read whole hours inside the window from the rollup, and from
the events table only the entries the rollup does not hold: those of a
partial hour at either end of the window, and those written after the mark
(accessguard.investigate.sink_sql). Sums, minima, maxima, unions and distinct
counts compose, so the answer is the same as from the events alone.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import IsolationLevel

from accessguard.audit.chain import load_key
from accessguard.audit.pgresume import verify_snapshot
from accessguard.investigate.sink_sql import KEY, LEDGER, ROLLUP, ROLLUP_MARK, ROW, TABLE

__all__ = ["MARK", "Refreshed", "RollupRefused", "current", "plain", "refresh", "trusted_upto"]

MARK = ROLLUP_MARK
_WRITERS_LOCK = 0x61636365  # accessguard.audit.pgsink's: writers hold it while inserting a batch
_REFRESH_LOCK = 0x61676872  # "aghr": one refresher at a time
#: past this many transactions since the oldest mark, 32-bit ids may come round again
_MAX_AGE = 1 << 30

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
    start bigint NOT NULL,
    upto bigint NOT NULL,
    added bigint NOT NULL,
    xact bigint NOT NULL,
    mac text,
    at timestamptz NOT NULL DEFAULT now()
);
"""

# Built from the constants of sink_sql.py and above only (no input): S608 does not apply.
_ADD = f"""
INSERT INTO {ROLLUP} (hour, first_hour, {KEY}, statements, rows, first, last, ts_min, ts_max)
SELECT date_trunc('hour', ts), date_trunc('hour', first), {KEY},
       sum(statements), sum(rows), min(first), max(last), min(ts), max(ts)
FROM (SELECT ts, {ROW} FROM {TABLE} WHERE {LEDGER} AND id > %s AND id <= %s) AS entries
GROUP BY 1, 2, {KEY}
"""  # noqa: S608
_MARKED = f"SELECT coalesce(max(upto), 0) FROM {MARK}"  # noqa: S608
_MARKS = (
    f"SELECT xmin::text::bigint, start, upto, added, xact, mac FROM {MARK} "  # noqa: S608
    "ORDER BY upto, start"
)
#: the next transaction id (64 bits), read-only: how old a mark's transaction is
_NEXT = "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
_XACT = "SELECT pg_current_xact_id()::text::bigint"
_WRITTEN = f"SELECT xmin::text::bigint, count(*) FROM {ROLLUP} GROUP BY 1"  # noqa: S608
#: the rollup and its marks are plain tables that hold only their own rows: no view (which
#: may show any ``xmin`` column it likes), no rules, triggers (which rewrite a refresh's rows
#: inside its own transaction), row security, inheritance, partitions or collations of their
#: own. Their owner could otherwise change what a refresh writes or a question reads, with
#: every xmin, count and MAC as a refresh left them.
_PLAIN = """
SELECT count(*) = 2 FROM pg_class c
WHERE c.oid IN (to_regclass(%s), to_regclass(%s)) AND c.relkind = 'r'
  AND NOT c.relrowsecurity AND NOT c.relhasrules AND NOT c.relhassubclass
  AND NOT c.relispartition
  AND NOT EXISTS (SELECT FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal)
  AND NOT EXISTS (SELECT FROM pg_inherits i WHERE i.inhrelid = c.oid)
  AND NOT EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
                  AND a.attcollation NOT IN (0, 100))
"""
_NOT_PLAIN = (
    f"{ROLLUP} or {MARK} is not a plain table (a view, rules, triggers, row security, "
    "inheritance or a collation of its own), so it was not rolled up: drop both and refresh"
)


class RollupRefused(Exception):
    """The events do not verify: the rollup was left as it was (the message says why)."""


def mark_mac(key: bytes, start: int, upto: int, added: int, xact: int) -> str:
    """The MAC of one refresh: transaction ``xact`` summed events (start, upto] into ``added``
    rows."""
    body = f"accessguard ledger_hours 4\n{start}\n{upto}\n{added}\n{xact}".encode()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def trusted_upto(conn: psycopg.Connection[Any], key: bytes | None) -> int | None:
    """How far the rollup covers the events, if it holds exactly what refreshes wrote (see
    the module's docstring); None when it cannot be trusted (the events answer alone)."""
    if not plain(conn):
        return None
    marks = conn.execute(_MARKS).fetchall()
    if key is None:  # unkeyed: nothing to check against, as the events themselves
        return int(marks[-1][2]) if marks else 0
    expected: Counter[int] = Counter()
    reached = 0
    row = conn.execute(_NEXT).fetchone()
    now = int(row[0]) if row else 0
    for xid, start, upto, added, xact, mac in marks:
        good = isinstance(mac, str) and hmac.compare_digest(
            mac, mark_mac(key, start, upto, added, xact)
        )
        # the mark row was written by the transaction its MAC names (an UPDATE or a copy of
        # it was not), and that transaction is recent enough for its xmin to be unambiguous
        own = int(xid) == int(xact) % (1 << 32) and 0 <= now - int(xact) < _MAX_AGE
        if not good or not own or start != reached or xid in expected:
            return None
        expected[int(xid)] = int(added)
        reached = int(upto)
    written = Counter({int(xid): int(n) for xid, n in conn.execute(_WRITTEN)})
    if written != +expected:  # (+: marks that added no rows have no rows to count)
        return None
    return reached


def plain(conn: psycopg.Connection[Any]) -> bool:
    """Whether the rollup and its marks are plain tables holding only their rows (``_PLAIN``)."""
    row = conn.execute(_PLAIN, [ROLLUP, MARK]).fetchone()
    return bool(row and row[0])


def current(conn: psycopg.Connection[Any]) -> bool:
    """Whether the rollup and its marks have the columns this release reads and proves with
    (one of an earlier release is left unused by the questions and built again by a refresh)."""
    row = conn.execute(
        "SELECT count(*) = 2 FROM pg_attribute WHERE NOT attisdropped AND ("
        "(attrelid = to_regclass(%s) AND attname = 'xact') OR "
        "(attrelid = to_regclass(%s) AND attname = 'first_hour'))",
        [MARK, ROLLUP],
    ).fetchone()
    return bool(row and row[0])


@dataclass(frozen=True, slots=True)
class Refreshed:
    """What one refresh did: the events it rolled up (by id) and the rows it added."""

    start: int
    upto: int
    rows: int
    seconds: float


def refresh(
    dsn: str, *, step: int = 500_000, until: int | None = None, directory: Path | None = None
) -> Refreshed:
    """Roll up the ledger entries written since the last refresh, in one transaction (one
    statement per ``step`` ids), after verifying the events (keyed trails; ``directory``
    keeps the verification mark, as for ``verify_resumed``).

    ``until`` stops at that id (tests leave a tail to the events table that way). Raises
    ``RollupRefused`` when the events do not verify.
    """
    started = time.perf_counter()
    key = load_key()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", [_REFRESH_LOCK])  # one refresher at a time
        conn.execute("SET TIME ZONE 'UTC'")
        conn.execute("SET work_mem = '64MB'")
        conn.execute("SET row_security = off")  # a policy on the events errs, never filters
        with conn.transaction():
            found = conn.execute("SELECT to_regclass(%s), to_regclass(%s)", [ROLLUP, MARK])
            exists = any(name is not None for name in found.fetchone() or ())
            if exists and not plain(conn):
                raise RollupRefused(_NOT_PLAIN)  # (before any DDL meets a view)
            if exists and not current(conn):  # an earlier release's: derived data, built again
                conn.execute(f"DROP TABLE IF EXISTS {ROLLUP}, {MARK}")
            conn.execute(_DDL)
            if key is not None and trusted_upto(conn, key) is None:
                conn.execute(f"TRUNCATE {ROLLUP}, {MARK}")  # edited (or too old): built again
        conn.isolation_level = IsolationLevel.REPEATABLE_READ
        # the snapshot is taken while no batch is being written (writers insert under this
        # lock), so every id up to the last one it sees is committed and seen
        conn.execute("SELECT pg_advisory_lock(%s)", [_WRITERS_LOCK])
        paused = True
        try:
            with conn.transaction():
                row = conn.execute(f"SELECT coalesce(max(id), 0) FROM {TABLE}").fetchone()  # noqa: S608
                conn.execute("SELECT pg_advisory_unlock(%s)", [_WRITERS_LOCK])
                paused = False
                # no trigger, rule or policy can be added until this refresh commits (each
                # takes a lock this one excludes), and none is there now (the writers go on)
                conn.execute(f"LOCK TABLE {ROLLUP}, {MARK} IN SHARE ROW EXCLUSIVE MODE")
                if not plain(conn):
                    raise RollupRefused(_NOT_PLAIN)
                head = int(row[0]) if row else 0
                if until is not None:
                    head = min(head, until)
                marked = conn.execute(_MARKED).fetchone()
                done = int(marked[0]) if marked else 0
                if done >= head:
                    return Refreshed(done, done, 0, time.perf_counter() - started)
                if key is not None:
                    verdict = verify_snapshot(conn, dsn, key=key, directory=directory)
                    if not verdict.ok:
                        raise RollupRefused(
                            f"{TABLE} does not verify, so it was not rolled up: {verdict.problem}"
                        )
                added = 0
                for low in range(done, head, step):
                    added += conn.execute(_ADD, [low, min(head, low + step)]).rowcount
                own = conn.execute(_XACT).fetchone()
                xact = int(own[0]) if own else 0
                mac = None if key is None else mark_mac(key, done, head, added, xact)
                conn.execute(
                    f"INSERT INTO {MARK} (start, upto, added, xact, mac) "  # noqa: S608
                    "VALUES (%s, %s, %s, %s, %s)",
                    [done, head, added, xact, mac],
                )
        finally:
            if paused:  # (closing the connection would let the writers go too)
                conn.execute("SELECT pg_advisory_unlock(%s)", [_WRITERS_LOCK])
    return Refreshed(done, head, added, time.perf_counter() - started)
