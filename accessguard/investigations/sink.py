"""Questions over the PostgreSQL sink, asked as SQL on its indexed table.

``accessguard.events`` (accessguard.pgsink) is partitioned by month on ``ts``
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

from collections.abc import Iterator
from typing import Any

import psycopg

from accessguard.investigations.core import Entry, Group, Window, utc

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


# Built from the constants above only (no input): S608 does not apply.
_MATCHED = f"""
SELECT dense_rank() OVER (ORDER BY user_name, ticket_id, event->>'accessguard.ticket.kind',
                                   subject_kind, subject_id) AS gid,
       user_name, ticket_id, event->>'accessguard.ticket.kind' AS ticket_kind,
       subject_kind, subject_id,
       {_count("accessguard.statements")} AS statements,
       {_count("accessguard.rows")} AS rows,
       {_time("accessguard.first")} AS first,
       {_time("accessguard.last")} AS last,
       {_strings("accessguard.columns")} AS columns,
       {_strings("accessguard.tables")} AS tables,
       {_strings("user.roles")} AS roles
FROM {TABLE}
WHERE action = 'ledger' AND subject_id IS NOT NULL AND {{where}}
"""  # noqa: S608
_GROUPS = f"""
WITH m AS MATERIALIZED ({_MATCHED}),
g AS (
    SELECT gid, min(user_name) AS user_name, min(ticket_id) AS ticket_id,
           min(ticket_kind) AS ticket_kind, min(subject_kind) AS subject_kind,
           min(subject_id) AS subject_id, sum(statements)::bigint AS statements,
           sum(rows)::bigint AS rows, min(first) AS first, max(last) AS last
    FROM m GROUP BY gid
),
c AS (SELECT gid, array_agg(DISTINCT x) AS v
      FROM m, jsonb_array_elements_text(m.columns) AS x GROUP BY gid),
t AS (SELECT gid, array_agg(DISTINCT x) AS v
      FROM m, jsonb_array_elements_text(m.tables) AS x GROUP BY gid),
r AS (SELECT gid, array_agg(DISTINCT x) AS v
      FROM m, jsonb_array_elements_text(m.roles) AS x GROUP BY gid)
SELECT g.user_name, g.ticket_id, g.ticket_kind, g.subject_kind, g.subject_id,
       g.statements, g.rows, c.v, t.v, r.v, g.first, g.last
FROM g LEFT JOIN c USING (gid) LEFT JOIN t USING (gid) LEFT JOIN r USING (gid)
"""  # noqa: S608
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


class SinkEngine:
    """who-read, what-read and subject-export as SQL over the PostgreSQL sink."""

    def __init__(self, dsn: str) -> None:
        self._conn = psycopg.connect(dsn, autocommit=False)
        self._conn.execute("SET TIME ZONE 'UTC'")
        self._conn.execute("SET TRANSACTION READ ONLY")
        self.name = "postgresql accessguard.events"

    def _groups(self, where: str, params: list[Any]) -> list[Group]:
        sql = _GROUPS.replace("{where}", where)
        rows = self._conn.execute(sql, params).fetchall()
        return [
            Group(
                u,
                t,
                k,
                s,
                i,
                st,
                rw,
                tuple(c or ()),
                tuple(tb or ()),
                tuple(r or ()),
                utc(f),
                utc(last),
            )
            for u, t, k, s, i, st, rw, c, tb, r, f, last in rows
        ]

    def by_subject(self, scope: str, subject: str, window: Window) -> list[Group]:
        clause, params = _window(window)
        return self._groups(
            f"subject_kind = %s AND subject_id = %s{clause}", [scope, subject, *params]
        )

    def by_user(self, user: str, window: Window) -> list[Group]:
        clause, params = _window(window)
        return self._groups(f"user_name = %s{clause}", [user, *params])

    def entries(self, scope: str, subject: str, window: Window) -> Iterator[Entry]:
        clause, params = _window(window)
        with self._conn.cursor(name="accessguard_subject_export") as cur:
            cur.itersize = 2000
            cur.execute(_ENTRIES.replace("{window}", clause), [scope, subject, *params])
            for f, last, u, roles, t, k, tables, cols, st, rw, fp in cur:
                yield Entry(
                    first=utc(f),
                    last=utc(last),
                    user=u,
                    roles=tuple(sorted(_strs(roles))),
                    ticket=t,
                    ticket_kind=k,
                    tables=_strs(tables),
                    columns=_strs(cols),
                    statements=st,
                    rows=rw,
                    fingerprint=fp,
                )

    def close(self) -> None:
        self._conn.close()


def _strs(value: object) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def _window(window: Window) -> tuple[str, list[Any]]:
    clause, params = "", []
    if window.start is not None:
        clause += " AND ts >= %s"
        params.append(window.start)
    if window.end is not None:
        clause += " AND ts < %s"
        params.append(window.end)
    return clause, params
