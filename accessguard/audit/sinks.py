"""The audit trail: structured events, keyed-chained, written synchronously.

The only module that imports structlog. accessguard never calls
``structlog.configure``: it builds its own logger with ``wrap_logger`` and an
explicit processor chain, wrapper and context class, so an application's
logging settings can neither drop nor reshape audit events.

Each event is linked to the one before it by an HMAC under the key in
``ACCESSGUARD_AUDIT_KEY`` (see ``accessguard.audit.chain``: the format, the
checkpoint kept beside the trail and the threat model). Deleting, reordering,
editing, forging or cutting lines fails ``verify``, which names the first
broken line.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import threading
from collections.abc import Callable, Iterator, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import structlog
from structlog.typing import Processor

from accessguard.audit.chain import (
    FROM_ENV,
    GENESIS,
    HASH,
    PREV,
    SEQ,
    Checkpoint,
    CheckpointUnreadableError,
    Head,
    canonical,
    chain_hash,
    checkpoint_path,
    head_of,
    key_id,
    link,
    load_key,
    read_checkpoint,
    seal,
    vouch,
    write_checkpoint,
)
from accessguard.audit.durable import append_whole
from accessguard.audit.verification import Verification, verify, verify_events
from accessguard.errors import AuditError

__all__ = [
    "GENESIS",
    "HASH",
    "HELD",
    "PREV",
    "SEQ",
    "AuditSink",
    "Auditor",
    "Event",
    "JsonlSink",
    "StructlogSink",
    "Verification",
    "as_sink",
    "canonical",
    "canonical_line",
    "chain_hash",
    "read_events",
    "seal",
    "utcnow",
    "verify",
    "verify_events",
    "write_held",
]

SCHEMA_VERSION = "2"  # 2: keyed chain with positions and checkpoints

Event = dict[str, Any]


@runtime_checkable
class AuditSink(Protocol):
    """Where events go. ``write`` chains and persists a batch atomically, or raises."""

    def write(self, events: list[Event]) -> None: ...


#: Set (to a list) by the async adapters while they decide on the event loop
#: (``accessguard.adapters.offload``): events are held there, stamped, instead
#: of written, and the adapter writes them off the loop (``write_held``) before
#: the refusal is raised or the statement sent. Unset everywhere else.
HELD: ContextVar[list[tuple[AuditSink, Event]] | None] = ContextVar(
    "accessguard_audit_held", default=None
)


class JsonlSink:
    """JSON lines appended to a file, chained across processes with an exclusive lock.

    Beside the file, ``FILE.checkpoint`` holds the last position and hash,
    MAC'd, replaced atomically after each batch. A batch is all or nothing:
    if the disk fills mid-write, the file is cut back to where it was; a torn
    last line left by a crash is cut off by the next write.
    """

    def __init__(
        self, path: str | Path, *, fsync: bool = True, key: bytes | str | None = FROM_ENV
    ) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self._key = load_key(key)
        self.key_id = key_id(self._key)
        self._lock = threading.Lock()
        #: group commit: writers waiting for the batch in flight, and whether one is
        self._turn = threading.Condition()
        self._queued: list[_Queued] = []
        self._committing = False
        #: what this sink left behind after its last batch (see ``_append_locked``)
        self._left: _Left | None = None

    def check(self) -> None:
        """Raise AuditError unless the file and its checkpoint can be written and vouched for."""
        self._append([])

    def write(self, events: list[Event]) -> None:
        """Append ``events``; return once they are on disk (fsynced), or raise AuditError.

        Group commit: writers that arrive while a batch is being written and
        fsynced queue up, and the next of them writes every queued event in one
        batch with one fsync. Each writer still returns only after its own
        events are durable, and a batch that fails fails every writer in it.
        """
        if not events:
            return
        mine = _Queued(events)
        with self._turn:
            self._queued.append(mine)
            while not mine.done and self._committing:
                self._turn.wait()
            if mine.done:
                mine.raise_failure()
                return
            self._committing = True  # this writer leads the next batch
            batch, self._queued = self._queued, []
        failure: BaseException | None = None
        try:
            self._append([event for queued in batch for event in queued.events])
        except BaseException as exc:
            failure = exc
            raise
        finally:
            with self._turn:
                for queued in batch:
                    queued.done, queued.failure = True, failure
                self._committing = False
                self._turn.notify_all()

    def _append(self, events: list[Event]) -> None:
        try:
            with self._lock:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    self._append_locked(fd, events)
                finally:
                    os.close(fd)  # also releases the lock
        except OSError as exc:
            raise AuditError(
                f"cannot write the audit file {self.path}: {exc.strerror or exc}"
            ) from exc

    def _append_locked(self, fd: int, events: list[Event]) -> None:
        left, self._left = self._left, None
        stamp = _stamp(os.fstat(fd))
        cp_path = checkpoint_path(self.path)
        if (
            left is not None
            and events
            and left.trail == stamp
            and left.checkpoint == _stat(cp_path)
            and os.pread(fd, len(left.tail), left.end - len(left.tail)) == left.tail
        ):
            # neither file changed since this sink's last batch (no other writer, no cut, no
            # edit: each moves the size or ctime, which only root can set; and the bytes it
            # wrote last are still there, for file systems whose times are coarse): the
            # head is the one it wrote, vouched for then; no JSON read back
            head, end = left.head, left.end
        else:
            head, end = self._vouched(fd, events)
            if not events:
                return
        new = link(events, head, self._key)
        data = "".join(canonical_line(e) for e in events).encode()
        # the batch is on disk first: a checkpoint lost in a crash is only behind it; a
        # checkpoint that cannot be written cuts the batch back off (all or nothing)
        append_whole(
            fd,
            data,
            end,
            sync=self._fsync,
            then=lambda: write_checkpoint(
                self.path, Checkpoint.of(new, self._key, end=end + len(data))
            ),
        )
        self._left = _Left(
            _stamp(os.fstat(fd)), _stat(cp_path), new, end + len(data), data[-_TAIL:]
        )

    def _vouched(self, fd: int, events: list[Event]) -> tuple[Head, int]:
        """The trail's head and end, read back and vouched for (raise if it may not grow)."""
        head, last, end = _tail(fd)
        try:
            cp = read_checkpoint(self.path)
        except CheckpointUnreadableError:
            raise AuditError(
                f"the checkpoint beside the audit file {self.path} is unreadable; "
                "verify the trail (accessguard audit verify)"
            ) from None
        problem = vouch(head, last, cp, self._key) or _behind(fd, cp, head)
        if problem:
            raise AuditError(
                f"refusing to extend the audit file {self.path}: {problem}; "
                "verify it (accessguard audit verify) and start a new file"
            )
        if not events and cp is None and last is None:
            write_checkpoint(self.path, Checkpoint.of(head, self._key, end=0), fsync=self._fsync)
        return head, end

    def __repr__(self) -> str:
        return f"JsonlSink({str(self.path)!r})"


