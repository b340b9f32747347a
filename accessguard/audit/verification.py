"""Verifying a trail: the chain event by event, then its checkpoint.

``ChainCheck`` takes one event at a time, so readers (the investigation
commands, the PostgreSQL verifier) verify as they read. ``verify`` reads a
JSON-lines file and the checkpoint beside it. The chain's format and the
threat model are described in ``accessguard.audit.chain``.
"""

from __future__ import annotations

import fcntl
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accessguard.audit.chain import (
    DEMO_KEY,
    FROM_ENV,
    GENESIS,
    HASH,
    KEY_ENV,
    KEY_ID,
    PREV,
    SEQ,
    Checkpoint,
    CheckpointUnreadableError,
    Event,
    FromEnv,
    chain_hash,
    key_id,
    load_key,
    parse_line,
    read_checkpoint,
)
from accessguard.audit.resume import (
    BlockDigest,
    Mark,
    file_stat,
    prefix_digest,
    read_mark,
    write_mark,
)
from accessguard.audit.spool import TAMPERED

__all__ = ["ChainCheck", "Verification", "verify", "verify_events"]


@dataclass(frozen=True, slots=True)
class Verification:
    """What ``verify`` found: ``ok``, the events that verified, the first problem."""

    ok: bool
    events: int
    broken_line: int | None = None
    problem: str = ""
    #: the key id the trail is keyed with (None: an unkeyed trail)
    key: str | None = None
    #: the position the checkpoint vouches for (None: no checkpoint)
    checkpoint: int | None = None
    #: the line number of a torn last line (an interrupted write, not tampering)
    torn_line: int | None = None

    @property
    def keyed(self) -> bool:
        """Keyed with a secret key (not none, not the public demo key)."""
        return self.key is not None and self.key != key_id(DEMO_KEY)

    @property
    def demo(self) -> bool:
        return self.key == key_id(DEMO_KEY)


