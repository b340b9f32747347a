"""Questions over a JSON-lines trail, answered by DuckDB (the module that runs it).

DuckDB reads the trail's JSON lines directly (``read_json``, newline-delimited,
an explicit column list: only the ledger fields are parsed). That scan is
bounded in memory but reads the whole file each time (about 9 s a gigabyte
here). So, by default, the ledger entries are kept in an index beside the
trail, ``TRAIL.index/``: Parquet parts (zstd, sorted by subject) and a
manifest saying how many bytes of the trail they cover. Each question first
indexes what was appended since (whole lines only, in chunks, so memory stays
bounded), then asks the parts. A trail that shrank or whose first bytes or
last indexed line changed is indexed again from the start (the index:
accessguard.investigate.trail_index).

Concurrency: updates take an exclusive lock on ``TRAIL.index/lock``, queries a
shared one; the trail's size is read under a shared lock on the trail itself,
so a batch being appended is never half indexed.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb

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
from accessguard.investigate.sums import REFUSED, names, parse_time
from accessguard.investigate.trail_index import LEDGER_SQL, Index, Unverified, locked

_GROUP = """
SELECT user_name, ticket_id, ticket_kind, subject_kind, subject_id,
       sum(statements)::BIGINT, sum(rows)::BIGINT, columns, tables, roles, min(first), max(ts)
FROM {source} WHERE {where}
GROUP BY user_name, ticket_id, ticket_kind, subject_kind, subject_id, columns, tables, roles
"""
_BUCKETS = """
SELECT user_name, roles, date_trunc('{unit}', first) AS start,
       count(DISTINCT subject_id) FILTER (WHERE subject_kind = 'customer'),
       sum(rows)::BIGINT, sum(statements)::BIGINT
FROM {source} WHERE {where} AND user_name IS NOT NULL AND first IS NOT NULL
GROUP BY user_name, roles, start
"""
_ENTRIES = """
SELECT first, ts, user_name, roles, ticket_id, ticket_kind, tables, columns,
       statements, rows, fingerprint
FROM {source} WHERE {where}
ORDER BY first NULLS FIRST, ts NULLS FIRST, user_name, ticket_id
"""


# the report's figures (accessguard.investigate.report_engine); {where} has the window
_VOLUMES = """
SELECT user_name, list(DISTINCT roles),
       count(DISTINCT subject_id) FILTER (WHERE subject_kind = 'customer'),
       count(DISTINCT [subject_kind, subject_id])
           FILTER (WHERE subject_kind IS DISTINCT FROM 'customer'),
       count(DISTINCT ticket_id), sum(statements)::BIGINT, sum(rows)::BIGINT, min(ts), max(ts)
FROM {source} WHERE {where} AND user_name IS NOT NULL GROUP BY user_name ORDER BY user_name
"""
_REACH = """
SELECT subject_id, count(DISTINCT user_name), sum(statements)::BIGINT, sum(rows)::BIGINT
FROM {source} WHERE {where} AND user_name IS NOT NULL GROUP BY subject_id
"""
_READERS = """
SELECT DISTINCT subject_id, user_name FROM {source} WHERE {where} AND user_name IS NOT NULL
"""
_TIMELINE = """
SELECT user_name, to_timestamp(floor(epoch(ts) / ?) * ?) AS start,
       count(DISTINCT subject_id) FILTER (WHERE subject_kind = 'customer'),
       sum(rows)::BIGINT, sum(statements)::BIGINT
