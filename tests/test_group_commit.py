"""Group commit: concurrent refusals share an fsync, and each still returns only once durable."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from accessguard import AuditError
from accessguard.audit.sinks import JsonlSink
from accessguard.audit.verification import verify

KEY = bytes(range(32))
WRITERS = 8


def _slow_fsync(monkeypatch: pytest.MonkeyPatch, calls: list[int]) -> None:
    """An fsync that takes 30 ms (a busy disk), so writers arriving meanwhile queue up."""
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append(fd)
        time.sleep(0.03)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "fdatasync", fsync)


def _events_on_disk(path: Path) -> set[int]:
    return {json.loads(line)["n"] for line in path.read_text().splitlines()}


def test_concurrent_writers_share_fsyncs_and_return_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    sink = JsonlSink(path, fsync=True, key=KEY)
    sink.check()
    calls: list[int] = []
    _slow_fsync(monkeypatch, calls)
    start = threading.Barrier(WRITERS)
    seen_on_return: dict[int, bool] = {}

    def writer(n: int) -> None:
        start.wait()
        sink.write([{"event.action": "query", "n": n}])
        seen_on_return[n] = n in _events_on_disk(path)  # on disk when write returns

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen_on_return == dict.fromkeys(range(WRITERS), True)
    assert _events_on_disk(path) == set(range(WRITERS))
    assert len(calls) < WRITERS  # without group commit: one fsync per writer
    result = verify(path, key=KEY)
    assert result.ok, result.problem
    assert result.events == WRITERS


def test_a_failed_batch_fails_every_writer_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk refuses a batch: each of its writers gets an AuditError; none is told it wrote."""
    path = tmp_path / "audit.jsonl"
    sink = JsonlSink(path, fsync=True, key=KEY)
    sink.check()
    real = os.fsync
    gate = threading.Event()

    def failing(fd: int) -> None:
        gate.wait(2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing)
    monkeypatch.setattr(os, "fdatasync", failing)
    outcomes: dict[int, str] = {}

    def writer(n: int) -> None:
        try:
            sink.write([{"event.action": "query", "n": n}])
        except AuditError:
            outcomes[n] = "refused"
        else:
            outcomes[n] = "written"

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)  # the first leads a batch stuck in fsync; the others queue behind it
    gate.set()
    for thread in threads:
        thread.join()
    assert set(outcomes.values()) == {"refused"}
    monkeypatch.setattr(os, "fsync", real)
    monkeypatch.setattr(os, "fdatasync", real)
    assert path.read_text() == ""  # all or nothing: every failed batch was cut back off
    sink.write([{"event.action": "query", "n": 99}])  # the sink works again
    assert verify(path, key=KEY).ok
