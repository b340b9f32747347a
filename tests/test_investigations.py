"""Investigations pushed down to DuckDB and PostgreSQL: the same answers as the Python path.

A small month is generated through the real guard (benchmarks/month.py) into
a JSON-lines trail and the PostgreSQL sink; every answer of the engines is
compared with ``accessguard.investigate``'s on the same events and with the
generator's ground truth.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from casefiles import PgServerLike
from psycopg import sql

from accessguard.audit.chain import checkpoint_path
from accessguard.audit.pgsink import PostgresSink
from accessguard.audit.sinks import JsonlSink
from accessguard.cli import investigate as command_module
from accessguard.cli.app import main
from accessguard.investigate import Engine, Window, open_engine, subject_export, what_read, who_read
from accessguard.investigate import sums as investigate
from accessguard.investigate.rollup import refresh
from accessguard.investigate.sink import SinkEngine
from benchmarks.month import INSIDERS, generate

UTC = dt.UTC
WINDOWS = {
    "all": Window(),
    "day-2": Window(
        start=dt.datetime(2026, 11, 3, tzinfo=UTC), end=dt.datetime(2026, 11, 4, tzinfo=UTC)
    ),
    "from-noon": Window(start=dt.datetime(2026, 11, 3, 12, tzinfo=UTC)),
    "until-noon": Window(end=dt.datetime(2026, 11, 3, 12, tzinfo=UTC)),
    "minutes": Window(
        start=dt.datetime(2026, 11, 3, 9, 17, 5, tzinfo=UTC),
        end=dt.datetime(2026, 11, 4, 15, 42, 30, tzinfo=UTC),
    ),
    "in-one-hour": Window(
        start=dt.datetime(2026, 11, 3, 10, 5, tzinfo=UTC),
        end=dt.datetime(2026, 11, 3, 10, 55, tzinfo=UTC),
    ),
}


@dataclass(frozen=True, slots=True)
class Month:
    """A generated month: its trail, its sink and what really happened."""

    trail: Path
    dsn: str
    truth: dict[str, Any]
    events: list[dict[str, Any]]

    def within(self, window: Window) -> list[dict[str, Any]]:
        return [e for e in self.events if window.holds(investigate.event_time(e))]

    def subjects(self) -> list[tuple[str, int]]:
        found = sorted({(r["scope"], r["subject"]) for r in self.truth["reads"]})
        return [*found[:40], ("customer", 150), ("customer", 999_999_999)]


@pytest.fixture(scope="module")
def month(pg_server: PgServerLike, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Month]:
    """Three days of 20 employees (about 4,000 statements), in a file and in PostgreSQL."""
    name = f"ag_month_{uuid.uuid4().hex[:10]}"
    with pg_server.admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        out = tmp_path_factory.mktemp("month")
        dsn = pg_server.dsn(name)
        truth = generate(out, statements=4000, employees_n=20, days=3, dsn=dsn)
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT max(id) FROM accessguard.events").fetchone()
        assert row is not None
        # the rollup holds two thirds of the month; the rest is read from the events table
        rolled = refresh(dsn, step=700, until=row[0] * 2 // 3)
        assert rolled.rows > 0
        trail = out / "trail.jsonl"
        yield Month(trail, dsn, truth, investigate.events_from_file(trail))
    finally:
        with pg_server.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(params=["index", "scan", "sink", "rollup"])
def engine(request: pytest.FixtureRequest, month: Month, tmp_path: Path) -> Iterator[Engine]:
    """Each engine over one month: the trail index, a DuckDB scan, the sink, its rollup."""
    if request.param in {"sink", "rollup"}:
        made: Engine = SinkEngine(month.dsn, rollup=request.param == "rollup")
        assert ("ledger_hours" in made.name) == (request.param == "rollup")
    else:
        made = open_engine(
            audit=month.trail, index=tmp_path / "index", use_index=request.param == "index"
        )
    yield made
    made.close()


class TestSameAnswers:
    @pytest.mark.db
    @pytest.mark.parametrize("window", list(WINDOWS), ids=list(WINDOWS))
    def test_who_read_equals_python(self, engine: Engine, month: Month, window: str) -> None:
        """who-read from each engine equals investigate.who_read over the same events."""
        events = month.within(WINDOWS[window])
        for scope, subject in month.subjects():
            got = who_read(engine, customer=subject, scope=scope, window=WINDOWS[window])
            want = investigate.who_read(events, customer=subject, scope=scope, since=None)
            assert got == want, (scope, subject)

    @pytest.mark.db
    @pytest.mark.parametrize("window", list(WINDOWS), ids=list(WINDOWS))
    def test_what_read_equals_python(self, engine: Engine, month: Month, window: str) -> None:
        """what-read from each engine equals investigate.what_read, for every employee."""
        events = month.within(WINDOWS[window])
        for user in [*month.truth["employees"], "nobody"]:
            got = what_read(engine, user=user, window=WINDOWS[window])
            assert got == investigate.what_read(events, user=user, since=None), user

    @pytest.mark.db
    def test_answers_equal_ground_truth(self, engine: Engine, month: Month) -> None:
        """Every (employee, ticket, subject) the generator made is answered with its true sums."""
        for read in month.truth["reads"]:
            rows = what_read(engine, user=read["user"], window=Window())
            [row] = [
                r for r in rows if r.customer == read["subject"] and r.ticket == read["ticket"]
            ]
            got = row.as_dict()
            for field in ("statements", "rows", "columns", "tables", "first", "last"):
                assert got[field] == read[field], (read["user"], read["ticket"], field)

    @pytest.mark.db
    def test_subject_export_entries_add_up(self, engine: Engine) -> None:
        """subject-export lists every entry in time order, summing to who-read's totals."""
        export = subject_export(engine, customer=150, window=Window())
        entries = list(export.entries)
        assert entries
        assert [e.first for e in entries] == sorted(e.first for e in entries if e.first)
        assert sum(e.statements for e in entries) == sum(r.statements for r in export.readers)
        assert sum(e.rows for e in entries) == sum(r.rows for r in export.readers)
        assert {e.user for e in entries} == {INSIDERS["canary_toucher"]}