#: what identifies a file's content without reading it: device, inode, size, mtime, ctime
Stamp = tuple[int, int, int, int, int]


def _stamp(st: os.stat_result) -> Stamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _stat(path: Path) -> Stamp | None:
    try:
        return _stamp(path.stat())
    except FileNotFoundError:
        return None


@dataclass(frozen=True, slots=True)
class _Left:
    """The trail and checkpoint as a sink's last batch left them, and the chain's head."""

    trail: Stamp
    checkpoint: Stamp | None
    head: Head
    end: int
    tail: bytes  # the last bytes it wrote (at most _TAIL): compared, not parsed


#: how much of its last batch a sink compares before chaining on without reading back
_TAIL = 4096


class _Queued:
    """One writer's events in a group commit, and how their batch ended."""

    __slots__ = ("done", "events", "failure")

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self.done = False
        self.failure: BaseException | None = None

    def raise_failure(self) -> None:
        """Raise this writer's own AuditError if its batch failed (the leader raised its own)."""
        if self.failure is None:
            return
        message = (
            self.failure.message
            if isinstance(self.failure, AuditError)
            else f"the audit batch failed ({type(self.failure).__name__})"
        )
        raise AuditError(message) from self.failure


def canonical_line(event: Event) -> str:
    return (
        json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        + "\n"
    )


def _behind(fd: int, cp: Checkpoint | None, head: Head) -> str:
    """Why a trail longer than its checkpoint is not its continuation ("" if it is).

    A crash between appending a batch and replacing the checkpoint leaves the
    trail ahead of it; the event the checkpoint vouches for must then still be
    where it says (O(1): one read at its byte offset).
    """
    if cp is None or cp.end is None or cp.seq >= head.seq:
        return ""
    if cp.end == 0:
        return "" if cp.seq == 0 else "its checkpoint is malformed"
    size = 65536
    while True:
        start = max(0, cp.end - size)
        block = os.pread(fd, cp.end - start, start)
        if start == 0 or b"\n" in block[:-1]:
            break
        size *= 4
    if not block.endswith(b"\n"):
        return "its checkpointed event is no longer where it was (replaced?)"
    line = block[:-1].rsplit(b"\n", 1)[-1]
    try:
        event = json.loads(line)
    except ValueError:
        event = None
    if not isinstance(event, dict) or event.get(SEQ) != cp.seq or event.get(HASH) != cp.hash:
        return "its checkpointed event is no longer where it was (replaced?)"
    return ""


