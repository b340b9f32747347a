"""The trail's index: its ledger entries as Parquet parts beside it, kept up to date.

``TRAIL.index/``: Parquet parts (zstd, sorted by subject) and a manifest
saying how many bytes of the trail they cover. Each update indexes what was
appended since (whole lines only, in chunks of ``CHUNK`` bytes, so memory
stays bounded). A trail that shrank or whose first bytes or last indexed line
changed is indexed again from the start. Parts are merged when there are more
than ``MAX_PARTS``. Updates take an exclusive lock on ``TRAIL.index/lock``,
queries a shared one; the trail's size is read under a shared lock on the
trail itself, so a batch being appended is never half indexed.

With the audit key set, every chunk is verified as it is indexed: its lines,
copied aside first, must continue the chain from where the last chunk ended
(``Chained``, kept in the MAC'd manifest), and DuckDB reads that very copy.
So the index holds only events the key vouches for, read once: a line edited
while an index update (from cron, say) runs, and put back before the next
verification, cannot reach it. A chunk that does not continue the chain is
not indexed (``Unverified``): the questions then read the trail itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from accessguard.audit.chain import GENESIS, load_key, parse_line
from accessguard.audit.verification import ChainCheck

if TYPE_CHECKING:
    import duckdb

INDEX_VERSION = 4  # 2: arrays kept as JSON text; 3: keyed chunks verified as indexed; 4: and
#: lines naming a key twice refused (DuckDB read the first, the chain the last)
MAX_PARTS = 8
CHUNK = 128 * 1024 * 1024  # bytes of trail per indexing step
_PROBE = 4096  # bytes hashed at the head of the trail and before the indexed offset

#: the trail fields read, as DuckDB types (everything else in a line is skipped)
_FIELDS = {
    "event.action": "VARCHAR",
    "@timestamp": "VARCHAR",
    "accessguard.first": "VARCHAR",
    "accessguard.last": "VARCHAR",
    "user.name": "VARCHAR",
    "user.roles": "JSON",
    "accessguard.ticket.id": "VARCHAR",
    "accessguard.ticket.kind": "VARCHAR",
    "accessguard.subject.kind": "VARCHAR",
    "accessguard.subject.id": "VARCHAR",
    "accessguard.statements": "JSON",
    "accessguard.rows": "JSON",
    "accessguard.columns": "JSON",
    "accessguard.tables": "JSON",
    "accessguard.fingerprint": "VARCHAR",
}


def _strings(name: str) -> str:
    # kept as JSON text: Python reads the elements as investigate does (str() of each)
    return f"CASE WHEN json_type(\"{name}\") = 'ARRAY' THEN \"{name}\"::VARCHAR ELSE '[]' END"


def _count(name: str) -> str:
    # investigate counts JSON integers only (not floats, not booleans)
    return (
        f"CASE WHEN json_type(\"{name}\") IN ('UBIGINT', 'BIGINT') "
        f'THEN TRY_CAST("{name}" AS BIGINT) ELSE 0 END'
    )


_TS = 'COALESCE(TRY_CAST("accessguard.last" AS TIMESTAMPTZ), TRY_CAST("@timestamp" AS TIMESTAMPTZ))'
#: the ledger entries of a JSON-lines source, as index rows
_LEDGER = f"""
SELECT
    "user.name" AS user_name,
    "accessguard.ticket.id" AS ticket_id,
    "accessguard.ticket.kind" AS ticket_kind,
    "accessguard.subject.kind" AS subject_kind,
    "accessguard.subject.id" AS subject_id,
    {_TS} AS ts,
    COALESCE(TRY_CAST("accessguard.first" AS TIMESTAMPTZ), {_TS}) AS first,
    {_count("accessguard.statements")} AS statements,
    {_count("accessguard.rows")} AS rows,
    {_strings("accessguard.columns")} AS columns,
    {_strings("accessguard.tables")} AS tables,
    {_strings("user.roles")} AS roles,
    "accessguard.fingerprint" AS fingerprint
FROM read_json(?, format = 'newline_delimited', columns = {{COLUMNS}}, ignore_errors = true,
               maximum_object_size = 16777216)