class TestGroundTruth:
    def test_insiders_are_planted(self, month: Month) -> None:
        """The churner's tickets are self-assigned and short; only the toucher reads the canary."""
        tickets = month.truth["tickets"]
        churned = [
            t for t in tickets if t["assignee"] == INSIDERS["ticket_churner"] and t["self_assigned"]
        ]
        assert len(churned) >= 3
        assert all(t["closed"] - t["opened"] <= 11 * 60 for t in churned)
        canary = {r["user"] for r in month.truth["reads"] if r["subject"] == 150}
        assert canary == {INSIDERS["canary_toucher"]}
        rows = dict.fromkeys(month.truth["employees"], 0)
        for r in month.truth["reads"]:
            rows[r["user"]] += r["rows"]
        assert max(rows, key=lambda u: rows[u]) == INSIDERS["bulk_reader"]


class TestIndex:
    def test_appended_events_are_indexed_incrementally(self, month: Month, tmp_path: Path) -> None:
        """Events appended after the index was built are answered; older parts are kept."""
        trail = tmp_path / "trail.jsonl"
        trail.write_bytes(month.trail.read_bytes())
        shutil.copyfile(checkpoint_path(month.trail), checkpoint_path(trail))
        index = tmp_path / "trail.jsonl.index"
        open_engine(audit=trail).close()
        first = json.loads((index / "manifest.json").read_text())
        JsonlSink(trail, fsync=False).write([_ledger(user="zed", subject=150, statements=3)])
        engine = open_engine(audit=trail)
        try:
            rows = who_read(engine, customer=150, window=Window())
        finally:
            engine.close()
        after = json.loads((index / "manifest.json").read_text())
        assert after["parts"][: len(first["parts"])] == first["parts"]
        assert len(after["parts"]) == len(first["parts"]) + 1
        assert after["offset"] == trail.stat().st_size
        assert [r.statements for r in rows if r.user == "zed"] == [3]

    def test_a_rewritten_trail_is_indexed_again(self, month: Month, tmp_path: Path) -> None:
        """A trail replaced by other content is not answered from the stale index."""
        trail = tmp_path / "trail.jsonl"
        trail.write_bytes(month.trail.read_bytes())
        open_engine(audit=trail).close()
        trail.write_text("", encoding="utf-8")
        JsonlSink(trail, fsync=False).write([_ledger(user="zed", subject=150, statements=2)])
        engine = open_engine(audit=trail)
        try:
            rows = who_read(engine, customer=150, window=Window())
        finally:
            engine.close()
        assert [(r.user, r.statements) for r in rows] == [("zed", 2)]

    def test_parts_are_merged_and_answers_kept(self, tmp_path: Path) -> None:
        """Many small updates are merged into few parts; nothing is counted twice or lost."""
        trail = tmp_path / "trail.jsonl"
        sink = JsonlSink(trail, fsync=False)
        for n in range(12):
            sink.write([_ledger(user=f"u{n % 3}", subject=7, statements=n + 1)])
            open_engine(audit=trail).close()
        manifest = json.loads((tmp_path / "trail.jsonl.index" / "manifest.json").read_text())
        assert len(manifest["parts"]) <= 8
        engine = open_engine(audit=trail)
        try:
            rows = who_read(engine, customer=7, window=Window())
        finally:
            engine.close()
        assert rows == investigate.who_read(
            investigate.events_from_file(trail), customer=7, since=None
        )
        assert sum(r.statements for r in rows) == sum(range(1, 13))

    def test_a_torn_last_line_waits(self, tmp_path: Path) -> None:
        """A line still being written is not indexed until its newline arrives."""
        trail = tmp_path / "trail.jsonl"
        line = json.dumps(_ledger(user="zed", subject=7, statements=1))
        trail.write_text(line[:40], encoding="utf-8")
        engine = open_engine(audit=trail)
        assert who_read(engine, customer=7, window=Window()) == []
        engine.close()
        trail.write_text(line + "\n", encoding="utf-8")
        engine = open_engine(audit=trail)
        assert [r.user for r in who_read(engine, customer=7, window=Window())] == ["zed"]
        engine.close()


