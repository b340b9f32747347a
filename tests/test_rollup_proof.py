"""The sink's hourly rollup: built only from verified events, trusted only while it holds
exactly what its refreshes wrote (accessguard.investigate.rollup).

Alice and erin read customer 42 (accessguard's ``test_investigate.workload``).
"""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from test_investigate import KEY as AUDIT_KEY
from test_investigate import workload

from accessguard.audit.chain import KEY_ENV
from accessguard.audit.pgsink import PostgresSink
from accessguard.cli.app import main
from accessguard.investigate.core import Window
from accessguard.investigate.rollup import RollupRefused, refresh
from accessguard.investigate.sink import SinkEngine

pytestmark = pytest.mark.db


@pytest.fixture
def keyed(scenario_dsn: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The sink holding the workload, keyed (the key in the environment, as a user sets it)."""
    monkeypatch.setenv(KEY_ENV, AUDIT_KEY.hex())
    sink = PostgresSink(scenario_dsn, key=AUDIT_KEY)
    sink.setup()
    events = [dict(e) for e in workload()]
    half = len(events) // 2
    sink.write(events[:half])
    sink.write(events[half:])
    sink.close()
    return scenario_dsn


def _readers(dsn: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(["audit", "who-read", "--dsn", dsn, "--customer", "42", "--format", "json"])
    return code, sorted(row["user"] for row in json.loads(capsys.readouterr().out))


def _rolled(dsn: str) -> bool:
    engine = SinkEngine(dsn)
    try:
        return "ledger_hours" in engine.name
    finally:
        engine.close()


def _volumes(dsn: str, *, rollup: bool) -> list[object]:
    engine = SinkEngine(dsn, rollup=rollup)
    try:
        return list(engine.volumes(Window()))
    finally:
        engine.close()


def _last_id(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT max(id) FROM accessguard.events").fetchone()
    assert row is not None
    return int(row[0])


def test_an_event_edited_and_put_back_never_reaches_the_rollup(
    keyed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An insider moves alice's entries to another customer, lets the cron refresh run, then
    puts them back so the events verify again: the refresh verified first and refused, so
    who-read still names alice."""
    assert _readers(keyed, capsys) == (0, ["alice", "erin"])  # leaves a verification mark
    with psycopg.connect(keyed, autocommit=True) as conn:
        moved = conn.execute(
            "UPDATE accessguard.events SET subject_id = '7' "
            "WHERE user_name = 'alice' AND subject_id = '42' RETURNING id"
        ).fetchall()
    assert moved
    capsys.readouterr()
    assert main(["audit", "index", "--dsn", keyed]) == 1
    assert "does not verify" in capsys.readouterr().err
    with psycopg.connect(keyed, autocommit=True) as conn:
        conn.execute(
            "UPDATE accessguard.events SET subject_id = '42' WHERE id = ANY(%s)",
            [[i for (i,) in moved]],
        )
    assert main(["audit", "index", "--dsn", keyed]) == 0
    assert _rolled(keyed)
    assert _readers(keyed, capsys) == (0, ["alice", "erin"])


def test_a_refresh_of_an_unverifiable_trail_leaves_the_rollup_as_it_was(keyed: str) -> None:
    refresh(keyed, until=_last_id(keyed) // 2)
    before = _volumes(keyed, rollup=True)
    with psycopg.connect(keyed, autocommit=True) as conn:
        conn.execute("UPDATE accessguard.events SET hash = repeat('0', 64) WHERE id = 1")
    with pytest.raises(RollupRefused, match="does not verify"):
        refresh(keyed)
    with psycopg.connect(keyed) as conn:
        row = conn.execute("SELECT max(upto) FROM accessguard.ledger_hours_mark").fetchone()
    assert row is not None
    assert row[0] == _last_id(keyed) // 2
    assert _volumes(keyed, rollup=True) == before


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE accessguard.ledger_hours SET rows = rows + 1 WHERE user_name = 'alice'",
        "DELETE FROM accessguard.ledger_hours WHERE user_name = 'alice'",
        # a row copied in: same values, another writer
        "INSERT INTO accessguard.ledger_hours SELECT * FROM accessguard.ledger_hours LIMIT 1",
        "UPDATE accessguard.ledger_hours_mark SET added = added - 1",
        # the first refresh's mark: the second's range no longer follows on from event 0
        "DELETE FROM accessguard.ledger_hours_mark WHERE start = 0",
    ],
    ids=["update", "delete", "insert", "mark-edited", "mark-removed"],
)
def test_an_edited_rollup_is_not_trusted_and_the_next_refresh_builds_it_again(
    keyed: str, edit: str
) -> None:
    refresh(keyed, until=_last_id(keyed) // 2)
    refresh(keyed)
    want = _volumes(keyed, rollup=False)
    assert _rolled(keyed)
    assert _volumes(keyed, rollup=True) == want
    with psycopg.connect(keyed, autocommit=True) as conn:
        conn.execute(edit)
    assert not _rolled(keyed)
    assert _volumes(keyed, rollup=True) == want  # answered from the verified events
    done = refresh(keyed)
    assert done.start == 0  # built again
    assert _rolled(keyed)
    assert _volumes(keyed, rollup=True) == want


def test_rows_of_one_refresh_cannot_be_swapped_for_the_mark_of_another(keyed: str) -> None:
    """Two refreshes; the insider deletes the second one's mark and as many of the first's rows
    as the second added (alice's): every refresh is one transaction with one mark, so the
    first's rows no longer count up to its mark."""
    refresh(keyed, until=_last_id(keyed) // 2)
    second = refresh(keyed)
    assert second.rows > 0
    with psycopg.connect(keyed, autocommit=True) as conn:
        conn.execute("DELETE FROM accessguard.ledger_hours_mark WHERE start > 0")
        conn.execute(
            "DELETE FROM accessguard.ledger_hours WHERE ctid IN (SELECT ctid FROM "
            "accessguard.ledger_hours WHERE xmin = (SELECT xmin FROM "
            "accessguard.ledger_hours_mark) LIMIT %s)",
            [second.rows],
        )
    assert not _rolled(keyed)


def test_the_last_refresh_removed_whole_hands_its_events_back(keyed: str) -> None:
    """Removing the latest refresh with every row it wrote only makes the rollup shorter: the
    events after the earlier mark answer, and the answers are the same."""
    want = _volumes(keyed, rollup=False)
    first = refresh(keyed, until=_last_id(keyed) // 2)
    refresh(keyed)
    with psycopg.connect(keyed, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM accessguard.ledger_hours WHERE xmin = (SELECT xmin FROM "
            "accessguard.ledger_hours_mark WHERE start > 0)"
        )
        conn.execute("DELETE FROM accessguard.ledger_hours_mark WHERE start > 0")
    engine = SinkEngine(keyed)
    try:
        assert "ledger_hours" in engine.name
        assert engine._mark == first.upto
        assert list(engine.volumes(Window())) == want
    finally:
        engine.close()


def test_without_a_key_the_rollup_is_built_and_used_unverified(
    scenario_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    sink = PostgresSink(scenario_dsn, key=None)
    sink.setup()
    sink.write([dict(e) for e in workload()])
    sink.close()
    assert refresh(scenario_dsn).rows > 0
    assert _rolled(scenario_dsn)
    assert _volumes(scenario_dsn, rollup=True) == _volumes(scenario_dsn, rollup=False)


def test_a_refresh_rewritten_together_with_its_mark_is_not_trusted(
    keyed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """One transaction rewrites every row a refresh wrote (alice's entries now erin's) and
    touches that refresh's mark: rows and mark share the insider's xmin, the counts per xmin
    still match and the MAC over (start, upto, added) still holds. The mark's MAC names the
    refresh's own transaction, so the rollup is not trusted and who-read still names alice."""
    refresh(keyed, until=_last_id(keyed) // 2)
    refresh(keyed)
    assert _rolled(keyed)
    with psycopg.connect(keyed, autocommit=True) as conn, conn.transaction():
        conn.execute(
            "UPDATE accessguard.ledger_hours SET user_name = CASE user_name "
            "WHEN 'alice' THEN 'erin' ELSE user_name END "
            "WHERE xmin = (SELECT xmin FROM accessguard.ledger_hours_mark WHERE start = 0)"
        )
        conn.execute("UPDATE accessguard.ledger_hours_mark SET at = at WHERE start = 0")
    assert not _rolled(keyed)
    assert _readers(keyed, capsys) == (0, ["alice", "erin"])
    assert refresh(keyed).start == 0  # built again
    assert _rolled(keyed)
    assert _readers(keyed, capsys) == (0, ["alice", "erin"])


_TRIGGER = """
CREATE FUNCTION accessguard.hide() RETURNS trigger LANGUAGE plpgsql AS
$$BEGIN IF NEW.user_name = 'alice' THEN NEW.user_name := 'erin'; END IF; RETURN NEW; END$$;
CREATE TRIGGER hide BEFORE INSERT ON accessguard.ledger_hours
FOR EACH ROW EXECUTE FUNCTION accessguard.hide()
"""


def test_a_trigger_on_the_rollup_stops_the_refresh(
    keyed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The rollup's owner adds a trigger that rewrites the rows a refresh inserts, inside the
    refresh's own transaction (xmin, counts and MAC all as a refresh leaves them), and drops it
    afterwards: the refresh refuses to write through a trigger."""
    refresh(keyed, until=_last_id(keyed) // 2)
    with psycopg.connect(keyed, autocommit=True) as conn:
        conn.execute(_TRIGGER)
    assert not _rolled(keyed)  # (not trusted while it is there)
    capsys.readouterr()
    assert main(["audit", "index", "--dsn", keyed]) == 1
    assert "not a plain table" in capsys.readouterr().err
    with psycopg.connect(keyed, autocommit=True) as conn:
        conn.execute("DROP TRIGGER hide ON accessguard.ledger_hours")
    assert _readers(keyed, capsys) == (0, ["alice", "erin"])
    refresh(keyed)
    assert _rolled(keyed)
    assert _readers(keyed, capsys) == (0, ["alice", "erin"])


@pytest.mark.parametrize(
    "swap",
    [
        # a view that shows the real rows' xmin beside another reader
        (
            "ALTER TABLE accessguard.ledger_hours RENAME TO ledger_hours_real; "
            "CREATE VIEW accessguard.ledger_hours AS SELECT hour, first_hour, CASE user_name "
            "WHEN 'alice' THEN 'erin' ELSE user_name END AS user_name, ticket_id, ticket_kind, "
            "subject_kind, subject_id, columns, tables, roles, statements, rows, first, last, "
            "ts_min, ts_max, xmin::text AS xmin FROM accessguard.ledger_hours_real"
        ),
        # a policy that hides alice from every statement but the proof's count
        (
            "ALTER TABLE accessguard.ledger_hours ENABLE ROW LEVEL SECURITY; "
            "ALTER TABLE accessguard.ledger_hours FORCE ROW LEVEL SECURITY; "
            "CREATE POLICY p ON accessguard.ledger_hours USING (user_name <> 'alice' "
            "OR current_query() LIKE '%count(*)%')"
        ),
        # a child table: its rows are read with the parent's
        "CREATE TABLE accessguard.more () INHERITS (accessguard.ledger_hours)",
    ],
    ids=["view", "row-security", "inherited"],
)
def test_a_rollup_that_is_not_a_plain_table_is_not_trusted(keyed: str, swap: str) -> None:
    refresh(keyed)
    want = _volumes(keyed, rollup=False)
    with psycopg.connect(keyed, autocommit=True) as conn:
        conn.execute(swap)
    assert not _rolled(keyed)
    assert _volumes(keyed, rollup=True) == want
    with pytest.raises(RollupRefused, match="not a plain table"):
        refresh(keyed)


def test_row_security_on_the_events_fails_the_question(
    keyed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The events' owner turns on a policy that hides alice from every statement but the
    verifier's; an investigator who is not a superuser got a verified trail and an answer
    without alice. Row security is off in the verifying and asking sessions: it fails."""
    role = f"ag_reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(keyed, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role}")
        conn.execute(f"GRANT USAGE ON SCHEMA accessguard TO {role}")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA accessguard TO {role}")
        conn.execute(
            "ALTER TABLE accessguard.events ENABLE ROW LEVEL SECURITY; "
            "CREATE POLICY p ON accessguard.events USING (user_name IS DISTINCT FROM 'alice' "
            "OR current_query() LIKE '%accessguard_verify%' OR current_query() LIKE '%count(*)%')"
        )
    try:
        as_reader = make_conninfo(keyed, options=f"-c role={role}")
        code, said = _readers_or_error(as_reader, capsys)
        assert code == 1
        assert "row-level security" in said
    finally:
        with psycopg.connect(keyed, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def _readers_or_error(dsn: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["audit", "who-read", "--dsn", dsn, "--customer", "42", "--format", "json"])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_the_sink_is_verified_in_the_snapshot_its_answers_come_from(
    keyed: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edit committed while a question runs (after its engine opened, before it verified)
    is neither verified nor answered from: both see the rows as they were. The next question
    sees the edit, and fails."""
    assert _readers(keyed, capsys) == (0, ["alice", "erin"])  # leaves a mark
    verify = SinkEngine.verify
    edited: list[int] = []

    def edit_then_verify(self: SinkEngine, dsn: str) -> object:
        with psycopg.connect(dsn, autocommit=True) as conn:
            edited.append(
                conn.execute(
                    "UPDATE accessguard.events SET user_name = 'erin' WHERE user_name = 'alice'"
                ).rowcount
            )
        return verify(self, dsn)

    monkeypatch.setattr(SinkEngine, "verify", edit_then_verify)
    assert _readers(keyed, capsys) == (0, ["alice", "erin"])
    assert edited
    assert edited[0] > 0
    monkeypatch.setattr(SinkEngine, "verify", verify)
    assert _readers(keyed, capsys)[0] == 1
