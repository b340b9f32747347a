"""A keyed file trail's derived stores (the DuckDB index, the copy of non-ledger events) hold
only events the key vouches for: each chunk is verified as it is read, so a line edited while
an index update runs (from cron, say) and put back before the next verification never
reaches them (accessguard.investigate.trail_index.Chained)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from test_investigate import KEY, ledger_event, workload

from accessguard.audit.chain import KEY_ENV
from accessguard.audit.sinks import JsonlSink
from accessguard.cli.app import main
from accessguard.investigate.trail_index import Unverified
from accessguard.investigate.trail_others import Others

pytest.importorskip("duckdb")

T0 = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)


def _filler(n: int, at: dt.datetime) -> list[dict[str, object]]:
    """Ledger entries of somebody else, so alice's lines sit away from the probed ends."""
    return [
        ledger_event(
            user="dave",
            roles=["analyst"],
            ticket=None,
            kind=None,
            subject=9000 + i,
            statements=1,
            rows=1,
            columns=["customers.id"],
            at=at + dt.timedelta(seconds=i),
        )
        for i in range(n)
    ]


@pytest.fixture
def trail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(KEY_ENV, KEY.hex())
    path = tmp_path / "audit.jsonl"
    events = [*_filler(40, T0), *workload(), *_filler(40, T0 + dt.timedelta(hours=5))]
    JsonlSink(path, key=KEY, fsync=False).write([dict(e) for e in events])
    return path


def _swap(path: Path, old: bytes, new: bytes) -> None:
    """Edit alice's lines in place (same length: every offset stays where it was)."""
    assert len(old) == len(new)
    lines = path.read_bytes().split(b"\n")
    edited = [
        line.replace(old, new)
        if b'"user.name": "alice"' in line or b'"user.name":"alice"' in line
        else line
        for line in lines
    ]
    assert edited != lines
    path.write_bytes(b"\n".join(edited))


def _readers(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(["audit", "who-read", "--audit", str(path), "--customer", "42", "--format", "json"])
    return code, sorted({row["user"] for row in json.loads(capsys.readouterr().out)})


def _subject_bytes(path: Path) -> tuple[bytes, bytes]:
    text = path.read_bytes()
    for old in (b'"accessguard.subject.id": 42', b'"accessguard.subject.id":42'):
        if old in text:
            return old, old[:-2] + b"43"
    raise AssertionError("no subject 42 in the trail")


def test_an_index_update_over_an_edited_trail_indexes_nothing_it_cannot_verify(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = _subject_bytes(trail)
    _swap(trail, old, new)  # alice's reads now name customer 43
    capsys.readouterr()
    assert main(["audit", "index", "--audit", str(trail)]) == 1
    assert "does not verify" in capsys.readouterr().err
    _swap(trail, new, old)  # put back: the trail verifies again
    assert _readers(trail, capsys) == (0, ["alice", "erin"])


def test_the_copy_of_other_events_holds_only_verified_lines(trail: Path) -> None:
    index = Path(f"{trail}.index")
    old, new = _subject_bytes(trail)
    _swap(trail, old, new)
    with pytest.raises(Unverified, match="does not match"):
        Others(trail, index).update()
    _swap(trail, new, old)
    others = Others(trail, index)
    others.update()
    want = [
        e
        for e in (json.loads(line) for line in trail.read_bytes().splitlines() if line.strip())
        if e.get("event.action") != "ledger"
    ]
    assert want
    assert list(others.read()) == want


@pytest.mark.parametrize("source", [[], ["--no-index"]], ids=["index", "scan"])
def test_a_line_naming_a_key_twice_does_not_verify(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    source: list[str],
) -> None:
    """An insider puts a second ``user.name`` before the real one in each of alice's lines:
    Python keeps the last (the chain held, ``audit verify`` said intact) and DuckDB the first
    (who-read named erin, exit 0). A key named twice now breaks the chain."""
    monkeypatch.setenv(KEY_ENV, KEY.hex())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    trail = tmp_path / "audit.jsonl"
    JsonlSink(trail, key=KEY, fsync=False).write([dict(e) for e in workload()])
    lines = trail.read_bytes().splitlines(keepends=True)
    trail.write_bytes(
        b"".join(
            line.replace(b"{", b'{"user.name":"erin",', 1)
            if b'"user.name":"alice"' in line
            else line
            for line in lines
        )
    )
    capsys.readouterr()
    assert main(["audit", "verify", str(trail)]) == 1
    code = main(["audit", "who-read", "--audit", str(trail), "--customer", "42", *source])
    assert code == 1
    assert "chain broken" in capsys.readouterr().err
