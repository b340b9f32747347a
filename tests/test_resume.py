"""Resumed verification: as strong as reading the whole trail, without re-reading what held.

Every tampering of ``test_chain`` is caught by a resumed verification too, wherever
it falls (before or after the mark); a mark that was forged, copied from another
trail or made with another key is never trusted; and a resumed verification
parses only the events after the mark.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from test_chain import KEY, OTHER, TAMPERINGS, lines_of, rewrite, tamper, write_events

from accessguard.audit import resume, verification
from accessguard.audit.resume import mark_path, read_mark
from accessguard.audit.verification import verify


@pytest.fixture
def marked(tmp_path: Path) -> Path:
    """A keyed trail of 6 events, verified once (so a mark is beside it), then 4 more."""
    path = tmp_path / "audit.jsonl"
    write_events(path, 6)
    assert verify(path, key=KEY, resume=True).ok
    assert read_mark(path) is not None
    write_events(path, 4, start=6)
    return path


def _parsed(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    seen: list[bytes] = []
    parse = verification._parse

    def counting(raw: bytes) -> object:
        seen.append(raw)
        return parse(raw)

    monkeypatch.setattr(verification, "_parse", counting)
    return seen


def test_a_resumed_verification_parses_only_the_new_events(
    marked: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _parsed(monkeypatch)
    result = verify(marked, key=KEY, resume=True)
    assert result.ok, result.problem
    assert result.events == 10
    assert [json.loads(raw)["n"] for raw in seen] == [6, 7, 8, 9]
    seen.clear()
    assert verify(marked, key=KEY, resume=True).ok  # the mark moved to the end
    assert seen == []


def test_without_resume_every_event_is_read(marked: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _parsed(monkeypatch)
    assert verify(marked, key=KEY).ok
    assert len(seen) == 10


@pytest.mark.parametrize("how", TAMPERINGS)
def test_every_tampering_fails_a_resumed_verification(marked: Path, how: str) -> None:
    tamper(marked, how)
    result = verify(marked, key=KEY, resume=True)
    assert not result.ok, how
    assert result.problem


def test_an_edit_before_the_mark_names_its_line(marked: Path) -> None:
    events = lines_of(marked)
    events[1]["user.name"] = "mallory"
    marked.write_text("".join(json.dumps(e) + "\n" for e in events))
    result = verify(marked, key=KEY, resume=True)
    assert (result.ok, result.broken_line) == (False, 2)


def test_an_edit_after_the_mark_names_its_absolute_line(marked: Path) -> None:
    events = lines_of(marked)
    events[8]["user.name"] = "mallory"
    marked.write_text("".join(json.dumps(e) + "\n" for e in events))
    result = verify(marked, key=KEY, resume=True)
    assert (result.ok, result.broken_line) == (False, 9)


def test_a_forged_mark_is_not_trusted(marked: Path) -> None:
    """An attacker edits line 2, re-links the chain without the key, and moves the mark past
    it with the new prefix's digest: its MAC does not verify, so the whole trail is read."""
    events = lines_of(marked)
    events[1]["user.name"] = "mallory"
    rewrite(marked, events, from_index=1)
    mark = json.loads(mark_path(marked).read_text())
    data = marked.read_bytes()
    end = len(b"".join(json.dumps(e).encode() + b"\n" for e in events[:8]))
    digest = hashlib.sha256(data[:end]).hexdigest()
    mark.update(seq=8, lines=8, end=end, hash=events[7]["event.hash"], digest=digest)
    mark_path(marked).write_text(json.dumps(mark))
    result = verify(marked, key=KEY, resume=True)
    assert not result.ok
    assert result.broken_line == 2


def test_a_mark_copied_from_another_trail_is_not_trusted(tmp_path: Path, marked: Path) -> None:
    other = tmp_path / "other.jsonl"
    write_events(other, 6, start=50)
    assert verify(other, key=KEY, resume=True).ok
    mark_path(marked).write_text(mark_path(other).read_text())
    events = lines_of(marked)
    events[2]["user.name"] = "mallory"
    marked.write_text("".join(json.dumps(e) + "\n" for e in events))
    assert verify(marked, key=KEY, resume=True).broken_line == 3


def test_a_mark_under_another_key_is_ignored(marked: Path) -> None:
    """Verifying with another key fails as it always did; it neither trusts nor moves the mark."""
    before = mark_path(marked).read_text()
    assert not verify(marked, key=OTHER, resume=True).ok
    assert mark_path(marked).read_text() == before


