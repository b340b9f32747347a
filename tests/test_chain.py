"""The keyed audit chain and its checkpoint: every tampering of a file trail is caught."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accessguard import AuditError, ConfigurationError
from accessguard.audit.chain import (
    HASH,
    KEY_ENV,
    PREV,
    SEQ,
    chain_hash,
    checkpoint_path,
    key_id,
    load_key,
)
from accessguard.audit.sinks import Auditor, JsonlSink, read_events
from accessguard.audit.verification import verify
from accessguard.cli.app import main

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
FROZEN = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)


def write_events(path: Path, n: int, *, key: bytes | None = KEY, start: int = 0) -> None:
    auditor = Auditor(JsonlSink(path, fsync=False, key=key), clock=lambda: FROZEN)
    for i in range(start, start + n):
        auditor.emit(**{"event.action": "query", "user.name": "alice", "n": i})


def lines_of(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def rewrite(path: Path, events: list[dict[str, object]], *, from_index: int = 0) -> None:
    """Re-link events from ``from_index`` on as an attacker without the key can: plain sha256."""
    prev = str(events[from_index - 1][HASH]) if from_index else "0" * 64
    for event in events[from_index:]:
        event[PREV] = prev
        prev = chain_hash(prev, event)  # no key: what anyone can compute
        event[HASH] = prev
    path.write_text("".join(json.dumps(e) + "\n" for e in events))


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    write_events(path, 6)
    return path


class TestKey:
    def test_key_is_read_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """ACCESSGUARD_AUDIT_KEY (hex) is the key; unset means no key."""
        monkeypatch.setenv(KEY_ENV, KEY.hex())
        assert load_key() == KEY
        monkeypatch.delenv(KEY_ENV)
        assert load_key() is None

    @pytest.mark.parametrize("value", ["not hex", "abcd"])
    def test_bad_or_short_key_is_a_configuration_error(
        self, monkeypatch: pytest.MonkeyPatch, value: str
    ) -> None:
        """A key that is not hex, or shorter than 16 bytes, is refused at construction."""
        monkeypatch.setenv(KEY_ENV, value)
        with pytest.raises(ConfigurationError):
            JsonlSink("unused.jsonl")

    def test_the_key_is_never_written(self, trail: Path) -> None:
        """Events carry the key id, never the key, and the checkpoint neither."""
        text = trail.read_text() + checkpoint_path(trail).read_text()
        assert KEY.hex() not in text
        assert all(e["accessguard.chain.key"] == key_id(KEY) for e in lines_of(trail))


class TestIntact:
    def test_untampered_trail_verifies_with_its_checkpoint(self, trail: Path) -> None:
        """A keyed trail written in several sessions verifies, checkpoint at its last event."""
        write_events(trail, 3, start=6)
        result = verify(trail, key=KEY)
        assert result.ok, result.problem
        assert (result.events, result.checkpoint, result.keyed) == (9, 9, True)
        assert [e[SEQ] for e in lines_of(trail)] == list(range(1, 10))

    def test_new_empty_trail_verifies(self, tmp_path: Path) -> None:
        """A sink's construction check vouches for an empty trail (checkpoint at 0)."""
        path = tmp_path / "audit.jsonl"
        JsonlSink(path, key=KEY).check()
        result = verify(path, key=KEY)
        assert result.ok
        assert (result.events, result.checkpoint) == (0, 0)

    def test_unkeyed_trail_verifies_as_unkeyed(self, tmp_path: Path) -> None:
        """Without a key the chain still verifies, and says it is unkeyed."""
        path = tmp_path / "audit.jsonl"
        write_events(path, 3, key=None)
        result = verify(path, key=None)
        assert result.ok
        assert not result.keyed

    def test_old_format_trail_still_verifies_unkeyed(self, tmp_path: Path) -> None:
        """A trail of the previous format (no positions, no checkpoint) verifies unkeyed."""
        path = tmp_path / "audit.jsonl"
        events: list[dict[str, object]] = [{"event.action": "query", "n": i} for i in range(3)]
        rewrite(path, events)
        assert verify(path, key=None).ok
        write_events(path, 2, key=None)  # an unkeyed guard extends it with positions
        result = verify(path, key=None)
        assert result.ok, result.problem
        assert result.events == 5