WHERE "event.action" = 'ledger' AND "accessguard.subject.id" IS NOT NULL
"""  # noqa: S608 - built from the constants above only
_COLUMNS = "{" + ", ".join(f"'{k}': '{v}'" for k, v in _FIELDS.items()) + "}"
LEDGER_SQL = _LEDGER.replace("{COLUMNS}", _COLUMNS)


@contextlib.contextmanager
def locked(path: Path, mode: int) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class Unverified(Exception):
    """A chunk of the trail does not continue its chain: it was not indexed (nor copied)."""


class Chained:
    """The chain check carried from one chunk to the next (its state kept in a manifest)."""

    def __init__(self, key: bytes, state: Any) -> None:
        self.check = ChainCheck(key)
        if isinstance(state, dict):
            self.check.count = int(state.get("count", 0))
            self.check.prev = str(state.get("prev", GENESIS))
            self.check.positioned = bool(state.get("positioned", False))

    def state(self) -> dict[str, Any]:
        c = self.check
        return {"count": c.count, "prev": c.prev, "positioned": c.positioned}

    def feed(self, lines: Iterable[bytes]) -> None:
        """Check each line (blank ones skipped, as ``verify`` does); raise ``Unverified``."""
        for _ in self.passed(lines):
            pass

    def passed(self, lines: Iterable[bytes]) -> Iterator[bytes]:
        """Each line once it is checked; ``Unverified`` at the first that does not link."""
        for raw in lines:
            if raw.strip():
                try:
                    event = parse_line(raw)
                except ValueError:
                    event = None
                problem = self.check.feed(event)
                if problem is not None:
                    raise Unverified(f"event {self.check.count + 1}: {problem}")
            yield raw


def lines_of(fh: BinaryIO, start: int, end: int, block: int = 8 * 1024 * 1024) -> Iterator[bytes]:
    """The lines of ``fh`` in [start, end), read in bounded blocks (``end`` ends a line)."""
    fh.seek(start)
    left, carry = end - start, b""
    while left > 0:
        data = fh.read(min(left, block))
        if not data:
            break
        left -= len(data)
        lines = (carry + data).split(b"\n")
        carry = lines.pop()
        yield from lines
    if carry:
        yield carry


class Index:
    """The trail's ledger entries as Parquet parts, brought up to date incrementally."""

    def __init__(self, trail: Path, root: Path, con: duckdb.DuckDBPyConnection) -> None:
        self.trail, self.root, self.con = trail, root, con
        self.manifest = root / "manifest.json"
        #: with the audit key, the manifest is MAC'd and names each part's SHA-256: an index
        #: edited beside a keyed trail is rebuilt from the (verified) trail, never answered from
        self.key = load_key()

    def update(self) -> list[str]:
        """Index whatever was appended since the last update; return the parts to read."""
        self.root.mkdir(mode=0o750, exist_ok=True)
        with locked(self.root / "lock", fcntl.LOCK_EX):
            state = self._state()
            with self.trail.open("rb") as fh:
                fcntl.flock(fh, fcntl.LOCK_SH)  # between two appended batches
                size = os.fstat(fh.fileno()).st_size
                fcntl.flock(fh, fcntl.LOCK_UN)
                head = digest(fh, 0, min(size, _PROBE))
                if not self._still(state, fh, size, head):
                    self._drop(state["parts"])
                    state = {
                        "version": INDEX_VERSION,
                        "offset": 0,
                        "head": head,
                        "parts": [],
                        "tail": None,
                    }
                chain = None if self.key is None else Chained(self.key, state.get("chain"))
                offset = state["offset"]
                while offset < size:
                    end = line_end(fh, offset, min(size, offset + CHUNK))
                    if end <= offset:
                        break  # a torn or unfinished last line: next time
                    part = self._ingest(fh, offset, end, chain)
                    if part is not None:
                        state["parts"].append(part)
                        state.setdefault("digests", {})[part] = file_digest(self.root / part)
                    offset = end
                    state["offset"] = offset
                    state["head"] = head if offset >= _PROBE else digest(fh, 0, offset)
                    state["tail"] = digest(fh, max(0, offset - _PROBE), offset)
                    if chain is not None:
                        state["chain"] = chain.state()
                    self._save(state)
            if len(state["parts"]) > MAX_PARTS:
                state["parts"] = self._merge(state["parts"])
                state["digests"] = {p: file_digest(self.root / p) for p in state["parts"]}
                self._save(state)
            parts: list[str] = state["parts"]
            return parts

    def _state(self) -> dict[str, Any]:
        fresh: dict[str, Any] = {
            "version": INDEX_VERSION,
            "offset": 0,
            "head": None,
            "parts": [],
            "tail": None,
        }
        try:
            state: dict[str, Any] = json.loads(self.manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return fresh
        if state.get("version") != INDEX_VERSION or not all(
            (self.root / p).is_file() for p in state.get("parts", [])
        ):
            return fresh
        if self.key is not None and not self._vouched(state):
            self._drop(state.get("parts", []))  # edited (or unkeyed): rebuilt from the trail
            return fresh
        return state

    def _vouched(self, state: dict[str, Any]) -> bool:
        """Whether the manifest's MAC holds and every part is the file it names."""
        mac = state.get("mac")
        if not isinstance(mac, str) or not hmac.compare_digest(mac, self._mac(state)):
            return False
        digests = state.get("digests")
        if not isinstance(digests, dict):
            return False
        return all(
            isinstance(digests.get(p), str) and file_digest(self.root / p) == digests[p]
            for p in state["parts"]
        )

    def _mac(self, state: dict[str, Any]) -> str:
        assert self.key is not None  # noqa: S101 - only called with a key
        body = json.dumps({k: v for k, v in state.items() if k != "mac"}, sort_keys=True)
        data = b"accessguard index\n" + body.encode()
        return hmac.new(self.key, data, hashlib.sha256).hexdigest()

    def _still(self, state: dict[str, Any], fh: BinaryIO, size: int, head: str) -> bool:
        """Whether the indexed bytes are still the trail's first bytes."""
        offset = state["offset"]
        if offset == 0:
            return True
        if size < offset or state["head"] != (head if offset >= _PROBE else digest(fh, 0, offset)):
            return False
        return bool(state["tail"] == digest(fh, max(0, offset - _PROBE), offset))

    def _ingest(self, fh: BinaryIO, start: int, end: int, chain: Chained | None) -> str | None:
        name = f"part-{start:015d}-{end:015d}.parquet"
        chunk = self.root / f".chunk-{os.getpid()}.jsonl"
        try:
            with chunk.open("wb") as out:
                fh.seek(start)
                left = end - start
                while left > 0:
                    data = fh.read(min(left, 8 * 1024 * 1024))
                    if not data:
                        break
                    out.write(data)
                    left -= len(data)
            if chain is not None:  # the copy DuckDB reads below, not the trail: no race
                with chunk.open("rb") as copied:
                    chain.feed(lines_of(copied, 0, end - start))
            target = self.root / name
            self.con.execute(
                f"COPY ({LEDGER_SQL} ORDER BY subject_kind, subject_id, ts) "
                "TO ? (FORMAT parquet, COMPRESSION zstd)",
                [str(chunk), str(target)],
            )
        finally:
            chunk.unlink(missing_ok=True)
        return name

    def _merge(self, parts: list[str]) -> list[str]:
        """Merge every part but the largest into one (sorted by subject again)."""
        sizes = sorted(parts, key=lambda p: (self.root / p).stat().st_size, reverse=True)
        keep, small = sizes[0], sorted(sizes[1:])
        name = f"merged-{hashlib.sha256(' '.join(small).encode()).hexdigest()[:16]}.parquet"
        self.con.execute(
            "COPY (SELECT * FROM read_parquet(?) ORDER BY subject_kind, subject_id, ts) "
            "TO ? (FORMAT parquet, COMPRESSION zstd)",
            [[str(self.root / p) for p in small], str(self.root / name)],
        )
        self._drop(small)
        return sorted([keep, name])

    def _drop(self, parts: Iterable[str]) -> None:
        for part in parts:
            (self.root / part).unlink(missing_ok=True)

    def _save(self, state: dict[str, Any]) -> None:
        state.pop("mac", None)
        if self.key is not None:
            state["mac"] = self._mac(state)
        temp = self.manifest.with_suffix(".tmp")
        temp.write_text(json.dumps(state), encoding="utf-8")
        temp.replace(self.manifest)


def file_digest(path: Path) -> str:
    """SHA-256 of a whole file (an index part), read in chunks."""
    found = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            found.update(block)
    return found.hexdigest()


def digest(fh: BinaryIO, start: int, end: int) -> str:
    fh.seek(start)
    return hashlib.sha256(fh.read(end - start)).hexdigest()


def line_end(fh: BinaryIO, start: int, stop: int) -> int:
    """The offset just after the last newline in [start, stop) (``start`` if none)."""
    step = 1 << 16
    pos = stop
    while pos > start:
        low = max(start, pos - step)
        fh.seek(low)
        block = fh.read(pos - low)
        cut = block.rfind(b"\n")
        if cut >= 0:
            return low + cut + 1
        pos = low
    return start
