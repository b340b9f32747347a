"""The PostgreSQL trail's tables: their DDL, the statements on them, an event as a row.

``accessguard.events`` is partitioned by month on ``ts`` (``month_partition``
names a month's partition and its bounds) and indexed by data subject, by
user, and (partially) by id for the events that are not ledger entries, which
the report reads one by one; ``accessguard.checkpoints`` holds the chain's checkpoints and
``accessguard.spool_marks`` how far each spool was delivered. ``DDL``
creates them. The SQL strings here are built from these constants only,
never from input. ``event_row`` turns an event into the columns of its row
(the indexed ones as the event says they are); ``read_events`` reads every
event back in chain order. The sink that writes them is
``accessguard.audit.pgsink``; the verifier ``accessguard.audit.pgverify``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import psycopg

from accessguard.audit.chain import HASH

__all__ = [
    "CHECKPOINTS",
    "DDL",
    "INSERT_CHECKPOINT",
    "INSERT_EVENT",
    "INSERT_MARK",
    "LOCK_KEY",
    "MARKS",
    "SCHEMA",
    "SELECT_ALL",
    "SELECT_ALL_CHECKPOINTS",
    "SELECT_COUNT",
    "SELECT_DELIVERED",
    "SELECT_LAST",
    "SELECT_LATEST_CHECKPOINTS",
    "TABLE",
    "TABLES",
    "Event",
    "event_row",
    "event_timestamp",
    "month_partition",
    "read_events",
]

Event = dict[str, Any]

SCHEMA = "accessguard"
TABLE = f"{SCHEMA}.events"
CHECKPOINTS = f"{SCHEMA}.checkpoints"
MARKS = f"{SCHEMA}.spool_marks"
LOCK_KEY = 0x61636365  # "acce": the advisory lock that serialises chain writers

DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {TABLE} (
    id bigint GENERATED ALWAYS AS IDENTITY,
    ts timestamptz NOT NULL,
    action text NOT NULL,
    user_name text,
    ticket_id text,
    subject_kind text,
    subject_id text,
    hash text NOT NULL,
    event jsonb NOT NULL,
    PRIMARY KEY (id, ts)
) PARTITION BY RANGE (ts);
CREATE INDEX IF NOT EXISTS events_subject ON {TABLE} (subject_kind, subject_id, ts);
CREATE INDEX IF NOT EXISTS events_user ON {TABLE} (user_name, ts);
CREATE INDEX IF NOT EXISTS events_others ON {TABLE} (id) WHERE action <> 'ledger';
CREATE TABLE IF NOT EXISTS {CHECKPOINTS} (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    seq bigint NOT NULL,
    hash text NOT NULL,
    key text,
    mac text NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS checkpoints_seq ON {CHECKPOINTS} (seq);
CREATE TABLE IF NOT EXISTS {MARKS} (
    spool text NOT NULL,
    delivered bigint NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS spool_marks_spool ON {MARKS} (spool, delivered);
"""

# Built from the constants above only (no input): S608 does not apply.
_COLUMNS = "ts, action, user_name, ticket_id, subject_kind, subject_id, hash, event"
INSERT_EVENT = f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"  # noqa: S608
SELECT_LAST = f"SELECT event FROM {TABLE} ORDER BY id DESC LIMIT 1"  # noqa: S608
SELECT_COUNT = f"SELECT count(*) FROM {TABLE}"  # noqa: S608
SELECT_ALL = f"SELECT {_COLUMNS} FROM {TABLE} ORDER BY id"  # noqa: S608
INSERT_CHECKPOINT = f"INSERT INTO {CHECKPOINTS} (seq, hash, key, mac) VALUES (%s, %s, %s, %s)"  # noqa: S608
SELECT_LATEST_CHECKPOINTS = (
    f"SELECT seq, hash, key, mac FROM {CHECKPOINTS} ORDER BY seq DESC, id DESC LIMIT 50"  # noqa: S608
)
SELECT_ALL_CHECKPOINTS = f"SELECT id, seq, hash, key, mac FROM {CHECKPOINTS} ORDER BY seq, id"  # noqa: S608
INSERT_MARK = f"INSERT INTO {MARKS} (spool, delivered) VALUES (%s, %s)"  # noqa: S608
SELECT_DELIVERED = f"SELECT max(delivered) FROM {MARKS} WHERE spool = %s"  # noqa: S608
TABLES = ("events", "checkpoints", "spool_marks")


def month_partition(ts: dt.datetime) -> tuple[str, str, str]:
    """The partition of ``ts``'s month: its name, first instant and the next month's."""
    start = ts.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    return f"events_{start:%Y_%m}", start.isoformat(), end.isoformat()


def event_timestamp(event: Event) -> dt.datetime:
    """When the event says it happened (aware); now if it does not say."""
    raw = event.get("@timestamp")
    if isinstance(raw, str):
        try:
            when = dt.datetime.fromisoformat(raw)
        except ValueError:
            pass
        else:
            return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
    return dt.datetime.now(dt.UTC)


def _text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def event_row(event: Event) -> tuple[Any, ...]:
    return (
        event_timestamp(event),
        _text(event.get("event.action", "query")),
        *_indexed(event),
        event[HASH],
        json.dumps(event, sort_keys=True, default=str),
    )


def _indexed(event: Event) -> tuple[str | None, ...]:
    """The indexed columns as the event says they are: user, ticket, subject kind and id."""
    subject = event.get("accessguard.subject.id")
    return (
        _text(event.get("user.name")),
        _text(event.get("accessguard.ticket.id")),
        _text(event.get("accessguard.subject.kind")),
        None if subject is None else str(subject),
    )


# ---------------------------------------------------------------------- reading


def read_events(dsn: str) -> Iterator[Event]:
    """Every event in the PostgreSQL sink, in chain order (unverified)."""
    with psycopg.connect(dsn) as conn:
        for row in conn.execute(SELECT_ALL):
            yield dict(row[-1])