FROM {source} WHERE {where} AND user_name IS NOT NULL AND ts IS NOT NULL
GROUP BY user_name, start
"""


def _connect(memory: str, temp: Path | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(config={"memory_limit": memory, "threads": 2})
    con.execute("SET TimeZone = 'UTC'")
    if temp is not None:
        con.execute("SET temp_directory = ?", [str(temp)])
    return con


class TrailEngine:
    """who-read, what-read and subject-export over one JSON-lines trail."""

    def __init__(
        self,
        trail: str | Path,
        *,
        index: str | Path | None = None,
        use_index: bool = True,
        memory: str = "256MB",
    ) -> None:
        self.trail = Path(trail)
        if not self.trail.is_file():
            raise FileNotFoundError(2, "No such file", str(self.trail))
        self.index = Path(index) if index is not None else Path(f"{self.trail}.index")
        self._con = _connect(memory, self.index if use_index else None)
        self._parts: list[str] | None = None
        self.name = "duckdb (JSON lines, no index)"
        #: said to the user when the index could not be kept (the trail is scanned instead)
        self.note: str | None = None
        if use_index:
            try:
                self._parts = Index(self.trail, self.index, self._con).update()
            except OSError as exc:
                self.note = (
                    f"cannot keep the index {self.index} ({exc.strerror or exc}): scanning "
                    "the whole trail instead (--index DIR puts it elsewhere)"
                )
            except Unverified as exc:
                self.note = (
                    f"the trail does not verify ({exc}): it was not indexed past the last "
                    "verified chunk; scanning the whole trail instead"
                )
            else:
                self.name = f"duckdb index {self.index}"

    # ------------------------------------------------------------------ questions

    def _source(self) -> tuple[str, list[Any]]:
        if self._parts is None:
            return f"({LEDGER_SQL})", [str(self.trail)]
        return "read_parquet(?)", [[str(self.index / p) for p in self._parts]]

    def _groups(self, where: str, params: list[Any]) -> list[Group]:
        if self._parts == []:
            return []
        source, head = self._source()
        with self._reading():
            rows = self._con.execute(
                _GROUP.format(source=source, where=where), [*head, *params]
            ).fetchall()
        return [
            Group(u, t, k, s, i, st, rw, strs(c), strs(tb), strs(r), f, last)
            for u, t, k, s, i, st, rw, c, tb, r, f, last in rows
        ]

    def by_subject(self, scope: str, subject: str, window: Window) -> list[Group]:
        where, params = _window("subject_kind = ? AND subject_id = ?", [scope, subject], window)
        return self._groups(where, params)

    def by_user(self, user: str, window: Window) -> list[Group]:
        where, params = _window("user_name = ?", [user], window)
        return self._groups(where, params)

    def entries(self, scope: str, subject: str, window: Window) -> Iterator[Entry]:
        if self._parts == []:
            return
        source, head = self._source()
        where, params = _window("subject_kind = ? AND subject_id = ?", [scope, subject], window)
        with self._reading():
            cur = self._con.execute(_ENTRIES.format(source=source, where=where), [*head, *params])
            while batch := cur.fetchmany(2048):
                yield from map(Entry.of_row, batch)

    def buckets(self, window: Window, unit: str = "hour") -> list[Bucket]:
        """Distinct customers, rows and statements per (employee, role set, hour or day)."""
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {', '.join(UNITS)}")
        if self._parts == []:
            return []
        source, head = self._source()
        where, params = _window("true", [], window)
        with self._reading():
            rows = self._con.execute(
                _BUCKETS.format(source=source, where=where, unit=unit), [*head, *params]
            ).fetchall()
        merged: dict[tuple[str, tuple[str, ...], Any], list[int]] = {}
        for user, roles, hour, customers, n_rows, statements in rows:
            # role arrays in another order are one role set (a rare case: summed here)
            sums = merged.setdefault((user, tuple(sorted(strs(roles))), utc(hour)), [0, 0, 0])
            sums[0] += customers
            sums[1] += n_rows
            sums[2] += statements
        return sorted(Bucket(u, r, h, *sums) for (u, r, h), sums in merged.items())

    def _rows(self, sql: str, where: str, params: list[Any], head: list[Any] = []) -> list[Any]:  # noqa: B006 - never changed
        if self._parts == []:
            return []
        source, files = self._source()
        with self._reading():
            return self._con.execute(
                sql.format(source=source, where=where), [*head, *files, *params]
            ).fetchall()

    def volumes(self, window: Window) -> list[Volume]:
        """Per employee: roles, distinct customers, other subjects and tickets, sums, span."""
        where, params = _window("true", [], window)
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
            for u, roles, c, p, t, st, rw, lo, hi in self._rows(_VOLUMES, where, params)
        ]

    def reach(self, scope: str, window: Window) -> list[Reach]:
        """Per subject of ``scope``: distinct readers, statements, rows."""
        where, params = _window("subject_kind = ?", [scope], window)
        return [Reach(*row) for row in self._rows(_REACH, where, params)]

    def readers_of(
        self, scope: str, subjects: Sequence[str], window: Window
    ) -> list[tuple[str, str]]:
        """(subject, employee) for each employee who read one of ``subjects``."""
        if not subjects:
            return []
        where, params = _window(
            "subject_kind = ? AND list_contains(?, subject_id)", [scope, list(subjects)], window
        )
        return [(s, u) for s, u in self._rows(_READERS, where, params)]

    def timeline(self, window: Window, seconds: int) -> list[Cell]:
        """Per employee and period of ``seconds`` (from the epoch): customers, rows, statements."""
        where, params = _window("true", [], window)
        return [
            Cell(u, utc_at(start), c, rw, st)
            for u, start, c, rw, st in self._rows(_TIMELINE, where, params, [seconds, seconds])
        ]

    def by_tickets(self, tickets: Sequence[str], kind: str | None) -> list[Group]:
        """Every ledger group of ``tickets``, or of a ticket kind ``kind`` or ``kind.*``."""
        where, params = "false", list[Any]()
        if kind is not None:
            where, params = "(ticket_kind = ? OR starts_with(ticket_kind, ?))", [kind, f"{kind}."]
        if tickets:
            where = f"(list_contains(?, ticket_id) OR {where})"
            params = [list(tickets), *params]
        return self._groups(where, params)

    def lifecycle(self, tickets: Collection[str]) -> Iterator[dict[str, Any]]:
        """The ticket lifecycle events (``ticket.*``) of ``tickets``, in trail order."""
        # the trail's lines are written canonically: a lifecycle event's holds these bytes
        for event in self._others(b'"ticket.'):
            action = event.get("event.action")
            ticket = event.get("accessguard.ticket.id")
            if isinstance(action, str) and action.startswith("ticket.") and ticket in tickets:
                yield event

    def refusals_of(self, scope: str, subject: str, window: Window) -> Iterator[dict[str, Any]]:
        """The refusals naming ``subject``, from the copy of non-ledger events (only lines
        holding its digits are parsed)."""
        for event in self._others(subject.encode()):
            refused = event.get("accessguard.outcome") in REFUSED
            if refused and names(event, scope, subject):
                when = parse_time(event.get("@timestamp"))
                if window.holds(when):
                    yield event

    def others(self) -> Iterator[dict[str, Any]]:
        """The trail's events that are not ledger entries, in trail order."""
        return self._others(b"")

    def _others(self, having: bytes) -> Iterator[dict[str, Any]]:
        from accessguard.investigate.trail_others import Others, scan

        if self._parts is None:
            yield from scan(self.trail, having)
            return

        side = Others(self.trail, self.index)
        try:
            side.update()
        except (OSError, Unverified):  # cannot be written here, or does not verify: the trail
            yield from scan(self.trail, having)
            return
        yield from side.read(having)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        if self._parts is None:
            yield
            return
        with locked(self.index / "lock", fcntl.LOCK_SH):
            yield

    def close(self) -> None:
        self._con.close()


def _window(where: str, params: list[Any], window: Window) -> tuple[str, list[Any]]:
    if window.start is None and window.end is None:
        return where, params
    where += " AND ts IS NOT NULL"
    if window.start is not None:
        where += " AND ts >= ?"
        params = [*params, window.start]
    if window.end is not None:
        where += " AND ts < ?"
        params = [*params, window.end]
    return where, params
