"""The PostgreSQL trail: keyed chain, checkpoints, indexed columns, NUL, and its spool."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from accessguard import AuditError
from accessguard.audit.chain import HASH, KEY_ENV, PREV, SEQ, chain_hash
from accessguard.audit.pgsink import PostgresSink
from accessguard.audit.pgtables import read_events
from accessguard.audit.pgverify import verify
from accessguard.cli.app import main

pytestmark = pytest.mark.db

KEY = bytes(range(32))
STAMP = "2026-11-24T10:00:00+00:00"


def _event(n: int, **extra: object) -> dict[str, object]:
    return {
        "event.action": "ledger",
        "@timestamp": STAMP,
        "user.name": "alice",
        "accessguard.ticket.id": "T-100",
        "accessguard.subject.kind": "customer",
        "accessguard.subject.id": 42,
        "n": n,
        **extra,
    }


def _outage(dsn: str, *, down: bool) -> None:
    """Refuse (or allow again) new connections to the sink's database: a real outage."""
    admin_dsn = dsn.rsplit("/", 1)[0] + "/postgres"
    name = dsn.rsplit("/", 1)[1]
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            psycopg.sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                psycopg.sql.Identifier(name), psycopg.sql.SQL("false" if down else "true")
            )
        )
        if down:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                [name],
            )


@pytest.fixture
def trail(scenario_dsn: str) -> str:
    """Six keyed events in three batches."""
    sink = PostgresSink(scenario_dsn, key=KEY)
    sink.setup()
    sink.check()
    for n in range(0, 6, 2):
        sink.write([_event(n), _event(n + 1)])
    sink.close()
    return scenario_dsn


def _sql(dsn: str, statement: str, params: list[object] | None = None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement.encode(), params)


def _forge_append(dsn: str) -> None:
    """INSERT a row chained as someone without the key can: sha256, the key id copied."""
    events = list(read_events(dsn))
    forged = dict(events[-1], n=99)
    forged[SEQ] = len(events) + 1
    forged[PREV] = events[-1][HASH]
    forged[HASH] = chain_hash(str(forged[PREV]), forged)
    _sql(
        dsn,
        "INSERT INTO accessguard.events (ts, action, user_name, ticket_id, subject_kind, "
        "subject_id, hash, event) VALUES (%s, 'ledger', 'alice', 'T-100', 'customer', '42', "
        "%s, %s)",
        [STAMP, forged[HASH], json.dumps(forged)],
    )
    _sql(
        dsn,
        "INSERT INTO accessguard.checkpoints (seq, hash, key, mac) VALUES (%s, %s, %s, %s)",
        [forged[SEQ], forged[HASH], forged["accessguard.chain.key"], "0" * 64],
    )


TAMPERINGS: dict[str, Callable[[str], None]] = {
    "insert-forged": _forge_append,
    "delete-last-rows": lambda dsn: _sql(
        dsn,
        "DELETE FROM accessguard.events WHERE id IN "
        "(SELECT id FROM accessguard.events ORDER BY id DESC LIMIT 2)",
    ),
    "delete-middle-row": lambda dsn: _sql(
        dsn,
        "DELETE FROM accessguard.events WHERE id = "
        "(SELECT id FROM accessguard.events ORDER BY id OFFSET 2 LIMIT 1)",
    ),
    "update-user-name": lambda dsn: _sql(
        dsn, "UPDATE accessguard.events SET user_name = 'bob' WHERE event->>'n' = '3'"
    ),
    "update-subject-id": lambda dsn: _sql(
        dsn, "UPDATE accessguard.events SET subject_id = '7' WHERE event->>'n' = '3'"
    ),
    "update-ticket-id": lambda dsn: _sql(
        dsn, "UPDATE accessguard.events SET ticket_id = 'T-999' WHERE event->>'n' = '3'"
    ),
    "update-event": lambda dsn: _sql(
        dsn,
        "UPDATE accessguard.events SET event = jsonb_set(event, '{user.name}', '\"bob\"') "
        "WHERE event->>'n' = '3'",
    ),
    "empty-everything": lambda dsn: _sql(
        dsn, "DELETE FROM accessguard.events; DELETE FROM accessguard.checkpoints"
    ),
    "empty-events": lambda dsn: _sql(dsn, "DELETE FROM accessguard.events"),
}