def tamper(path: Path, how: str) -> None:
    events = lines_of(path)
    if how == "edit":
        events[2]["user.name"] = "mallory"
        path.write_text("".join(json.dumps(e) + "\n" for e in events))
    elif how == "edit-rehash":
        events[2]["user.name"] = "mallory"
        rewrite(path, events, from_index=2)
    elif how == "forged-append":
        forged = dict(events[-1], n=99)
        forged[SEQ] = len(events) + 1
        events.append(forged)
        rewrite(path, events, from_index=len(events) - 1)
    elif how == "forged-append-unkeyed":
        forged = {"event.action": "query", "n": 99, SEQ: len(events) + 1}
        events.append(forged)
        rewrite(path, events, from_index=len(events) - 1)
    elif how == "reorder":
        events[2], events[3] = events[3], events[2]
        rewrite(path, events, from_index=2)
    elif how == "delete-middle":
        del events[2]
        path.write_text("".join(json.dumps(e) + "\n" for e in events))
    elif how == "truncate-tail":
        path.write_text("".join(json.dumps(e) + "\n" for e in events[:-2]))
    elif how == "empty":
        path.write_text("")
    elif how == "replace":
        other = path.with_name("other.jsonl")
        write_events(other, 8, start=100)  # a genuine trail, same key, other events
        path.write_text(other.read_text())
    elif how == "replace-unkeyed":
        for event in events:
            event.pop("accessguard.chain.key")
        rewrite(path, events)
    elif how == "delete-checkpoint":
        checkpoint_path(path).unlink()
    elif how == "delete-everything":
        checkpoint_path(path).unlink()
        path.unlink()
    elif how == "empty-and-delete-checkpoint":
        checkpoint_path(path).unlink()
        path.write_text("")
    elif how == "forged-checkpoint":
        path.write_text("".join(json.dumps(e) + "\n" for e in events[:-2]))
        cp = json.loads(checkpoint_path(path).read_text())
        cp.update(seq=4, hash=events[3][HASH])
        checkpoint_path(path).write_text(json.dumps(cp))
    else:
        raise AssertionError(how)


TAMPERINGS = [
    "edit",
    "edit-rehash",
    "forged-append",
    "forged-append-unkeyed",
    "reorder",
    "delete-middle",
    "truncate-tail",
    "empty",
    "replace",
    "replace-unkeyed",
    "delete-checkpoint",
    "delete-everything",
    "empty-and-delete-checkpoint",
    "forged-checkpoint",
]