def _ledger(*, user: str, subject: object, statements: object, **extra: Any) -> dict[str, Any]:
    when = "2026-11-05T10:00:00.000000+00:00"
    event: dict[str, Any] = {
        "@timestamp": when,
        "event.action": "ledger",
        "user.name": user,
        "user.roles": ["everyone", "support_agent"],
        "accessguard.ticket.id": "T-9",
        "accessguard.ticket.kind": "order_issue",
        "accessguard.subject.kind": "customer",
        "accessguard.subject.id": subject,
        "accessguard.tables": ["customers"],
        "accessguard.columns": ["customers.name"],
        "accessguard.fingerprint": "f",
        "accessguard.statements": statements,
        "accessguard.rows": 1,
        "accessguard.first": when,
        "accessguard.last": when,
    }
    event.update(extra)
    return event


#: events the guard does not write, but a trail may hold: each engine reads them as Python does
ODD = [
    _ledger(user="odd", subject=42, statements=1.5),
    _ledger(user="odd", subject=42, statements=True),
    _ledger(user="odd", subject="42", statements=2, **{"accessguard.rows": "9"}),
    _ledger(user="odd", subject=42, statements=4, **{"accessguard.columns": "customers.name"}),
    _ledger(user="odd", subject=42, statements=5, **{"accessguard.ticket.id": None}),
    _ledger(user="odd", subject=42, statements=6, **{"accessguard.first": "garbage"}),
    _ledger(
        user="odd",
        subject=42,
        statements=7,
        **{"accessguard.last": "2026-11-06T09:00:00", "accessguard.first": "2026-11-01T00:00:00"},
    ),
    _ledger(user="odd", subject="ab" * 32, statements=8),
    _ledger(user="odd", subject=42, statements=12, **{"accessguard.columns": ["x", 1, True, None]}),
    _ledger(user="odd", subject=None, statements=9),
    _ledger(user="odd", subject=42, statements=10, **{"event.action": "query"}),
    _ledger(user="odd", subject=42, statements=11, **{"accessguard.subject.kind": "product"}),
]


@pytest.mark.db
@pytest.mark.parametrize("where", ["file", "sink"])
def test_odd_events_read_as_python_reads_them(
    where: str, scenario_dsn: str, tmp_path: Path
) -> None:
    """Floats, booleans, strings, missing times, pseudonyms: the engines agree with Python."""
    events = [dict(e) for e in ODD]
    if where == "file":
        trail = tmp_path / "odd.jsonl"
        JsonlSink(trail, fsync=False).write(events)
        engine = open_engine(audit=trail)
        stored = investigate.events_from_file(trail)
    else:
        pg = PostgresSink(scenario_dsn)
        pg.setup()
        pg.write(events)
        pg.close()
        engine = open_engine(dsn=scenario_dsn)
        stored = events
    try:
        for window in WINDOWS.values():
            mine = [e for e in stored if window.holds(investigate.event_time(e))]
            assert what_read(engine, user="odd", window=window) == investigate.what_read(
                mine, user="odd", since=None
            )
            for scope in ("customer", "product"):
                assert who_read(
                    engine, customer=42, scope=scope, window=window
                ) == investigate.who_read(mine, customer=42, scope=scope, since=None)
    finally:
        engine.close()


