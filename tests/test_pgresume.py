"""Resumed verification of the PostgreSQL trail: only rows written since the mark are read,
and every tampering of ``test_pgchain`` is still caught, before or after the mark."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from test_pgchain import KEY, TAMPERINGS, _event

from accessguard.audit import pgresume
from accessguard.audit.pgresume import mark_file, verify_resumed
from accessguard.audit.pgsink import PostgresSink

pytestmark = pytest.mark.db


def _write(dsn: str, first: int, n: int) -> None:
    sink = PostgresSink(dsn, key=KEY)
    sink.setup()
    sink.check()
    for i in range(first, first + n, 2):
        sink.write([_event(i), _event(i + 1)])
    sink.close()


@pytest.fixture
def marked(scenario_dsn: str, tmp_path: Path) -> tuple[str, Path]:
    """Six keyed events, verified once (a mark is kept in ``tmp_path``), then four more."""
    _write(scenario_dsn, 0, 6)
    assert verify_resumed(scenario_dsn, key=KEY, directory=tmp_path).ok
    assert mark_file(scenario_dsn, tmp_path).exists()
    _write(scenario_dsn, 6, 4)
    return scenario_dsn, tmp_path


@pytest.fixture
def read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ``n`` of every event the verification reads from the database."""
    seen: list[int] = []
    rows = pgresume._rows

    def counting(
        conn: psycopg.Connection[Any], start: int, horizon: int
    ) -> Iterator[tuple[Any, ...]]:
        for row in rows(conn, start, horizon):
            seen.append(int(row[8]["n"]))
            yield row

    monkeypatch.setattr(pgresume, "_rows", counting)
    return seen


def test_only_the_rows_written_since_are_read(marked: tuple[str, Path], read: list[int]) -> None:
    dsn, where = marked
    result = verify_resumed(dsn, key=KEY, directory=where)
    assert (result.ok, result.events) == (True, 10), result.problem
    assert read == [6, 7, 8, 9]
    read.clear()
    assert verify_resumed(dsn, key=KEY, directory=where).ok
    assert read == []


@pytest.mark.parametrize("how", sorted(TAMPERINGS))
def test_every_tampering_fails_a_resumed_verification(marked: tuple[str, Path], how: str) -> None:
    dsn, where = marked
    TAMPERINGS[how](dsn)
    result = verify_resumed(dsn, key=KEY, directory=where)
    assert not result.ok, how


@pytest.mark.parametrize(
    "statement",
    [
        (
            "UPDATE accessguard.events SET event = jsonb_set(event, '{user.name}', '\"bob\"') "
            "WHERE event->>'n' = '1'"
        ),
        "UPDATE accessguard.events SET user_name = user_name WHERE event->>'n' = '1'",
    ],
)
def test_a_row_before_the_mark_changed_since_is_found_and_named(
    marked: tuple[str, Path], read: list[int], statement: str
) -> None:
    """Even an UPDATE that writes the same values makes a new row version: all is read again."""
    dsn, where = marked
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement.encode())
    result = verify_resumed(dsn, key=KEY, directory=where)
    assert read[:2] == [0, 1]  # read from the start
    if "jsonb_set" in statement:
        assert (result.ok, result.broken_line) == (False, 2)
    else:
        assert result.ok  # same content: it verifies, from the start


def test_a_forged_mark_is_not_trusted(marked: tuple[str, Path], read: list[int]) -> None:
    """Moving the mark past rows it never verified breaks its MAC: everything is read."""
    dsn, where = marked
    path = mark_file(dsn, where)
    mark = json.loads(path.read_text())
    mark.update(last_id=mark["last_id"] + 4, count=mark["count"] + 4)
    path.write_text(json.dumps(mark))
    assert verify_resumed(dsn, key=KEY, directory=where).ok
    assert read == list(range(10))


def test_without_a_key_everything_is_verified(scenario_dsn: str, tmp_path: Path) -> None:
    _write(scenario_dsn, 0, 4)
    result = verify_resumed(scenario_dsn, key=None, directory=tmp_path)
    assert not result.ok  # a keyed trail cannot be verified without its key
    assert not mark_file(scenario_dsn, tmp_path).exists()


def test_a_keyed_rollup_is_used_until_it_is_edited(
    scenario_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hourly rollup answers while its MAC holds; after an edit the events answer."""
    from accessguard.audit.chain import KEY_ENV
    from accessguard.investigate.rollup import refresh
    from accessguard.investigate.sink import SinkEngine

    monkeypatch.setenv(KEY_ENV, KEY.hex())
    _write(scenario_dsn, 0, 6)
    refresh(scenario_dsn)
    engine = SinkEngine(scenario_dsn)
    assert "ledger_hours" in engine.name
    engine.close()
    with psycopg.connect(scenario_dsn, autocommit=True) as conn:
        conn.execute("UPDATE accessguard.ledger_hours SET rows = rows + 1")
    engine = SinkEngine(scenario_dsn)
    assert "ledger_hours" not in engine.name
    engine.close()


def test_an_earlier_releases_rollup_is_left_unused_then_built_again(scenario_dsn: str) -> None:
    """A rollup without the columns the report's sums read is not asked; a refresh rebuilds it."""
    from accessguard.investigate.core import Window
    from accessguard.investigate.rollup import refresh
    from accessguard.investigate.sink import SinkEngine

    _write(scenario_dsn, 0, 6)
    refresh(scenario_dsn)
    with psycopg.connect(scenario_dsn, autocommit=True) as conn:
        # the 0.2 form: no hour of the first statement, no earliest and latest times
        conn.execute("ALTER TABLE accessguard.ledger_hours DROP COLUMN first_hour")
        conn.execute("ALTER TABLE accessguard.ledger_hours DROP COLUMN ts_min")
    engine = SinkEngine(scenario_dsn)
    try:
        assert "ledger_hours" not in engine.name
        want = engine.volumes(Window())
    finally:
        engine.close()
    assert want
    done = refresh(scenario_dsn)
    assert done.start == 0  # built again from the first event
    assert done.rows > 0
    engine = SinkEngine(scenario_dsn)
    try:
        assert "ledger_hours" in engine.name
        assert engine.volumes(Window()) == want
    finally:
        engine.close()


def test_rows_written_while_an_older_transaction_ran_are_vouched_for_by_id(
    scenario_dsn: str, tmp_path: Path, read: list[int]
) -> None:
    """A transaction open across the mark holds its horizon back: the rows written after that
    horizon are listed in the mark (id and xmin) and found again by id; changed, they are not."""
    with psycopg.connect(scenario_dsn) as holder:
        holder.execute("SELECT pg_current_xact_id()")  # an xid, held open: the horizon stays
        _write(scenario_dsn, 0, 6)
        assert verify_resumed(scenario_dsn, key=KEY, directory=tmp_path).ok
        holder.rollback()
    mark = json.loads(mark_file(scenario_dsn, tmp_path).read_text())
    assert len(mark["recent"]) == 6  # every row is at or after the horizon: all listed
    read.clear()
    assert verify_resumed(scenario_dsn, key=KEY, directory=tmp_path).ok
    assert read == []  # vouched for by the listed ids, none read again
    with psycopg.connect(scenario_dsn, autocommit=True) as conn:
        conn.execute("UPDATE accessguard.events SET user_name = user_name WHERE event->>'n' = '4'")
    assert verify_resumed(scenario_dsn, key=KEY, directory=tmp_path).ok  # same content
    assert read[:1] == [0]  # but read again from the start: the listed xmin changed