class TestPostgresChain:
    def test_untampered_trail_verifies(self, trail: str) -> None:
        """A keyed PostgreSQL trail verifies, its latest checkpoint at its last event."""
        result = verify(trail, key=KEY)
        assert result.ok, result.problem
        assert (result.events, result.checkpoint, result.keyed) == (6, 6, True)

    @pytest.mark.parametrize("how", sorted(TAMPERINGS))
    def test_tampering_fails_verify(self, trail: str, how: str) -> None:
        """INSERT forged, DELETE rows, UPDATE indexed columns or the event: verify fails."""
        TAMPERINGS[how](trail)
        result = verify(trail, key=KEY)
        assert not result.ok, how
        assert result.problem

    @pytest.mark.parametrize("how", ["delete-last-rows", "empty-events", "insert-forged"])
    def test_sink_refuses_to_extend_a_tampered_trail(self, trail: str, how: str) -> None:
        """The writer checks head and checkpoint first: it never chains over a cut or a forgery."""
        TAMPERINGS[how](trail)
        sink = PostgresSink(trail, key=KEY)
        with pytest.raises(AuditError, match="refusing to extend"):
            sink.write([_event(9)])
        sink.close()

    def test_verify_without_the_key_fails(self, trail: str) -> None:
        """A keyed PostgreSQL trail does not verify without its key."""
        assert not verify(trail, key=None).ok


