"""The SQL the PostgreSQL sink's questions are asked in: ledger rows, from the events or a rollup.

Every question (who-read, what-read, the report's sums) reads *ledger rows*:
one per ledger entry of ``accessguard.events``, or one per hour and key of
the hourly rollup ``accessguard.ledger_hours`` (accessguard.investigate.rollup),
with the same columns either way:

    ts_min, ts_max      the entry's time (``ts``: its last statement); a rollup
                        row's earliest and latest
    hour, first_hour    the hour of ``ts`` and of the entry's first statement
    user_name ... roles the key (``KEY``)
    statements, rows    sums
    first, last         the first and the last statement (min and max)

Sums, minima, maxima, unions and distinct counts compose, so a question asked
over whole hours of the rollup, the partial hours at either end of the window
from the events, and the events written after the rollup's mark (``ledger_rows``)
has the answer it has over the events alone. Periods of whole hours (the
report's timeline and the peer baselines) are taken from ``hour`` and
``first_hour``, which a rollup row holds exactly.

The strings are built from this module's constants only, never from input;
values are bound as parameters.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

__all__ = [
    "ENTRIES",
    "KEY",
    "LEDGER",
    "LEDGER_COLUMNS",
    "ROLLUP",
    "ROLLUP_MARK",
    "ROW",
    "TABLE",
    "ledger_rows",
    "window_clause",
]

TABLE = "accessguard.events"
ROLLUP = "accessguard.ledger_hours"
ROLLUP_MARK = "accessguard.ledger_hours_mark"
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


#: one ledger entry of accessguard.events, as the columns the rollup keeps
ROW = f"""
user_name, ticket_id, event->>'accessguard.ticket.kind' AS ticket_kind, subject_kind, subject_id,
{_strings("accessguard.columns")} AS columns, {_strings("accessguard.tables")} AS tables,
{_strings("user.roles")} AS roles,
{_count("accessguard.statements")} AS statements, {_count("accessguard.rows")} AS rows,
{_time("accessguard.first")} AS first, {_time("accessguard.last")} AS last
"""
LEDGER = "action = 'ledger' AND subject_id IS NOT NULL"
KEY = "user_name, ticket_id, ticket_kind, subject_kind, subject_id, columns, tables, roles"
#: the columns of a ledger row, whichever table it comes from
LEDGER_COLUMNS = f"ts_min, ts_max, hour, first_hour, {KEY}, statements, rows, first, last"

# Built from the constants above only (no input): S608 does not apply.
_ENTRY = (
    "SELECT ts AS ts_min, ts AS ts_max, date_trunc('hour', ts) AS hour, "  # noqa: S608
    f"date_trunc('hour', first) AS first_hour, {KEY}, statements, rows, first, last "
    "FROM ({inner}) AS entry"
)
_RAW = _ENTRY.replace("{inner}", f"SELECT ts, {ROW} FROM {TABLE} WHERE {LEDGER} AND {{where}}")  # noqa: S608
# entries written after the mark: found by id first (the fence keeps the plan so; the
# upper bound keeps the estimate small, and the plan an index scan, before the
# partition written to last has statistics)
_TAIL = _ENTRY.replace(
    "{inner}",
    f"SELECT ts, {ROW} FROM (SELECT * FROM {TABLE} WHERE id > %s AND id <= %s OFFSET 0) AS tail "  # noqa: S608
    f"WHERE {LEDGER} AND {{where}}",
)
_ROLLED = f"SELECT {LEDGER_COLUMNS} FROM {ROLLUP} WHERE {{where}}"  # noqa: S608

ENTRIES = f"""
SELECT {_time("accessguard.first")} AS first, {_time("accessguard.last")} AS last,
       user_name, event->'user.roles', ticket_id, event->>'accessguard.ticket.kind',
       event->'accessguard.tables', event->'accessguard.columns',
       {_count("accessguard.statements")}, {_count("accessguard.rows")},
       event->>'accessguard.fingerprint'
FROM {TABLE}
WHERE action = 'ledger' AND subject_kind = %s AND subject_id = %s {{window}}
ORDER BY first, last, user_name, ticket_id
"""  # noqa: S608


def ledger_rows(
    match: str,
    values: list[Any],
    *,
    start: dt.datetime | None,
    end: dt.datetime | None,
    rolled: tuple[int, int] | None,
) -> tuple[str, list[Any]]:
    """The ledger rows in [start, end) that ``match`` holds, as SQL and its parameters.

    ``match`` is a condition on user_name, ticket_id, subject_kind and subject_id
    only (the columns both tables have), with ``values`` its parameters. With no
    ``rolled`` (no trusted rollup) the rows are the events'; with ``(mark, head)``,
    whole hours come from the rollup (which holds the events up to id ``mark``),
    and the partial hours at either end and the entries written after ``mark`` (up
    to ``head``, the last event the session sees) from the events.
    """
    clause, params = window_clause("ts", start, end)
    if rolled is None:
        return _RAW.replace("{where}", match + clause), [*values, *params]
    mark, head = rolled
    low = _hour_up(start) if start is not None else None
    high = _hour_down(end) if end is not None else None
    hours, hour_params = window_clause("hour", low, high)
    parts = [_ROLLED.replace("{where}", match + hours)]
    bound: list[Any] = [*values, *hour_params]
    # the partial hours at either end, as index ranges on ts (none if the window is open)
    if low is not None and high is not None and low >= high:
        edges = [(start, end)]  # within one or two partial hours: all of it
    else:
        edges = [(start, low)] if low is not None else []
        edges += [(high, end)] if high is not None else []
    for begin, finish in edges:
        edge, edge_params = window_clause("ts", begin, finish)
        parts.append(_RAW.replace("{where}", f"{match}{edge} AND id <= %s"))
        bound += [*values, *edge_params, mark]
    parts.append(_TAIL.replace("{where}", match + clause))
    bound += [mark, max(head, mark), *values, *params]
    return " UNION ALL ".join(parts), bound


def window_clause(
    column: str, start: dt.datetime | None, end: dt.datetime | None
) -> tuple[str, list[Any]]:
    """`` AND column >= %s AND column < %s`` for the bounds given, and their values."""
    clause, params = "", []
    if start is not None:
        clause += f" AND {column} >= %s"
        params.append(start)
    if end is not None:
        clause += f" AND {column} < %s"
        params.append(end)
    return clause, params


def _hour_down(when: dt.datetime) -> dt.datetime:
    return when.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def _hour_up(when: dt.datetime) -> dt.datetime:
    down = _hour_down(when)
    return down if down == when else down + dt.timedelta(hours=1)
