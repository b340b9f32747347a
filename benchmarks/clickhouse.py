"""The ledger's questions on ClickHouse: the DDL and queries of docs/audit.md, checked.

    python -m benchmarks.clickhouse --audit TRAIL [--subjects 20] [--users 10]

Loads a JSON-lines trail into ClickHouse with the documented DDL and INSERT,
asks who-read and what-read for a sample of subjects and employees with the
documented queries, and compares every answer with accessguard's own engine
(DuckDB over the trail's index). ClickHouse runs embedded through ``chdb``
(``pip install chdb``; about 0.5 GB, so not a dependency of the project): the
SQL is ClickHouse's own, the same a server or a cluster runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

#: The table (docs/audit.md, "At a larger scale: ClickHouse"): one row per event, the
#: indexed columns the PostgreSQL sink has, and the event itself as written.
DDL = """
CREATE TABLE accessguard_events (
    ts DateTime64(6, 'UTC'),
    action LowCardinality(String),
    user_name Nullable(String),
    ticket_id Nullable(String),
    subject_kind LowCardinality(Nullable(String)),
    subject_id Nullable(String),
    hash String,
    event String
) ENGINE = MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (ifNull(subject_kind, ''), ifNull(subject_id, ''), ts)
"""

#: A JSON-lines trail (or a day of it), as written by the guard.
INSERT = """
INSERT INTO accessguard_events
SELECT parseDateTime64BestEffort(JSONExtractString(line, '@timestamp'), 6, 'UTC'),
       JSONExtractString(line, 'event.action'),
       JSONExtract(line, 'user.name', 'Nullable(String)'),
       JSONExtract(line, 'accessguard.ticket.id', 'Nullable(String)'),
       JSONExtract(line, 'accessguard.subject.kind', 'Nullable(String)'),
       nullIf(JSONExtractRaw(line, 'accessguard.subject.id'), ''),
       JSONExtractString(line, 'event.hash'),
       line
FROM file('{path}', 'LineAsString')
"""

#: who-read: every (employee, ticket) that read one subject, with how much and when.
WHO_READ = """
SELECT user_name,
       any(JSONExtract(event, 'user.roles', 'Array(String)')) AS roles,
       ticket_id,
       any(JSONExtract(event, 'accessguard.ticket.kind', 'Nullable(String)')) AS ticket_kind,
       sum(JSONExtractUInt(event, 'accessguard.statements')) AS statements,
       sum(JSONExtractUInt(event, 'accessguard.rows')) AS rows,
       arraySort(groupUniqArrayArray(JSONExtract(event, 'accessguard.columns', 'Array(String)')))
           AS columns,
       min(parseDateTime64BestEffort(JSONExtractString(event, 'accessguard.first'), 6, 'UTC'))
           AS first,
       max(parseDateTime64BestEffort(JSONExtractString(event, 'accessguard.last'), 6, 'UTC'))
           AS last
FROM accessguard_events
WHERE action = 'ledger' AND subject_kind = '{kind}' AND subject_id = '{subject}'
GROUP BY user_name, ticket_id
ORDER BY user_name, ticket_id
"""

#: what-read: every subject and ticket one employee read.
WHAT_READ = """
SELECT subject_id, ticket_id,
       sum(JSONExtractUInt(event, 'accessguard.statements')) AS statements,
       sum(JSONExtractUInt(event, 'accessguard.rows')) AS rows,
       arraySort(groupUniqArrayArray(JSONExtract(event, 'accessguard.columns', 'Array(String)')))
           AS columns
FROM accessguard_events
WHERE action = 'ledger' AND user_name = '{user}' AND subject_kind = 'customer'
GROUP BY subject_id, ticket_id
ORDER BY subject_id, ticket_id
"""


#: the customers and employees the ledger names, to sample from
SUBJECTS = (
    "SELECT DISTINCT subject_id FROM accessguard_events "
    "WHERE action = 'ledger' AND subject_kind = 'customer' ORDER BY subject_id"
)
USERS = (
    "SELECT DISTINCT user_name FROM accessguard_events WHERE action = 'ledger' ORDER BY user_name"
)


def _rows(session: Any, sql: str) -> list[dict[str, Any]]:
    text = str(session.query(sql, "JSONEachRow"))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _when(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--audit", type=Path, required=True)
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--seed", type=int, default=20)
    args = parser.parse_args(argv)
    try:
        from chdb import session as chs
    except ImportError:
        sys.exit("needs chdb (embedded ClickHouse): pip install chdb")
    from accessguard.investigate import Window, open_engine, what_read, who_read

    db = chs.Session()
    db.query("CREATE DATABASE IF NOT EXISTS ag")
    db.query("USE ag")
    db.query("DROP TABLE IF EXISTS accessguard_events")
    db.query(DDL)
    started = time.perf_counter()
    db.query(INSERT.format(path=args.audit.resolve()))
    loaded = time.perf_counter() - started
    count = _rows(db, "SELECT count() AS n FROM accessguard_events")[0]["n"]
    print(f"loaded {count} events in {loaded:.1f} s")
    subjects = [r["subject_id"] for r in _rows(db, SUBJECTS)]
    users = [r["user_name"] for r in _rows(db, USERS)]
    rng = random.Random(args.seed)
    engine = open_engine(audit=args.audit)
    window = Window()
    mismatches = 0
    timings: list[float] = []
    for subject in rng.sample(subjects, min(args.subjects, len(subjects))):
        started = time.perf_counter()
        got = _rows(db, WHO_READ.format(kind="customer", subject=subject))
        timings.append(time.perf_counter() - started)
        want = who_read(engine, customer=int(subject), window=window)
        ours = [
            (r.user, r.ticket, r.statements, r.rows, tuple(sorted(r.columns)), r.first, r.last)
            for r in want
        ]
        theirs = sorted(
            (
                g["user_name"],
                g["ticket_id"],
                int(g["statements"]),
                int(g["rows"]),
                tuple(g["columns"]),
                _when(g["first"]),
                _when(g["last"]),
            )
            for g in got
        )
        if sorted(ours, key=str) != sorted(theirs, key=str):
            mismatches += 1
            print(f"who-read customer {subject}: ClickHouse and the engine differ")
    for user in rng.sample(users, min(args.users, len(users))):
        got = _rows(db, WHAT_READ.format(user=user))
        touched = what_read(engine, user=user, window=window)
        ours_t = sorted(
            (str(t.customer), t.ticket, t.statements, t.rows, tuple(sorted(t.columns)))
            for t in touched
            if t.scope == "customer"
        )
        theirs_t = sorted(
            (
                g["subject_id"],
                g["ticket_id"],
                int(g["statements"]),
                int(g["rows"]),
                tuple(g["columns"]),
            )
            for g in got
        )
        if ours_t != theirs_t:
            mismatches += 1
            print(f"what-read {user}: ClickHouse and the engine differ")
    engine.close()
    median = sorted(timings)[len(timings) // 2] if timings else 0.0
    print(f"who-read p50 on ClickHouse (embedded): {median * 1000:.0f} ms")
    print("all answers equal" if mismatches == 0 else f"{mismatches} answers differ")
    return 1 if mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
