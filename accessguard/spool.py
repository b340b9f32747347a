"""A local spool: events kept on disk, in order, while their sink is unreachable.

JSON lines appended under an exclusive lock, a batch all or nothing (cut
back if the disk fills mid-write; a torn line from a crash is cut off by the
next append). The first line names the spool (a random token): the sink
records how far it delivered each spool in the same transaction as the
events, so delivery resumes exactly where it stopped, even after a crash.
Appending and reading a chunk cost O(batch), never O(spool).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HEADER = "accessguard.spool"


class Spool:
    """One spool file. Not thread-safe: the sink serialises its calls."""

    def __init__(self, path: str | Path, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self._fsync = fsync

    def check(self) -> None:
        """Raise OSError unless the spool can be created and appended to."""
        with self._locked():
            pass

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)

    def append(self, events: list[dict[str, Any]]) -> None:
        """Append a batch after a header if the spool is new; all or nothing (OSError)."""
        lines = [json.dumps(e, sort_keys=True, default=str) + "\n" for e in events]
        with self._locked() as fd:
            end = _whole_end(fd)
            if end == 0:
                lines.insert(0, json.dumps({HEADER: secrets.token_hex(16)}) + "\n")
            data = "".join(lines).encode()
            try:
                offset = end
                view = memoryview(data)
                while view:
                    written = os.pwrite(fd, view, offset)
                    view, offset = view[written:], offset + written
                if self._fsync:
                    os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, end)
                raise

    def token(self) -> tuple[str, int] | None:
        """The spool's name and where its events start (None for an empty spool)."""
        try:
            with self.path.open("rb") as fh:
                first = fh.readline()
        except FileNotFoundError:
            return None
        if not first.endswith(b"\n"):
            return None
        try:
            header = json.loads(first)
        except ValueError:
            header = None
        if isinstance(header, dict) and isinstance(header.get(HEADER), str):
            return header[HEADER], len(first)
        # a spool of an older release: no header, named by its first line
        return "line:" + first.hex()[:32], 0

    def read(self, offset: int, *, limit: int = 1000) -> tuple[list[dict[str, Any]], int]:
        """Up to ``limit`` whole events from ``offset``, and the offset after them."""
        events: list[dict[str, Any]] = []
        try:
            fh = self.path.open("rb")
        except FileNotFoundError:
            return events, offset
        with fh:
            fh.seek(offset)
            while len(events) < limit:
                raw = fh.readline()
                if not raw.endswith(b"\n"):
                    break  # the end, or a line still being written
                offset += len(raw)
                if raw.strip():
                    try:
                        event = json.loads(raw)
                    except ValueError:
                        event = {"event.action": "spool.unreadable", "accessguard.spool": "line"}
                    if isinstance(event, dict):
                        events.append(event)
        return events, offset

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def clear_if_done(self, offset: int) -> bool:
        """Empty the spool if everything up to its whole end was delivered; True if done."""
        try:
            with self._locked() as fd:
                end = _whole_end(fd)
                if offset < end:
                    return False
                os.ftruncate(fd, 0)
                if self._fsync:
                    os.fsync(fd)
                return True
        except FileNotFoundError:
            return True

    def count(self, offset: int) -> int:
        """Events from ``offset`` to the end."""
        total = 0
        while True:
            events, offset = self.read(offset, limit=10_000)
            if not events:
                return total
            total += len(events)


def _whole_end(fd: int) -> int:
    """The end of the last whole line; a torn line after it is cut off (a crashed append)."""
    end = os.fstat(fd).st_size
    if end == 0:
        return 0
    size = min(end, 4096)
    while True:
        tail = os.pread(fd, size, end - size)
        cut = tail.rfind(b"\n")
        if cut >= 0 or size == end:
            break
        size = min(end, size * 4)
    whole = end - size + cut + 1
    if whole != end:
        os.ftruncate(fd, whole)
    return whole