class TestCommand:
    def _run(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    def test_who_read_json_is_the_python_answer(
        self, month: Month, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`audit who-read --format json` prints investigate's rows, from the engine."""
        code, out, err = self._run(
            capsys,
            "audit",
            "who-read",
            "--audit",
            str(month.trail),
            "--customer",
            "150",
            "--format",
            "json",
        )
        want = investigate.who_read(month.events, customer=150, since=None)
        assert code == 0
        assert json.loads(out) == [r.as_dict() for r in want]
        assert "not installed" not in err

    def test_from_until_bound_what_read(
        self, month: Month, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--from/--until take ISO dates: a day's reads only, the same as Python's."""
        user = INSIDERS["heavy_reader"]
        code, out, _ = self._run(
            capsys,
            "audit",
            "what-read",
            "--audit",
            str(month.trail),
            "--user",
            user,
            "--from",
            "2026-11-03",
            "--until",
            "2026-11-04",
            "--format",
            "json",
        )
        events = month.within(WINDOWS["day-2"])
        assert code == 0
        assert json.loads(out) == [
            r.as_dict() for r in investigate.what_read(events, user=user, since=None)
        ]

    def test_without_duckdb_it_says_so_and_answers_the_same(
        self, month: Month, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With DuckDB missing the old path answers, and stderr says it reads the whole trail."""
        argv = ["audit", "who-read", "--audit", str(month.trail), "--customer", "150"]
        _, engine_out, _ = self._run(capsys, *argv)
        monkeypatch.setattr(command_module, "available", lambda: False)
        code, out, err = self._run(capsys, *argv)
        assert code == 0
        assert out == engine_out
        assert "DuckDB is not installed" in err

    @pytest.mark.db
    def test_subject_export_json_and_html(
        self, month: Month, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        """subject-export: the file and the sink export the same document; HTML is written."""
        docs = []
        for source in (["--audit", str(month.trail)], ["--dsn", month.dsn]):
            code, out, _ = self._run(
                capsys, "audit", "subject-export", *source, "--customer", "150", "--format", "json"
            )
            assert code == 0
            docs.append(json.loads(out))
        assert docs[0] == docs[1]
        assert docs[0]["readers"][0]["user"] == INSIDERS["canary_toucher"]
        page = tmp_path / "export.html"
        code, _, _ = self._run(
            capsys,
            "audit",
            "subject-export",
            "--dsn",
            month.dsn,
            "--customer",
            "150",
            "--format",
            "html",
            "--out",
            str(page),
        )
        assert code == 0
        assert INSIDERS["canary_toucher"] in page.read_text(encoding="utf-8")

    def test_a_bad_date_is_a_usage_error(
        self, month: Month, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--from that is not ISO 8601 exits 2 and names the problem."""
        code, _, err = self._run(
            capsys,
            "audit",
            "who-read",
            "--audit",
            str(month.trail),
            "--customer",
            "1",
            "--from",
            "last tuesday",
        )
        assert code == 2
        assert "ISO 8601" in err


def test_text_export_streams(month: Month) -> None:
    """The text export writes one line per entry after the readers table."""
    args = type("A", (), {"format": "text", "out": None})()
    engine = open_engine(audit=month.trail, use_index=False)
    try:
        export = subject_export(engine, customer=150, window=Window())
        buffer = io.StringIO()
        command_module.write_export(export, args, buffer)
    finally:
        engine.close()
    text = buffer.getvalue()
    assert text.startswith("customer 150: read by")
    assert text.count(INSIDERS["canary_toucher"]) >= 2


def test_an_index_that_cannot_be_kept_falls_back_to_a_scan(
    month: Month, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Where the index cannot be written, the trail is scanned, the same answer, and it says so."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("", encoding="utf-8")
    argv = ["audit", "who-read", "--audit", str(month.trail), "--customer", "150"]
    assert main([*argv, "--index", str(blocker / "index")]) == 0
    out, err = capsys.readouterr()
    assert "cannot keep the index" in err
    assert main([*argv, "--no-index"]) == 0
    assert capsys.readouterr().out == out