def test_a_garbled_mark_is_ignored(marked: Path) -> None:
    mark_path(marked).write_text("{not json")
    assert verify(marked, key=KEY, resume=True).ok
    assert read_mark(marked) is not None  # rewritten by the verification that held


def test_an_untouched_trail_is_not_hashed_again(
    marked: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trail unchanged since its mark (same inode, size and ctime) needs no pass over it."""
    assert verify(marked, key=KEY, resume=True).ok  # marks the whole trail
    hashed: list[int] = []
    real = resume.prefix_digest

    def counting(trail: Path, end: int) -> object:
        hashed.append(end)
        return real(trail, end)

    monkeypatch.setattr(verification, "prefix_digest", counting)
    result = verify(marked, key=KEY, resume=True)
    assert (result.ok, result.events, hashed) == (True, 10, [])
    data = marked.read_bytes()  # the same bytes written again: ctime moves, so it is hashed
    marked.write_bytes(data.replace(b'"alice"', b'"alicf"', 1))
    result = verify(marked, key=KEY, resume=True)
    assert hashed  # hashed, found different, and read in full
    assert (result.ok, result.broken_line) == (False, 1)


def test_the_reports_copy_of_other_events_is_keyed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal deleted from TRAIL.index/others.jsonl still reaches the report: the keyed
    manifest no longer vouches for the copy, so the trail itself is read (and copied again)."""
    from accessguard.audit.chain import KEY_ENV
    from accessguard.audit.sinks import JsonlSink
    from accessguard.investigate.trail_others import Others

    monkeypatch.setenv(KEY_ENV, KEY.hex())
    trail, root = tmp_path / "audit.jsonl", tmp_path / "audit.jsonl.index"
    refusals = [
        {"event.action": "query", "accessguard.outcome": "denied", "n": n} for n in range(3)
    ]
    JsonlSink(trail, fsync=False, key=KEY).write(refusals)
    side = Others(trail, root)
    side.update()
    assert [e["n"] for e in side.read()] == [0, 1, 2]
    store = root / "others.jsonl"
    lines = store.read_bytes().splitlines(keepends=True)
    store.write_bytes(b"".join(lines[:1] + lines[2:]))  # the insider drops refusal 1
    assert [e["n"] for e in side.read()] == [0, 1, 2]  # read from the trail
    side.update()  # copied again
    assert [e["n"] for e in side.read()] == [0, 1, 2]
    assert len(store.read_bytes().splitlines()) == 3


class TestBlockDigest:
    """The prefix digest is a SHA-256 over per-block SHA-256s, so blocks hash in parallel."""

    @pytest.fixture(autouse=True)
    def small_blocks(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(resume.BlockDigest, "BLOCK", 64)  # many blocks from a few bytes

    DATA = bytes(range(256)) * 3 + b"tail"

    def fed(self, *pieces: bytes) -> str:
        digest = resume.BlockDigest()
        for piece in pieces:
            digest.update(piece)
        return digest.hexdigest()

    def test_the_same_bytes_give_the_same_digest_however_they_are_fed(self) -> None:
        data = self.DATA
        whole = self.fed(data)
        assert self.fed(data[:1], data[1:100], data[100:]) == whole
        assert self.fed(*(data[i : i + 7] for i in range(0, len(data), 7))) == whole
        assert whole != hashlib.sha256(data).hexdigest()  # a digest of its own kind

    def test_any_byte_and_the_length_count(self) -> None:
        data = self.DATA
        edited = data[:130] + b"x" + data[131:]
        assert self.fed(edited) != self.fed(data)
        assert self.fed(data + b"\0") != self.fed(data)
        assert self.fed(data[:128]) != self.fed(data[:129])

    def test_the_prefix_of_a_file_is_read_in_blocks_to_the_same_digest(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "trail"
        path.write_bytes(self.DATA)
        for end in (0, 1, 64, 65, 128, 700, len(self.DATA)):
            found = resume.prefix_digest(path, end)
            assert found is not None
            assert found.hexdigest() == self.fed(self.DATA[:end]), end
            found.update(self.DATA[end:])  # extended as verify extends it
            assert found.hexdigest() == self.fed(self.DATA)
        assert resume.prefix_digest(path, len(self.DATA) + 1) is None