class TestTampering:
    @pytest.mark.parametrize("how", TAMPERINGS)
    def test_tampering_fails_verify(self, trail: Path, how: str) -> None:
        """Each tampering by someone without the key fails verification."""
        assert verify(trail, key=KEY).ok
        tamper(trail, how)
        result = verify(trail, key=KEY)
        assert not result.ok, how
        assert result.problem

    @pytest.mark.parametrize(
        ("how", "line"), [("edit", 3), ("edit-rehash", 3), ("reorder", 3), ("delete-middle", 3)]
    )
    def test_broken_line_is_named(self, trail: Path, how: str, line: int) -> None:
        """Verification names the first line that does not hold."""
        tamper(trail, how)
        assert verify(trail, key=KEY).broken_line == line

    @pytest.mark.parametrize(
        "how", ["truncate-tail", "empty", "replace", "delete-checkpoint", "forged-append"]
    )
    def test_sink_refuses_to_extend_a_tampered_trail(self, trail: Path, how: str) -> None:
        """The writer checks the tail against the checkpoint: it never chains over a cut."""
        tamper(trail, how)
        with pytest.raises(AuditError, match="refusing to extend"):
            write_events(trail, 1)

    @pytest.mark.parametrize(
        "how", ["truncate-tail", "empty", "replace", "delete-checkpoint", "forged-append"]
    )
    def test_the_same_sink_notices_tampering_between_its_writes(
        self, tmp_path: Path, how: str
    ) -> None:
        """A sink that wrote last still reads the trail back once anything changed it."""
        path = tmp_path / "audit.jsonl"
        auditor = Auditor(JsonlSink(path, fsync=False, key=KEY), clock=lambda: FROZEN)
        for i in range(6):
            auditor.emit(**{"event.action": "query", "user.name": "alice", "n": i})
        tamper(path, how)
        with pytest.raises(AuditError, match="refusing to extend"):
            auditor.emit(**{"event.action": "query", "user.name": "alice", "n": 6})

    def test_the_same_sink_notices_a_same_size_edit_without_fine_timestamps(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Where times are coarse (the stamp cannot move), the bytes it wrote last are compared."""
        from accessguard.audit import sinks

        monkeypatch.setattr(sinks, "_stamp", lambda _st: (0, 0, 0, 0, 0))
        path = tmp_path / "audit.jsonl"
        auditor = Auditor(JsonlSink(path, fsync=False, key=KEY), clock=lambda: FROZEN)
        for i in range(6):
            auditor.emit(**{"event.action": "query", "user.name": "alice", "n": i})
        text = path.read_text()
        last = text.rstrip("\n").rsplit("\n", 1)[-1]
        digest = json.loads(last)[HASH]
        forged = digest[:-1] + ("0" if digest[-1] != "0" else "1")  # the same length
        path.write_text(text.replace(digest, forged))
        with pytest.raises(AuditError, match="refusing to extend"):
            auditor.emit(**{"event.action": "query", "user.name": "alice", "n": 6})

    def test_two_sinks_on_one_trail_chain_onto_each_other(self, tmp_path: Path) -> None:
        """Each sink reads the other's appends back before its own: one chain, verified."""
        path = tmp_path / "audit.jsonl"
        one, two = (
            Auditor(JsonlSink(path, fsync=False, key=KEY), clock=lambda: FROZEN) for _ in "12"
        )
        for i in range(10):
            (one if i % 3 else two).emit(**{"event.action": "query", "n": i})
        result = verify(path, key=KEY)
        assert result.ok, result.problem
        assert [e["n"] for e in read_events(path)] == list(range(10))

    def test_verify_without_the_key_cannot_pass_a_keyed_trail(self, trail: Path) -> None:
        """With no key (or another key) a keyed trail fails, naming the key id it needs."""
        result = verify(trail, key=None)
        assert not result.ok
        assert KEY_ENV in result.problem
        assert not verify(trail, key=OTHER).ok

    def test_guard_without_the_key_refuses_a_keyed_trail(self, trail: Path) -> None:
        """A guard with no key (or another) cannot extend a keyed trail with unkeyed events."""
        with pytest.raises(AuditError, match="key id"):
            JsonlSink(trail, key=None).check()
        with pytest.raises(AuditError, match="key id"):
            JsonlSink(trail, key=OTHER).check()


class TestTorn:
    def test_torn_line_is_reported_as_torn_and_cut_by_the_next_write(self, trail: Path) -> None:
        """A crash mid-line is torn, not tampering; the next write cuts it off and goes on."""
        with trail.open("ab") as fh:
            fh.write(b'{"event.action": "query", "n": 6, "accessguard.ch')
        result = verify(trail, key=KEY)
        assert result.ok, result.problem
        assert result.torn_line == 7
        write_events(trail, 1, start=7)
        result = verify(trail, key=KEY)
        assert result.ok, result.problem
        assert (result.events, result.torn_line) == (7, None)
        assert [e["n"] for e in read_events(trail)] == [0, 1, 2, 3, 4, 5, 7]


class TestCommand:
    def test_verify_reads_the_key_from_the_environment(
        self, trail: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """audit verify takes the key from ACCESSGUARD_AUDIT_KEY; without it a keyed trail fails."""
        monkeypatch.delenv(KEY_ENV, raising=False)
        assert main(["audit", "verify", str(trail)]) == 1
        assert KEY_ENV in capsys.readouterr().out
        monkeypatch.setenv(KEY_ENV, KEY.hex())
        assert main(["audit", "verify", str(trail)]) == 0
        out = capsys.readouterr().out
        assert "chain intact, 6 events, keyed" in out
        assert "checkpoint at event 6" in out

    def test_unkeyed_trail_says_so(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An unkeyed trail verifies with a warning that it holds only against naive edits."""
        monkeypatch.delenv(KEY_ENV, raising=False)
        path = tmp_path / "audit.jsonl"
        write_events(path, 2, key=None)
        assert main(["audit", "verify", str(path)]) == 0
        assert "unkeyed: tamper-evident only against naive edits" in capsys.readouterr().out

    def test_truncated_tail_exits_one(
        self, trail: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A cut tail fails the command, saying what the checkpoint vouches for."""
        monkeypatch.setenv(KEY_ENV, KEY.hex())
        tamper(trail, "truncate-tail")
        assert main(["audit", "verify", str(trail)]) == 1
        assert "checkpoint vouches for 6" in capsys.readouterr().out


class TestBadCharacters:
    def test_nul_and_lone_surrogate_are_escaped_and_verify(self, tmp_path: Path) -> None:
        """A NUL or a lone surrogate in any field or key is escaped; the batch is written."""
        path = tmp_path / "audit.jsonl"
        sink = JsonlSink(path, key=KEY, fsync=False)
        sink.write([{"event.action": "query", "db.query.text": "a\x00b\ud800c", "k\ud801": 1}])
        (event,) = read_events(path)
        assert event["db.query.text"] == "a\\u0000b\\ud800c"
        assert event["k\\ud801"] == 1
        assert verify(path, key=KEY).ok


class TestConcurrentVerify:
    def test_verify_while_writers_append_never_reports_tampering(self, tmp_path: Path) -> None:
        """verify reads the checkpoint under the trail's lock before the lines: no false alarm."""
        path = tmp_path / "audit.jsonl"
        JsonlSink(path, key=KEY).check()

        def work(worker: int) -> None:
            write_events(path, 60, start=worker * 1000)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(2)]
        for t in threads:
            t.start()
        verdicts = []
        while any(t.is_alive() for t in threads):
            verdicts.append(verify(path, key=KEY))
        for t in threads:
            t.join()
        verdicts.append(verify(path, key=KEY))
        assert all(v.ok for v in verdicts), [v.problem for v in verdicts if not v.ok][:1]
        assert verdicts[-1].events == 120


class TestProperties:
    @given(
        index=st.integers(0, 5),
        field=st.sampled_from(["user.name", "n", "event.action", "@timestamp", SEQ]),
        value=st.one_of(st.text(max_size=8), st.integers(-3, 9)),
        rehash=st.booleans(),
    )
    @settings(max_examples=60, deadline=None)
    def test_any_change_without_the_key_fails_verify(
        self,
        tmp_path_factory: pytest.TempPathFactory,
        index: int,
        field: str,
        value: object,
        rehash: bool,
    ) -> None:
        """Changing any field of any event, re-hashed or not, fails verify unless it is a no-op."""
        path = tmp_path_factory.mktemp("prop") / "audit.jsonl"
        write_events(path, 6)
        events = lines_of(path)
        changed = events[index].get(field) != value
        events[index][field] = value
        if rehash:
            rewrite(path, events, from_index=index)
        else:
            path.write_text("".join(json.dumps(e) + "\n" for e in events))
        assert verify(path, key=KEY).ok == (not changed and not rehash)
