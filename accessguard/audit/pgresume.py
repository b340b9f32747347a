"""Resuming verification of the PostgreSQL trail: check only what was written since.

The investigation commands verify the trail before they answer. On a month
in the sink that meant reading 2 million events into Python before a 30 ms
SQL question. After a verification holds, a mark (kept by the investigator,
``$XDG_CACHE_HOME/accessguard/``, MAC'd with the audit key) records how far it
went: the last row id, the chain's position and hash, and the transaction
horizon of the snapshot it read (``pg_snapshot_xmin``).

The next verification proves, in one scan inside the database, that no row up
to that id changed since, then checks the chain from there as before. Why a
changed row cannot hide:

- PostgreSQL stamps every row version with the id of the transaction that
  wrote it (``xmin``), which SQL cannot set. An UPDATE, a DELETE and
  re-INSERT, or a TRUNCATE and reload all leave rows whose ``xmin`` is at or
  after the mark's horizon. Rows at or after the horizon that the marked
  verification itself read are listed in the mark with their ``xmin``; any
  other such row, or one of those with another ``xmin``, and the whole trail
  is verified again (which names the row).
- A deleted row changes the count of rows up to the id; so does a row that
  was still being written when the mark was taken.
- The mark cannot be forged without the key, and one that does not verify,
  that is older than a billion transactions, or from another key is ignored:
  full verification, never trust.
- Checkpoints are all read and their MACs checked, as before.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import IsolationLevel

from accessguard.audit.chain import FROM_ENV, Checkpoint, FromEnv, key_id, load_key
from accessguard.audit.pgtables import SELECT_ALL_CHECKPOINTS, TABLE
from accessguard.audit.pgverify import columns_differ
from accessguard.audit.pgverify import verify as verify_all
from accessguard.audit.verification import ChainCheck, Verification

__all__ = ["PgMark", "mark_file", "verify_resumed", "verify_snapshot"]

#: at most this many rows may sit between the mark's horizon and its snapshot's end
_MAX_RECENT = 10_000
#: past this many transactions since the mark, 32-bit xid ages wrap: verify everything
_MAX_AGE = 1 << 30

# Built from constants only (no input): S608 does not apply.
_HORIZON = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
#: "xmin is at or after the horizon H" (32-bit transaction ids, modulo their wrap), written
#: without ``age()``, which PostgreSQL keeps out of parallel plans
_AT_OR_AFTER = "((xmin::text::bigint - {h}) %% 4294967296 + 4294967296) %% 4294967296 < 2147483648"
#: the same test, cheaper per row (one modulo of a non-negative number): ``shift`` is
#: 2^32 - H, so x + shift is x - H taken modulo 2^32, plus 2^32 at most
_LATE = "(xmin::text::bigint + %(shift)s) %% 4294967296 < 2147483648"
#: one scan of the rows up to the mark, with aggregates PostgreSQL runs in parallel: how
#: many rows, and how many written at or after the mark's horizon (one conversion of
#: xmin per row: the scan's cost)
_SINCE = (
    f"SELECT count(*), count(*) FILTER (WHERE {_LATE}) "  # noqa: S608
    f"FROM {TABLE} WHERE id <= %(last)s"
)
#: of those, the ones the mark lists (by "id:xmin"), found by id
_LISTED = (
    f"SELECT count(*) FROM {TABLE} "  # noqa: S608
    "WHERE id = ANY(%(ids)s) AND id <= %(last)s "
    "AND (id::text || ':' || xmin::text) = ANY(%(listed)s::text[])"
)
_AFTER = (
    "SELECT id, ts, action, user_name, ticket_id, subject_kind, subject_id, hash, event, "  # noqa: S608
    f"xmin::text::bigint, {_AT_OR_AFTER.format(h='%(new)s')} "
    f"FROM {TABLE} WHERE id > %(start)s ORDER BY id"
)


@dataclass(frozen=True, slots=True)
class PgMark:
    """The sink verified through row ``last_id``: ``count`` rows, the chain at ``seq``/``hash``."""

    last_id: int
    count: int
    seq: int
    hash: str
    positioned: bool
    #: pg_snapshot_xmin of the verifying snapshot (32 bits: what xmin holds)
    horizon: int
    #: (id, xmin) of the rows it read whose xmin is at or after the horizon
    recent: tuple[tuple[int, int], ...]
    key: str | None
    mac: str = ""

    def body(self) -> str:
        fields = {
            "last_id": self.last_id,
            "count": self.count,
            "seq": self.seq,
            "hash": self.hash,
            "positioned": self.positioned,
            "horizon": self.horizon,
            "recent": [list(pair) for pair in self.recent],
            "key": self.key,
        }
        return json.dumps(fields, sort_keys=True)

    def sealed(self, key: bytes) -> PgMark:
        return PgMark(
            self.last_id,
            self.count,
            self.seq,
            self.hash,
            self.positioned,
            self.horizon,
            self.recent,
            self.key,
            _mac(self.body(), key),
        )

    def valid(self, key: bytes) -> bool:
        return self.key == key_id(key) and hmac.compare_digest(self.mac, _mac(self.body(), key))


def _mac(body: str, key: bytes) -> str:
    return hmac.new(key, b"accessguard pg verified\n" + body.encode(), hashlib.sha256).hexdigest()


def mark_file(dsn: str, directory: Path | None = None) -> Path:
    """Where the mark of ``dsn``'s trail is kept (named by a hash: a DSN may hold a password)."""
    base = directory or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    name = hashlib.sha256(dsn.encode()).hexdigest()[:32]
    return base / "accessguard" / f"pg-{name}.verified"