def _tail(fd: int) -> tuple[Head, Event | None, int]:
    """The chain's head, its last event and the end of the last whole line.

    A torn last line (no newline: an interrupted write) is cut off first.
    """
    end = os.fstat(fd).st_size
    if end == 0:
        return Head(), None, 0
    size = min(end, 4096)
    while True:
        tail = os.pread(fd, size, end - size)
        cut = tail.rfind(b"\n") + 1  # whole lines end here; a torn line may follow
        start = tail.rfind(b"\n", 0, cut - 1) + 1 if cut > 1 else 0  # the last whole line's
        if size == end or start > 0:
            break
        size = min(end, size * 4)
    whole = end - len(tail) + cut
    if whole != end:
        os.ftruncate(fd, whole)  # repair: the torn line was never acknowledged
    if whole == 0:
        return Head(), None, 0
    try:
        event = json.loads(tail[start : cut - 1])
    except ValueError:
        event = None
    if not isinstance(event, dict) or not isinstance(event.get(HASH), str):
        raise AuditError("the audit file's last line is not a chained event")
    position = event[SEQ] if isinstance(event.get(SEQ), int) else _count_lines(fd, whole)
    return head_of(event, position), event, whole


def _count_lines(fd: int, end: int) -> int:
    """Non-blank lines before ``end`` (the positions of an old-format trail, read once)."""
    count, offset, rest = 0, 0, b""
    while offset < end:
        block = rest + os.pread(fd, min(1 << 20, end - offset), offset)
        offset += len(block) - len(rest)
        *whole, rest = block.split(b"\n")
        count += sum(1 for line in whole if line.strip())
    return count + (1 if rest.strip() else 0)


class StructlogSink:
    """Events to structlog's configured output (the application's), chained in memory."""

    def __init__(self, *, key: bytes | str | None = FROM_ENV) -> None:
        self._head = Head()
        self._key = load_key(key)
        self._lock = threading.Lock()
        self._log = structlog.get_logger("accessguard.audit")

    def write(self, events: list[Event]) -> None:
        with self._lock:
            self._head = link(events, self._head, self._key)
            for event in events:
                fields = dict(event)
                name = fields.pop("event.action", "audit")
                self._log.info(name, **fields)


class _SinkLogger:
    """The structlog 'logger' at the end of our chain: hands event dicts to a sink."""

    def __init__(self, sink: AuditSink) -> None:
        self.sink = sink

    def msg(self, **event: Any) -> None:
        held = HELD.get()
        if held is not None:  # an async adapter writes it off the event loop, in order
            held.append((self.sink, event))
            return
        self.sink.write([event])

    info = warning = error = critical = msg


def write_held(held: list[tuple[AuditSink, Event]]) -> None:
    """Write the events ``HELD`` kept, in order; a sink failure becomes AuditError (as ``emit``)."""
    for sink, event in held:
        try:
            sink.write([event])
        except AuditError:
            raise
        except Exception as exc:
            raise AuditError(f"the audit sink failed ({type(exc).__name__})") from exc


def _timestamper(clock: Callable[[], dt.datetime]) -> Processor:
    def stamp(_logger: object, _name: str, event: MutableMapping[str, Any]) -> Event:
        event["@timestamp"] = clock().astimezone(dt.UTC).isoformat(timespec="microseconds")
        return dict(event)

    return stamp


def _drop_event_key(_logger: object, _name: str, event: MutableMapping[str, Any]) -> Event:
    event.pop("event", None)
    return dict(event)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Auditor:
    """Builds audit events through structlog and writes them synchronously to a sink."""

    def __init__(self, sink: AuditSink, *, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.sink = sink
        self.clock = clock
        self._log = structlog.wrap_logger(
            _SinkLogger(sink),
            processors=[_drop_event_key, _timestamper(clock)],
            wrapper_class=structlog.BoundLogger,
            context_class=dict,
            cache_logger_on_first_use=False,
        )

    def emit(self, **fields: Any) -> None:
        """Write one event now; any sink failure becomes AuditError."""
        try:
            self._log.info(None, **{"accessguard.schema": SCHEMA_VERSION, **fields})
        except AuditError:
            raise
        except Exception as exc:
            raise AuditError(f"the audit sink failed ({type(exc).__name__})") from exc

    def stamp(self) -> str:
        return self.clock().astimezone(dt.UTC).isoformat(timespec="microseconds")


def as_sink(audit: AuditSink | str | Path | None) -> AuditSink:
    if audit is None:
        return StructlogSink()
    if isinstance(audit, str | Path):
        return JsonlSink(audit)
    if isinstance(audit, AuditSink):
        return audit
    raise TypeError("audit= takes a file path or an object with a write(events) method")


# ---------------------------------------------------------------------- reading


def read_events(path: str | Path) -> Iterator[Event]:
    """The events of a JSON-lines trail, unverified (unreadable lines are skipped)."""
    with Path(path).open("rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            with contextlib.suppress(ValueError):
                event = json.loads(raw)
                if isinstance(event, dict):
                    yield event
