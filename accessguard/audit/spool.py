"""A local spool: events kept on disk, in order, while their sink is unreachable.

JSON lines appended under an exclusive lock, a batch all or nothing (cut
back if the disk fills mid-write; a torn line from a crash is cut off by the
next append). The first line names the spool (a random token): the sink
records how far it delivered each spool in the same transaction as the
events, so delivery resumes exactly where it stopped, even after a crash.
Appending and reading a chunk cost O(batch), never O(spool).

With the audit key, each line carries a MAC chained to the line before it
(``accessguard.spool.mac``): a line edited, inserted or removed in the spool
before delivery is delivered flagged ``accessguard.spool.tampered``, which
``verify`` reports. Without the key the spool is as trustworthy as its
directory's permissions.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from accessguard.audit.durable import append_whole, sync_data

HEADER = "accessguard.spool"
MAC = "accessguard.spool.mac"
TAMPERED = "accessguard.spool.tampered"


def _mac(key: bytes, prev: str, body: str) -> str:
    return hmac.new(key, (prev + "\n" + body).encode(), hashlib.sha256).hexdigest()


class Spool:
    """One spool file. Not thread-safe: the sink serialises its calls."""

    def __init__(self, path: str | Path, *, fsync: bool = True, key: bytes | None = None) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self._key = key

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
        with self._locked() as fd:
            end, last = _whole_end(fd)
            lines = []
            if end == 0:
                token = secrets.token_hex(16)
                lines.append(json.dumps({HEADER: token}) + "\n")
                prev = token
            else:
                prev = _mac_of(last)
            for event in events:
                body = json.dumps(event, sort_keys=True, default=str)
                if self._key is not None:
                    prev = _mac(self._key, prev, body)
                    body = json.dumps({**json.loads(body), MAC: prev}, sort_keys=True)
                lines.append(body + "\n")
            append_whole(fd, "".join(lines).encode(), end, sync=self._fsync)

    def mac_before(self, offset: int) -> str:
        """The chain value a reader starting at ``offset`` links to (O(1): one line back)."""
        named = self.token()
        if named is None or offset <= named[1]:
            return named[0] if named is not None else ""
        with self.path.open("rb") as fh:
            size = 4096
            while True:
                start = max(0, offset - size)
                fh.seek(start)
                block = fh.read(offset - start)
                if start == 0 or b"\n" in block[:-1]:
                    break
                size *= 4
        return _mac_of(block[:-1].rsplit(b"\n", 1)[-1])

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

    def read(
        self, offset: int, prev: str, *, limit: int = 1000
    ) -> tuple[list[dict[str, Any]], int, str]:
        """Up to ``limit`` whole events from ``offset`` (linked to ``prev``): events, end, mac.

        With the key, an event whose MAC does not link is flagged ``TAMPERED``.
        """
        events: list[dict[str, Any]] = []
        try:
            fh = self.path.open("rb")
        except FileNotFoundError:
            return events, offset, prev
        with fh:
            fh.seek(offset)
            while len(events) < limit:
                raw = fh.readline()
                if not raw.endswith(b"\n"):
                    break  # the end, or a line still being written
                offset += len(raw)
                if not raw.strip():
                    continue
                try:
                    event = json.loads(raw)
                except ValueError:
                    event = None
                if not isinstance(event, dict):
                    event = {"event.action": "spool.unreadable", TAMPERED: True}
                claimed = event.pop(MAC, None)
                if self._key is not None:
                    body = json.dumps(event, sort_keys=True, default=str)
                    expected = _mac(self._key, prev, body)
                    if not isinstance(claimed, str) or not hmac.compare_digest(claimed, expected):
                        event[TAMPERED] = True
                    prev = claimed if isinstance(claimed, str) else expected
                events.append(event)
        return events, offset, prev

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def clear_if_done(self, offset: int) -> bool:
        """Empty the spool if everything up to its whole end was delivered; True if done."""
        try:
            with self._locked() as fd:
                end, _last = _whole_end(fd)
                if offset < end:
                    return False
                os.ftruncate(fd, 0)
                if self._fsync:
                    sync_data(fd)
                return True
        except FileNotFoundError:
            return True

    def count(self, offset: int) -> int:
        """Events from ``offset`` to the end."""
        total = 0
        while True:
            events, offset, _mac_seen = self.read(offset, "", limit=10_000)
            if not events:
                return total
            total += len(events)


def _mac_of(line: bytes) -> str:
    """The chain value a line carries: its MAC, or the header's token."""
    try:
        event = json.loads(line)
    except ValueError:
        return ""
    if not isinstance(event, dict):
        return ""
    value = event.get(MAC, event.get(HEADER, ""))
    return value if isinstance(value, str) else ""


def _whole_end(fd: int) -> tuple[int, bytes]:
    """The end of the last whole line, and that line; a torn line after it is cut off."""
    end = os.fstat(fd).st_size
    if end == 0:
        return 0, b""
    size = min(end, 4096)
    while True:
        tail = os.pread(fd, size, end - size)
        cut = tail.rfind(b"\n")
        if cut >= 0 and (b"\n" in tail[:cut] or size == end):
            break
        if size == end:
            break
        size = min(end, size * 4)
    whole = end - size + cut + 1
    if whole != end:
        os.ftruncate(fd, whole)
    if cut < 0:
        return 0, b""
    return whole, tail[:cut].rsplit(b"\n", 1)[-1]
