"""The events of a JSON-lines trail that are not ledger entries, kept beside its index.

The report (accessguard.investigate.report_engine) needs the refusals,
throttles, watch-list notices, alerts, elevations and ticket lifecycle events
one by one; they are a small fraction of a trail (about 15,000 lines of a
month's 1.95 million). ``Others`` copies them, as they are, to
``TRAIL.index/others.jsonl``, brought up to date like the index (whatever was
appended since, whole lines only, under the index's lock) and started again
when the trail's first bytes or its last copied line changed. With the audit
key set, every line read is checked to continue the chain before any is
copied (``trail_index.Chained``): the copy holds only events the key vouches
for. A line is
skipped when it holds ``"event.action":"ledger"`` as the trail writes it; a
line written otherwise is copied and dropped when read, so no event is lost
to the shortcut. Without an index, ``scan`` reads the trail itself.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from accessguard.audit.chain import load_key
from accessguard.investigate.trail_index import (
    CHUNK,
    Chained,
    digest,
    line_end,
    lines_of,
    locked,
)

VERSION = 3  # 2: keyed lines verified as copied; 3: lines naming a key twice refused
_PROBE = 4096
_LEDGER = b'"event.action":"ledger"'


def _kept(lines: Iterator[bytes]) -> Iterator[bytes]:
    for line in lines:
        if line.strip() and _LEDGER not in line:
            yield line


def events(lines: Iterator[bytes], having: bytes = b"") -> Iterator[dict[str, Any]]:
    """The JSON objects of ``lines`` that are not ledger entries (unreadable lines skipped);
    with ``having``, only lines holding those bytes are parsed (a filter before JSON)."""
    for line in _kept(lines):
        if having not in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event.action") != "ledger":
            yield event


def scan(trail: Path, having: bytes = b"") -> Iterator[dict[str, Any]]:
    """The trail's events that are not ledger entries, read from the trail (no index)."""
    with trail.open("rb") as fh:
        fcntl.flock(fh, fcntl.LOCK_SH)
        size = os.fstat(fh.fileno()).st_size
        fcntl.flock(fh, fcntl.LOCK_UN)
        yield from events(lines_of(fh, 0, line_end(fh, 0, size)), having)


class Others:
    """``TRAIL.index/others.jsonl``: the trail's lines that are not ledger entries."""

    def __init__(self, trail: Path, root: Path) -> None:
        self.trail, self.root = trail, root
        self.store = root / "others.jsonl"
        self.manifest = root / "others.json"
        #: with the audit key, the manifest is MAC'd and names the copy's SHA-256: a copy
        #: edited beside a keyed trail is made again from the (verified) trail
        self.key = load_key()

    def update(self) -> None:
        """Copy whatever was appended to the trail since the last update."""
        self.root.mkdir(mode=0o750, exist_ok=True)
        with locked(self.root / "lock", fcntl.LOCK_EX), self.trail.open("rb") as fh:
            fcntl.flock(fh, fcntl.LOCK_SH)  # between two appended batches
            size = os.fstat(fh.fileno()).st_size
            fcntl.flock(fh, fcntl.LOCK_UN)
            head = digest(fh, 0, min(size, _PROBE))
            state = self._state()
            if not self._still(state, fh, size, head):
                state = {"version": VERSION, "offset": 0, "head": None, "tail": None, "kept": 0}
            fd = os.open(self.store, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            with os.fdopen(fd, "ab") as out:  # as readable as the trail, no more
                out.truncate(state["kept"])  # bytes a crashed update left past the mark
                chain = None if self.key is None else Chained(self.key, state.get("chain"))
                offset = state["offset"]
                while offset < size:
                    end = line_end(fh, offset, min(size, offset + CHUNK))
                    if end <= offset:
                        break  # a torn or unfinished last line: next time
                    lines = lines_of(fh, offset, end)
                    if chain is not None:  # each line checked as read, then copied: no race
                        lines = chain.passed(lines)  # (a bad one raises: the copy is cut back)
                    for line in _kept(lines):
                        out.write(line + b"\n")
                    out.flush()
                    os.fsync(out.fileno())
                    offset = end
                    state |= {
                        "offset": offset,
                        "kept": out.tell(),
                        "head": head if offset >= _PROBE else digest(fh, 0, offset),
                        "tail": digest(fh, max(0, offset - _PROBE), offset),
                    }
                    if chain is not None:
                        state["chain"] = chain.state()
                    self._save(state)
            if self.key is not None:
                self._save(state, sealed=True)

    def read(self, having: bytes = b"") -> Iterator[dict[str, Any]]:
        """The copied events, in trail order (only lines holding ``having`` parsed)."""
        with locked(self.root / "lock", fcntl.LOCK_SH):
            state = self._state()
            if self.key is not None and "mac" not in state:
                yield from scan(self.trail, having)  # the copy does not verify: the trail
                return
            with self.store.open("rb") as fh:
                yield from events(lines_of(fh, 0, state["kept"]), having)

    def _state(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self.manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = {}
        fresh = {"version": VERSION, "offset": 0, "head": None, "tail": None, "kept": 0}
        if state.get("version") != VERSION or not isinstance(state.get("kept"), int):
            return fresh
        try:
            if self.store.stat().st_size < state["kept"]:
                return fresh
        except OSError:
            return fresh
        if self.key is not None and not self._vouched(state):
            return fresh  # edited, or an update cut short: made again from the trail
        return state

    def _vouched(self, state: dict[str, Any]) -> bool:
        mac = state.get("mac")
        if not isinstance(mac, str) or not hmac.compare_digest(mac, self._mac(state)):
            return False
        return state.get("digest") == self._digest(state["kept"])

    def _digest(self, kept: int) -> str:
        with self.store.open("rb") as fh:
            return digest(fh, 0, kept)

    def _mac(self, state: dict[str, Any]) -> str:
        assert self.key is not None  # noqa: S101 - only called with a key
        body = json.dumps({k: v for k, v in state.items() if k != "mac"}, sort_keys=True)
        data = b"accessguard others\n" + body.encode()
        return hmac.new(self.key, data, hashlib.sha256).hexdigest()

    def _still(self, state: dict[str, Any], fh: BinaryIO, size: int, head: str) -> bool:
        offset = state["offset"]
        if offset == 0:
            return True
        if size < offset or state["head"] != (head if offset >= _PROBE else digest(fh, 0, offset)):
            return False
        return bool(state["tail"] == digest(fh, max(0, offset - _PROBE), offset))

    def _save(self, state: dict[str, Any], *, sealed: bool = False) -> None:
        state.pop("mac", None)
        state.pop("digest", None)
        if sealed:
            state["digest"] = self._digest(state["kept"])
            state["mac"] = self._mac(state)
        temp = self.manifest.with_suffix(".tmp")
        temp.write_text(json.dumps(state), encoding="utf-8")
        temp.replace(self.manifest)