class ChainCheck:
    """Verifies a trail one event at a time (``feed``), so readers can verify as they read."""

    def __init__(self, key: bytes | None, *, checkpoint: Checkpoint | None = None) -> None:
        if key is None and checkpoint is not None and checkpoint.key == key_id(DEMO_KEY):
            key = DEMO_KEY  # public: verified, and reported as no better than unkeyed
        self.key = key
        self.kid = key_id(key)
        self.prev = GENESIS
        self.count = 0
        self.positioned = False
        self.checkpoint = checkpoint
        self.at_checkpoint: str | None = None
        #: (position, hash) an earlier verification vouched for (its keyed mark): the trail
        #: must still reach it with that event, whatever its checkpoint says now
        self.vouched: tuple[int, str] | None = None
        self.at_vouched: str | None = None

    def feed(self, event: Any) -> str | None:
        """Check the next event; return what is wrong with it (None: it links)."""
        problem = self._problem(event)
        if problem is None:
            self.count += 1
            self.prev = event[HASH]
            if self.checkpoint is not None and self.count == self.checkpoint.seq:
                self.at_checkpoint = self.prev
            if self.vouched is not None and self.count == self.vouched[0]:
                self.at_vouched = self.prev
        return problem

    def _problem(self, event: Any) -> str | None:
        if event is None:
            return "not valid JSON"
        if not isinstance(event, dict) or not isinstance(event.get(HASH), str):
            return "no event.hash field"
        kid, seq = event.get(KEY_ID), event.get(SEQ)
        if kid is not None and self.key is None and self.count == 0 and kid == key_id(DEMO_KEY):
            self.key, self.kid = DEMO_KEY, kid
        if kid is not None and self.key is None:
            return f"keyed with key id {kid}: set {KEY_ENV} to verify it"
        if kid != self.kid:
            return (
                "written without the key (forged, or by a guard with no key)"
                if kid is None
                else f"keyed with another key (id {kid})"
            )
        if seq is None:
            if self.positioned or self.kid is not None:
                return "no chain position (forged or from an older format)"
        elif seq != self.count + 1:
            return f"out of place: position {seq} where {self.count + 1} belongs"
        else:
            self.positioned = True
        if event.get(PREV) != self.prev:
            return "does not link to the line before (deleted or reordered lines?)"
        if not hmac.compare_digest(chain_hash(self.prev, event, self.key), event[HASH]):
            return "its content does not match its " + ("MAC" if self.key else "hash")
        if event.get(TAMPERED):
            return "it was altered in the local spool before it was delivered"
        return None

    def finish(self, line: int | None) -> Verification:
        """The verdict once every event was fed, checked against the checkpoint (and against
        what an earlier verification vouched for, when its mark is known)."""
        if self.vouched is not None:
            seq, hash_ = self.vouched
            if self.count < seq:
                return self._verdict(
                    f"the trail ends at event {self.count} but an earlier verification saw "
                    f"{seq}: its tail was cut (and its checkpoint replaced)",
                    line,
                )
            if self.at_vouched != hash_:
                return self._verdict(
                    f"event {seq} is not the one an earlier verification saw (the trail was "
                    "replaced)"
                )
        cp = self.checkpoint
        if cp is None:
            if self.positioned or self.kid is not None or self.count == 0:
                return self._verdict(
                    "no checkpoint beside the trail: its tail cannot be vouched for "
                    "(deleted or emptied?)"
                )
            return self._verdict("")  # an old-format trail: no positions, no checkpoint
        if not cp.valid(self.key):
            return self._verdict("the checkpoint's MAC does not match (forged, or another key)")
        if cp.seq > self.count:
            return self._verdict(
                f"the trail ends at event {self.count} but its checkpoint vouches for {cp.seq}: "
                "its tail was cut or emptied",
                line,
            )
        if (GENESIS if cp.seq == 0 else self.at_checkpoint) != cp.hash:
            return self._verdict(
                f"event {cp.seq} is not the one the checkpoint vouches for (the trail was replaced)"
            )
        return self._verdict("")

    def _verdict(self, problem: str, line: int | None = None) -> Verification:
        cp = self.checkpoint
        return Verification(
            not problem,
            self.count,
            line,
            problem,
            key=self.kid,
            checkpoint=cp.seq if cp is not None else None,
        )


def verify_events(
    events: Iterable[tuple[int, Any]],
    *,
    key: bytes | FromEnv | None = FROM_ENV,
    checkpoint: Checkpoint | None = None,
    require_checkpoint: bool = False,
) -> Verification:
    """Check the chain of (position, event) pairs; None for an unreadable event."""
    check = ChainCheck(load_key(key), checkpoint=checkpoint)
    last = 0
    for lineno, event in events:
        problem = check.feed(event)
        if problem is not None:
            return Verification(False, check.count, lineno, problem, key=check.kid)
        last = lineno
    if checkpoint is None and not require_checkpoint:
        return Verification(True, check.count, key=check.kid)
    return check.finish(last + 1)


