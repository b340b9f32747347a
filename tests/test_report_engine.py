"""The access report served by the engines, on a small month generated through the real guard.

The month (benchmarks/month.py, ``--scale small``) is written to a JSON-lines
trail and to the PostgreSQL sink. Each engine (DuckDB over the trail's index,
DuckDB scanning the trail, SQL over the sink) must give the summary the
in-Python ``summarize`` gives for the same events, and the page
``write_report`` draws; ``accessguard audit report`` must use that path (it
never loads the trail into Python) and the page must render in headless
chromium with every section.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from casefiles import PgServerLike
from psycopg import sql
from test_report import console_messages, outlier_rows, run_chromium

from accessguard.audit.sinks import Event
from accessguard.cli.app import main
from accessguard.investigate import Engine, open_engine
from accessguard.investigate import sums as investigate
from accessguard.investigate.report import write_report
from accessguard.investigate.report_engine import engine_summary, write_engine_report
from accessguard.investigate.rollup import refresh
from accessguard.investigate.sink import SinkEngine
from accessguard.investigate.summary import summarize
from accessguard.investigate.trail_others import Others

GENERATED = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
SECTIONS = (
    "outliers",
    "volume",
    "employees",
    "refusals",
    "throttles",
    "watch",
    "readers",
    "peers",
)


@dataclass(frozen=True, slots=True)
class Month:
    out: Path
    dsn: str
    truth: dict[str, Any]

    @property
    def trail(self) -> Path:
        return self.out / "trail.jsonl"

    def events(self) -> list[Event]:
        with self.trail.open(encoding="utf-8") as fh:
            return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def month(pg_server: PgServerLike, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Month]:
    """The small month (60,000 statements, 20 employees, 3 days) in a file and in PostgreSQL."""
    from benchmarks.month import SCALES, generate, month_doses

    name = f"ag_report_{uuid.uuid4().hex[:10]}"
    with pg_server.admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        out = tmp_path_factory.mktemp("month")
        statements, employees, days = SCALES["small"]
        truth = generate(
            out,
            statements=statements,
            employees_n=employees,
            days=days,
            doses=month_doses(days),
            dsn=pg_server.dsn(name),
        )
        yield Month(out, pg_server.dsn(name), truth)
    finally:
        with pg_server.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def engine_of(month: Month, kind: str, tmp_path: Path) -> Engine:
    if kind == "sink":
        return SinkEngine(month.dsn, rollup=False)
    if kind == "rollup":
        # the rollup holds the first two thirds of the month (the same two thirds every
        # time: a refresh up to where it already is adds nothing); the rest is the tail
        with psycopg.connect(month.dsn) as conn:
            row = conn.execute("SELECT max(id) FROM accessguard.events").fetchone()
        assert row is not None
        refresh(month.dsn, step=5_000, until=row[0] * 2 // 3)
        engine = SinkEngine(month.dsn)
        assert "ledger_hours" in engine.name
        return engine
    return open_engine(audit=month.trail, index=tmp_path / "ix", use_index=kind == "index")


KINDS = ["index", "scan", "sink", "rollup"]


@pytest.mark.db
class TestSameAsPython:
    @pytest.mark.parametrize("kind", KINDS)
    def test_summary(self, month: Month, kind: str, tmp_path: Path) -> None:
        """Each engine's summary equals ``summarize`` over the same events (the whole month)."""
        want = summarize(month.events(), since=None)
        assert want.statements > 50_000
        assert want.refusals > 0
        assert want.watch
        assert len(want.top_customers) == 20
        engine = engine_of(month, kind, tmp_path)
        try:
            got = engine_summary(engine, since=None)
        finally:
            engine.close()
        assert got == want

    @pytest.mark.parametrize("kind", KINDS)
    def test_summary_since(self, month: Month, kind: str, tmp_path: Path) -> None:
        """With a cutoff in the middle of the month, the engines still agree with Python."""
        events = month.events()
        start = summarize(events, since=None).start
        assert start is not None
        since = start + dt.timedelta(days=1, hours=3, minutes=17)
        want = summarize(events, since=since)
        engine = engine_of(month, kind, tmp_path)
        try:
            got = engine_summary(engine, since=since)
        finally:
            engine.close()
        assert got == want
        assert got.statements < summarize(events, since=None).statements

    @pytest.mark.parametrize("kind", KINDS)
    def test_page(self, month: Month, kind: str, tmp_path: Path) -> None:
        """The page drawn from an engine is the page drawn from the events, byte for byte."""
        want, got = tmp_path / "python.html", tmp_path / "engine.html"
        write_report(month.events(), want, generated=GENERATED)
        engine = engine_of(month, kind, tmp_path)
        try:
            write_engine_report(engine, got, generated=GENERATED)
        finally:
            engine.close()
        page = got.read_text(encoding="utf-8")
        assert page == want.read_text(encoding="utf-8")
        churner = month.truth["insiders"]["ticket_churner"]
        assert f"{churner} (far above peers)" in page


