"""The audit trail: structured events, hash-chained, written synchronously.

The only module that imports structlog. accessguard never calls
``structlog.configure``: it builds its own logger with ``wrap_logger`` and an
explicit processor chain, wrapper and context class, so an application's
logging settings can neither drop nor reshape audit events.

Each event carries the hash of the previous one (``accessguard.chain.prev``)
and its own (``event.hash``): sha256 over the previous hash and the event's
canonical JSON. Deleting, reordering or editing a line breaks the chain at
that line; ``verify`` names it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import structlog
from structlog.typing import Processor

from accessguard.errors import AuditError

GENESIS = "0" * 64
HASH = "event.hash"
PREV = "accessguard.chain.prev"
SCHEMA_VERSION = "1"

Event = dict[str, Any]


def canonical(event: Event) -> str:
    body = {k: v for k, v in event.items() if k != HASH}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def chain_hash(prev: str, event: Event) -> str:
    return hashlib.sha256((prev + "\n" + canonical(event)).encode()).hexdigest()


def seal(events: Iterable[Event], prev: str) -> str:
    """Link ``events`` onto ``prev`` in place; return the last hash."""
    for event in events:
        event[PREV] = prev
        prev = event[HASH] = chain_hash(prev, event)
    return prev


@runtime_checkable
class AuditSink(Protocol):
    """Where events go. ``write`` chains and persists a batch atomically, or raises."""

    def write(self, events: list[Event]) -> None: ...


class JsonlSink:
    """JSON lines appended to a file, chained across processes with an exclusive lock."""

    def __init__(self, path: str | Path, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self._lock = threading.Lock()

    def write(self, events: list[Event]) -> None:
        if not events:
            return
        try:
            with self._lock, self.path.open("a+b") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    prev = _last_hash(fh)
                    seal(events, prev)
                    data = "".join(canonical_line(e) for e in events).encode()
                    fh.seek(0, os.SEEK_END)
                    fh.write(data)
                    fh.flush()
                    if self._fsync:
                        os.fsync(fh.fileno())
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
        except OSError as exc:
            raise AuditError(f"cannot write the audit file {self.path}: {exc.strerror}") from exc

    def __repr__(self) -> str:
        return f"JsonlSink({str(self.path)!r})"


def canonical_line(event: Event) -> str:
    return (
        json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        + "\n"
    )


def _last_hash(fh: Any) -> str:
    """The hash on the file's last line (GENESIS for an empty file)."""
    fh.seek(0, os.SEEK_END)
    end = fh.tell()
    if end == 0:
        return GENESIS
    size = min(end, 65536)
    while True:
        fh.seek(end - size)
        tail = fh.read(size)
        lines = tail.rstrip(b"\n").split(b"\n")
        if len(lines) > 1 or size == end:
            break
        size = min(end, size * 4)
    try:
        return str(json.loads(lines[-1])[HASH])
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditError("the audit file's last line is not a chained event") from exc


class StructlogSink:
    """Events to structlog's configured output (the application's), chained in memory."""

    def __init__(self) -> None:
        self._prev = GENESIS
        self._lock = threading.Lock()
        self._log = structlog.get_logger("accessguard.audit")

    def write(self, events: list[Event]) -> None:
        with self._lock:
            self._prev = seal(events, self._prev)
            for event in events:
                fields = dict(event)
                name = fields.pop("event.action", "audit")
                self._log.info(name, **fields)


class _SinkLogger:
    """The structlog 'logger' at the end of our chain: hands event dicts to a sink."""

    def __init__(self, sink: AuditSink) -> None:
        self.sink = sink

    def msg(self, **event: Any) -> None:
        self.sink.write([event])

    info = warning = error = critical = msg


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


# ---------------------------------------------------------------------- verify


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    events: int
    broken_line: int | None = None
    problem: str = ""


def verify(path: str | Path) -> Verification:
    """Check the hash chain of a JSON-lines audit file; name the first broken line."""
    return verify_events(_parsed(Path(path)))


def _parsed(path: Path) -> Iterator[tuple[int, Any]]:
    for lineno, line in _lines(path):
        try:
            yield lineno, json.loads(line)
        except ValueError:
            yield lineno, None


def verify_events(events: Iterable[tuple[int, Any]]) -> Verification:
    """Check the chain of (position, event) pairs; None for an unreadable event."""
    prev = GENESIS
    count = 0
    for lineno, event in events:
        if event is None:
            return Verification(False, count, lineno, "not valid JSON")
        if not isinstance(event, dict) or HASH not in event:
            return Verification(False, count, lineno, "no event.hash field")
        if event.get(PREV) != prev:
            return Verification(
                False,
                count,
                lineno,
                "does not link to the line before (deleted or reordered lines?)",
            )
        if chain_hash(prev, event) != event[HASH]:
            return Verification(False, count, lineno, "its content does not match its hash")
        prev = event[HASH]
        count += 1
    return Verification(True, count)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                yield lineno, line


def read_events(path: str | Path) -> Iterator[Event]:
    for _lineno, line in _lines(Path(path)):
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                yield event