def verify(
    path: str | Path,
    *,
    key: bytes | FromEnv | None = FROM_ENV,
    collect: list[Event] | None = None,
    resume: bool = False,
) -> Verification:
    """Check a JSON-lines trail, and its checkpoint beside it; name the first broken line.

    With ``collect``, every readable event is appended to it as it is read,
    also past a broken line (the verdict says where the chain stopped holding).
    With ``resume`` (and no ``collect``), a keyed mark left by an earlier
    verification lets the chain be checked from where it ended, once the bytes
    before it hash the same (``accessguard.audit.resume``); a verified trail
    leaves a new mark.
    """
    trail = Path(path)
    try:
        cp = _checkpoint_of(trail)
    except CheckpointUnreadableError:
        return Verification(
            False,
            0,
            problem="the checkpoint beside the trail is unreadable (tampered, or torn by a "
            "power loss)",
        )
    if not trail.exists():
        return Verification(
            False,
            0,
            problem="the trail is missing (deleted?)",
            checkpoint=cp.seq if cp is not None else None,
        )
    check = ChainCheck(load_key(key), checkpoint=cp)
    start, first_line, digest = (0, 0, None)
    if resume and collect is None:
        start, first_line, digest = resumed(check, trail)
    lineno, torn = first_line, 0
    failure: Verification | None = None
    with trail.open("rb") as fh:
        fh.seek(start)
        end = start
        for lineno, raw in enumerate(fh, first_line + 1):
            if not raw.endswith(b"\n"):
                torn = lineno  # the last line, cut by an interrupted write
                break
            if digest is not None and failure is None:
                digest.update(raw)
                end += len(raw)
            if not raw.strip():
                continue
            event = _parse(raw)
            if failure is None:
                problem = check.feed(event)
                if problem is not None:
                    failure = Verification(False, check.count, lineno, problem, key=check.kid)
            if collect is not None:
                if isinstance(event, dict):
                    collect.append(event)
            elif failure is not None:
                break
    result = failure or check.finish(lineno + 1)
    if digest is not None and result.ok and check.key is not None:
        lines = lineno - (1 if torn else 0)
        write_mark(trail, mark_of(check, trail, end, lines, digest))
    if torn:
        return Verification(
            result.ok,
            result.events,
            result.broken_line,
            result.problem,
            key=result.key,
            checkpoint=result.checkpoint,
            torn_line=torn,
        )
    return result


def resumed(check: ChainCheck, trail: Path) -> tuple[int, int, BlockDigest | None]:
    """Where verification of ``trail`` may go on: (byte offset, lines before it, the digest of
    the bytes before it, to extend). (0, 0, a fresh digest) when no valid mark says more; no
    digest when the file is untouched since its mark (its mark stays as it is)."""
    mark = read_mark(trail)
    cp = check.checkpoint
    valid = mark is not None and check.key is not None and mark.valid(check.key, check.kid)
    if mark is None or not valid:
        return 0, 0, BlockDigest()
    # what an earlier verification saw must still be there, whatever the checkpoint says now
    # (a tail cut back with an older checkpoint restored verifies against that checkpoint)
    check.vouched = (mark.seq, mark.hash)
    usable = cp is None or cp.seq >= mark.seq
    if usable and mark.stat == file_stat(trail) and mark.end == mark.stat[2]:
        # untouched since it was marked: nothing to hash, nothing after the mark
        check.vouched = None
        check.count, check.prev, check.positioned = mark.seq, mark.hash, mark.positioned
        if cp is not None and cp.seq == mark.seq:
            check.at_checkpoint = mark.hash
        return mark.end, mark.lines, None
    if usable:
        digest = prefix_digest(trail, mark.end)
        if digest is not None and hmac.compare_digest(digest.hexdigest(), mark.digest):
            check.vouched = None
            check.count, check.prev, check.positioned = mark.seq, mark.hash, mark.positioned
            if cp is not None and cp.seq == mark.seq:
                check.at_checkpoint = mark.hash
            return mark.end, mark.lines, digest
    return 0, 0, BlockDigest()


def mark_of(check: ChainCheck, trail: Path, end: int, lines: int, digest: BlockDigest) -> Mark:
    """The mark of a trail verified through byte ``end``, sealed with the check's key."""
    stat = file_stat(trail)
    return Mark(
        check.count,
        check.prev,
        end,
        lines,
        digest.hexdigest(),
        check.kid,
        check.positioned,
        stat if stat[2] == end else (0, 0, 0, 0),  # a torn tail: hash again next time
    ).sealed(check.key)


def _checkpoint_of(trail: Path) -> Checkpoint | None:
    """The checkpoint, read under the trail's shared lock (never half-written by a writer)."""
    try:
        fd = os.open(trail, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return read_checkpoint(trail)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        return read_checkpoint(trail)
    finally:
        os.close(fd)


def _parse(raw: bytes) -> Any:
    try:
        return parse_line(raw)
    except ValueError:
        return None