@pytest.mark.db
class TestOthers:
    def test_kept_beside_the_index_and_brought_up_to_date(
        self, month: Month, tmp_path: Path
    ) -> None:
        """The side store holds every non-ledger event once, and follows an appended trail."""
        trail = tmp_path / "trail.jsonl"
        lines = month.trail.read_bytes().splitlines(keepends=True)
        half = len(lines) // 2
        trail.write_bytes(b"".join(lines[:half]))
        side = Others(trail, tmp_path / "ix")
        side.update()
        first = [e["event.hash"] for e in side.read()]
        with trail.open("ab") as fh:
            fh.write(b"".join(lines[half:]))
        side.update()
        every = [e["event.hash"] for e in side.read()]
        want = [e["event.hash"] for e in month.events() if e["event.action"] != "ledger"]
        assert every == want
        assert first == want[: len(first)]
        assert 0 < len(first) < len(want)
        trail.write_bytes(b"".join(lines[1:]))  # the head changed: copied again from the start
        side.update()
        assert [e["event.hash"] for e in side.read()] == [
            json.loads(line)["event.hash"]
            for line in lines[1:]
            if json.loads(line)["event.action"] != "ledger"
        ]


@pytest.mark.db
class TestCommand:
    @pytest.mark.parametrize("source", ["audit", "dsn"])
    def test_report_never_loads_the_trail(
        self, month: Month, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``audit report`` answers from the engine: the in-Python reader and writer are unused."""

        def refuse(*_args: object, **_kwargs: object) -> None:
            raise AssertionError("the report loaded the trail into Python")

        monkeypatch.setattr(investigate, "verified_events", refuse)
        monkeypatch.setattr("accessguard.investigate.report.write_report", refuse)
        out = tmp_path / "report.html"
        where = str(month.trail) if source == "audit" else month.dsn
        started = time.perf_counter()
        assert main(["audit", "report", f"--{source}", where, "--out", str(out)]) == 0
        assert time.perf_counter() - started < 30
        page = out.read_text(encoding="utf-8")
        insiders = month.truth["insiders"]
        assert set(outlier_rows(page)) >= {insiders["bulk_reader"], insiders["heavy_reader"]}

    def test_page_renders_in_chromium(self, month: Month, tmp_path: Path) -> None:
        """The month's report from the engine path: chromium builds every section, no errors."""
        page = tmp_path / "report.html"
        assert main(["audit", "report", "--audit", str(month.trail), "--out", str(page)]) == 0
        shot = tmp_path / "shot.png"
        done = run_chromium(tmp_path, page, f"--screenshot={shot}", "--window-size=1280,4000")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert console_messages(done.stderr) == []
        done = run_chromium(tmp_path, page, "--dump-dom")
        dom = done.stdout
        for key in SECTIONS:
            assert re.search(rf'<section id="{key}"><h2>[^<]+</h2>', dom), key
        assert dom.count("<svg") >= 6
        assert "<polyline" in dom
        employees = dom[dom.index('<table class="employees">') :]
        employees = employees[: employees.index("</table>")]
        assert employees.count("<tr ") == len(summarize(month.events(), since=None).employees)
        insiders = month.truth["insiders"]
        for who in ("bulk_reader", "heavy_reader"):
            assert re.search(
                rf'data-user="{insiders[who]}"><td>{insiders[who]}<span class="badge">', dom
            )
        assert console_messages(done.stderr) == []

    def test_broken_trail_fails(self, month: Month, tmp_path: Path) -> None:
        """A trail whose chain is broken still fails the command (exit 1); the page is written."""
        trail = tmp_path / "trail.jsonl"
        lines = month.trail.read_text(encoding="utf-8").splitlines(keepends=True)
        at = next(i for i, line in enumerate(lines) if '"accessguard.rows":1,' in line)
        lines[at] = lines[at].replace('"accessguard.rows":1,', '"accessguard.rows":2,', 1)
        trail.write_text("".join(lines), encoding="utf-8")
        out = tmp_path / "report.html"
        assert main(["audit", "report", "--audit", str(trail), "--out", str(out)]) == 1
        assert out.exists()