class TestNeverStalls:
    def test_nul_is_escaped_not_fatal(self, scenario_dsn: str) -> None:
        """A NUL in any string (jsonb rejects it) is escaped; later events still go in."""
        sink = PostgresSink(scenario_dsn, key=KEY)
        sink.setup()
        sink.write([_event(0, **{"db.query.text": "SELECT \x00x FROM t", "user.name": "a\x00b"})])
        sink.write([_event(1)])
        sink.close()
        events = list(read_events(scenario_dsn))
        assert events[0]["db.query.text"] == "SELECT \\u0000x FROM t"
        assert [e["n"] for e in events] == [0, 1]
        assert verify(scenario_dsn, key=KEY).ok

    def test_idle_spool_is_delivered_by_the_timer(self, scenario_dsn: str, tmp_path: Path) -> None:
        """Spooled events reach the table with no new event to carry them."""
        sink = PostgresSink(scenario_dsn, key=KEY, spool=tmp_path / "spool", retry_interval=0.05)
        sink.setup()
        _outage(scenario_dsn, down=True)
        try:
            sink.write([_event(0)])
            sink.write([_event(1), _event(2)])
            assert sink.spooled == 3
        finally:
            _outage(scenario_dsn, down=False)
        assert sink.delivered.wait(timeout=60)
        assert [e["n"] for e in read_events(scenario_dsn)] == [0, 1, 2]
        assert sink.spooled == 0
        sink.write([_event(3)])  # straight to the table again, after the spooled ones
        sink.close()
        assert [e["n"] for e in read_events(scenario_dsn)] == [0, 1, 2, 3]
        assert verify(scenario_dsn, key=KEY).ok

    def test_close_delivers_the_spool(self, scenario_dsn: str, tmp_path: Path) -> None:
        """close() delivers what waits in the spool once the server is back."""
        sink = PostgresSink(scenario_dsn, key=KEY, spool=tmp_path / "spool", retry_interval=3600)
        sink.setup()
        _outage(scenario_dsn, down=True)
        try:
            sink.write([_event(0), _event(1)])
        finally:
            _outage(scenario_dsn, down=False)
        sink.close()
        assert [e["n"] for e in read_events(scenario_dsn)] == [0, 1]
        assert verify(scenario_dsn, key=KEY).ok

    def test_delivery_resumes_exactly_where_it_stopped(
        self, scenario_dsn: str, tmp_path: Path
    ) -> None:
        """A new sink on a half-delivered spool (a crash) delivers the rest once, in order."""
        spool = tmp_path / "spool"
        sink = PostgresSink(scenario_dsn, key=KEY, spool=spool, retry_interval=3600, chunk=2)
        sink.setup()
        _outage(scenario_dsn, down=True)
        try:
            for n in range(5):
                sink.write([_event(n)])
            # stop its deliverer before the server is back: this test delivers by hand
            thread = sink._thread
            sink._closed = True
            sink._wake.set()
            if thread is not None:
                thread.join(timeout=60)
        finally:
            _outage(scenario_dsn, down=False)
        # deliver one chunk, then "crash": the sink's memory of its progress is lost
        assert sink._spool is not None
        named = sink._spool.token()
        assert named is not None
        token, start = named
        events, after, _mac = sink._spool.read(start, token, limit=2)
        with sink._db_lock:
            sink._insert(events, mark=(token, after))
            sink._drop_connection()
        again = PostgresSink(scenario_dsn, key=KEY, spool=spool, retry_interval=3600)
        assert again.deliver()
        again.close()
        assert [e["n"] for e in read_events(scenario_dsn)] == [0, 1, 2, 3, 4]
        assert verify(scenario_dsn, key=KEY).ok

    def test_event_altered_in_the_spool_is_delivered_flagged_and_fails_verify(
        self, scenario_dsn: str, tmp_path: Path
    ) -> None:
        """With the key, spool lines are MAC-chained: an edit before delivery fails verify."""
        spool = tmp_path / "spool"
        sink = PostgresSink(scenario_dsn, key=KEY, spool=spool, retry_interval=3600)
        sink.setup()
        _outage(scenario_dsn, down=True)
        try:
            sink.write([_event(0), _event(1), _event(2)])
        finally:
            _outage(scenario_dsn, down=False)
        text = spool.read_text()
        assert '"user.name": "alice"' in text
        spool.write_text(text.replace('"user.name": "alice"', '"user.name": "bob"', 1))
        sink.close()
        events = list(read_events(scenario_dsn))
        assert [e.get("accessguard.spool.tampered") for e in events] == [True, None, None]
        result = verify(scenario_dsn, key=KEY)
        assert not result.ok
        assert result.broken_line == 1
        assert "spool" in result.problem

    def test_unwritable_spool_fails_the_check(self, scenario_dsn: str, tmp_path: Path) -> None:
        """A sink whose spool cannot be written fails its construction check."""
        sink = PostgresSink(scenario_dsn, key=KEY, spool=tmp_path / "no-dir" / "spool")
        with pytest.raises(AuditError, match="spool"):
            sink.check()


class TestCommand:
    def test_verify_dsn_exits_zero_then_one_after_tampering(
        self, trail: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """audit verify --dsn uses the key from the environment and names what broke."""
        monkeypatch.setenv(KEY_ENV, KEY.hex())
        assert main(["audit", "verify", "--dsn", trail]) == 0
        assert "chain intact, 6 events, keyed" in capsys.readouterr().out
        TAMPERINGS["delete-last-rows"](trail)
        assert main(["audit", "verify", "--dsn", trail]) == 1
        assert "checkpoint vouches for 6" in capsys.readouterr().out


class TestConcurrentWriters:
    def test_two_sinks_in_threads_keep_one_chain(self, scenario_dsn: str) -> None:
        """Sinks on separate connections serialise on the advisory lock: one chain, verified."""
        PostgresSink(scenario_dsn, key=KEY).setup()

        def work(worker: int) -> None:
            sink = PostgresSink(scenario_dsn, key=KEY)
            for n in range(20):
                sink.write([_event(worker * 100 + n), _event(worker * 100 + n + 50)])
            sink.close()

        threads = [threading.Thread(target=work, args=(w,)) for w in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        result = verify(scenario_dsn, key=KEY)
        assert result.ok, result.problem
        assert (result.events, result.checkpoint) == (120, 120)