def _read(path: Path) -> PgMark | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        mark = PgMark(
            int(raw["last_id"]),
            int(raw["count"]),
            int(raw["seq"]),
            str(raw["hash"]),
            bool(raw["positioned"]),
            int(raw["horizon"]),
            tuple((int(i), int(x)) for i, x in raw["recent"]),
            raw["key"] if isinstance(raw["key"], str) else None,
            str(raw["mac"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return mark


def _write(path: Path, mark: PgMark) -> None:
    record = {"accessguard.pg_verified": 1, **json.loads(mark.body()), "mac": mark.mac}
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(json.dumps(record))
        tmp.replace(path)
    except OSError:
        return  # no mark: the next verification reads everything, as without one


def verify_resumed(
    dsn: str, *, key: bytes | FromEnv | None = FROM_ENV, directory: Path | None = None
) -> Verification:
    """Verify the sink's trail from where the last verification ended, if nothing before it
    changed since (see the module's docstring); else all of it. Leaves a new mark."""
    secret = load_key(key)
    if secret is None:  # no key: no mark can be trusted
        return verify_all(dsn, key=None)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET row_security = off")  # a policy errs: it never hides rows
        conn.isolation_level = IsolationLevel.REPEATABLE_READ  # one snapshot for all below
        conn.read_only = True
        with conn.transaction():
            return verify_snapshot(conn, dsn, key=secret, directory=directory)


def verify_snapshot(
    conn: psycopg.Connection[Any], dsn: str, *, key: bytes, directory: Path | None = None
) -> Verification:
    """``verify_resumed`` inside the caller's REPEATABLE READ transaction on ``conn``: every
    row its snapshot sees is verified (the rollup's refresh sums the same rows after it)."""
    path = mark_file(dsn, directory)
    result, mark = _verify(conn, key, _read(path))
    if mark is not None:
        _write(path, mark.sealed(key))
    return result


def _verify(
    conn: psycopg.Connection[Any], key: bytes, mark: PgMark | None
) -> tuple[Verification, PgMark | None]:
    row = conn.execute(_HORIZON).fetchone()
    horizon = (int(row[0]) if row is not None else 0) % (1 << 32)
    cps = [(r[0], Checkpoint(*r[1:])) for r in conn.execute(SELECT_ALL_CHECKPOINTS)]
    forged = next((i for i, c in cps if not c.valid(key)), None)
    latest = cps[-1][1] if cps else None
    check = ChainCheck(key, checkpoint=latest)
    start = position = 0
    recent: list[tuple[int, int]] = []
    kept = _holds(conn, mark, key, latest, horizon) if mark is not None else None
    if mark is not None and kept is None and mark.valid(key):
        # what an earlier verification saw must still be there, whatever the checkpoints say
        # now (rows cut back with their later checkpoints deleted verify against the rest)
        check.vouched = (mark.seq, mark.hash)
    if mark is not None and kept is not None:
        check.count, check.prev, check.positioned = mark.seq, mark.hash, mark.positioned
        if latest is not None and latest.seq == mark.seq:
            check.at_checkpoint = mark.hash
        start, position, recent = mark.last_id, mark.count, kept
    last_id = start
    for row in _rows(conn, start, horizon):
        position += 1
        event = dict(row[8])
        problem = check.feed(event) or columns_differ(row[1:9], event)
        if problem:
            return Verification(False, check.count, position, problem, key=check.kid), None
        last_id = row[0]
        if row[10]:
            recent.append((int(row[0]), int(row[9])))
    if forged is not None:
        problem = f"checkpoint row {forged} does not match its MAC (forged, or another key)"
        return Verification(False, check.count, problem=problem, key=check.kid), None
    result = check.finish(position + 1)
    if not result.ok or len(recent) > _MAX_RECENT:
        return result, None
    new = PgMark(
        last_id,
        position,
        check.count,
        check.prev,
        check.positioned,
        horizon,
        tuple(recent),
        key_id(key),
    )
    return result, new


def _holds(
    conn: psycopg.Connection[Any],
    mark: PgMark,
    key: bytes,
    latest: Checkpoint | None,
    horizon: int,
) -> list[tuple[int, int]] | None:
    """Whether the rows up to the mark are exactly those it verified (one scan, in SQL): if so,
    those of them at or after this snapshot's horizon (for the next mark); else None."""
    if not mark.valid(key) or (latest is not None and latest.seq < mark.seq):
        return None
    if (horizon - mark.horizon) % (1 << 32) >= _MAX_AGE:
        return None
    params = {"shift": (1 << 32) - mark.horizon, "last": mark.last_id}
    row = conn.execute(_SINCE, params).fetchone()
    if row is None or int(row[0]) != mark.count:
        return None  # a row deleted, or one still being written when the mark was taken
    late = int(row[1])
    if late:  # each must be a row version the mark lists (same id, same xmin: late too)
        listed = [f"{i}:{x}" for i, x in mark.recent]
        ids = [i for i, _ in mark.recent]
        found = conn.execute(_LISTED, {"ids": ids, "listed": listed, "last": mark.last_id})
        same = found.fetchone()
        if same is None or int(same[0]) != late:
            return None  # a row written (updated, re-inserted) after the mark, not one it listed
    # every row at or after the old horizon is one the mark lists, so those at or after this
    # snapshot's horizon (later) are among them too: no second scan
    return [(i, x) for i, x in mark.recent if (x - horizon) % (1 << 32) < (1 << 31)]


def _rows(conn: psycopg.Connection[Any], start: int, horizon: int) -> Iterator[tuple[Any, ...]]:
    with conn.cursor(name="accessguard_verify") as cur:  # server-side: bounded memory
        cur.itersize = 10_000
        cur.execute(_AFTER, {"start": start, "new": horizon})
        yield from cur
