"""Alerts and peer baselines on a small month generated through the real guard (issue 20).

The month (benchmarks/month.py, ``--scale small``) is written to a JSON-lines
trail and the PostgreSQL sink; the alert rules must single out its planted
insiders and no one else, and every engine must sum the same hours and days.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from casefiles import PgServerLike
from psycopg import sql

from accessguard.audit.sinks import Event
from accessguard.investigate import Engine, Window, open_engine, peer_baselines
from accessguard.investigate.baselines import Collector
from accessguard.investigate.report import write_report
from accessguard.investigate.sink import SinkEngine

# ---------------------------------------------------------------------- the month


@dataclass(frozen=True, slots=True)
class Month:
    out: Path
    dsn: str
    truth: dict[str, Any]
    seconds: float

    def events(self) -> list[Event]:
        with (self.out / "trail.jsonl").open(encoding="utf-8") as fh:
            return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def month(pg_server: PgServerLike, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Month]:
    """The small month (60,000 statements, 20 employees, 3 days) in a file and in PostgreSQL."""
    from benchmarks.month import SCALES, generate, month_doses

    name = f"ag_alerts_{uuid.uuid4().hex[:10]}"
    with pg_server.admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        out = tmp_path_factory.mktemp("month")
        statements, employees, days = SCALES["small"]
        started = time.perf_counter()
        truth = generate(
            out,
            statements=statements,
            employees_n=employees,
            days=days,
            doses=month_doses(days),
            dsn=pg_server.dsn(name),
        )
        yield Month(out, pg_server.dsn(name), truth, time.perf_counter() - started)
    finally:
        with pg_server.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


class TestMonth:
    @pytest.mark.db
    def test_the_rules_single_out_the_planted_insiders(self, month: Month) -> None:
        """A small month through the real guard: every insider flagged, and no one else."""
        assert month.seconds < 60
        truth = month.truth
        scored = truth["alerts"]
        assert scored["precision"] == 1.0
        assert scored["recall"] == 1.0
        assert sorted(scored["flagged"]) == sorted(truth["insiders"].values())
        assert "ticket_churn" in scored["insiders"]["ticket_churner"]["rules"]
        assert "canary_touch" in scored["insiders"]["canary_toucher"]["rules"]
        for insider in scored["insiders"].values():  # while they act: within their first day
            assert insider["minutes_to_first_alert"] < 24 * 60
        trail = month.events()
        assert sum(e["event.action"] == "alert" for e in trail) == scored["alerts"]
        closed = [e for e in trail if e["event.action"] == "ticket.closed"]
        assert len(closed) == len(truth["tickets"])

    @pytest.mark.db
    @pytest.mark.parametrize("kind", ["index", "scan", "sink"])
    def test_engines_sum_the_same_hours_and_days(
        self, month: Month, kind: str, tmp_path: Path
    ) -> None:
        """Each engine's hourly and daily rows equal those summed in Python from the same trail."""
        want = Collector()
        for event in month.events():
            want.add(event)
        if kind == "sink":
            engine: Engine = SinkEngine(month.dsn, rollup=False)
        else:
            engine = open_engine(
                audit=month.out / "trail.jsonl", index=tmp_path / "ix", use_index=kind == "index"
            )
        try:
            for unit in ("hour", "day"):
                got = engine.buckets(Window(), unit)
                assert got == want.buckets(unit), unit
                assert len(got) > 50
        finally:
            engine.close()

    @pytest.mark.db
    def test_baselines_single_out_the_volume_insiders(self, month: Month) -> None:
        """Peer baselines flag the bulk and heavy readers and the churner, and no one else."""
        engine = SinkEngine(month.dsn, rollup=False)
        try:
            found = peer_baselines(engine, window=Window())
        finally:
            engine.close()
        insiders = month.truth["insiders"]
        flagged = {b.user for b in found if b.outlier}
        assert flagged == {
            insiders["bulk_reader"],
            insiders["heavy_reader"],
            insiders["ticket_churner"],
        }
        bulk = next(b for b in found if b.user == insiders["bulk_reader"])
        assert bulk.rows_ratio is not None
        assert bulk.rows_ratio >= 3
        assert found[0].outlier  # outliers first

    @pytest.mark.db
    def test_the_report_shows_peers_alerts_and_churn(self, month: Month, tmp_path: Path) -> None:
        """The report's peers section names the outliers, the alerts and the short tickets."""
        out = tmp_path / "report.html"
        write_report(month.events(), out)
        page = out.read_text(encoding="utf-8")
        section = page[page.index('<section id="peers">') :]
        section = section[: section.index("</section>")]
        churner = month.truth["insiders"]["ticket_churner"]
        assert f"{churner} (far above peers)" in section
        assert "canary_touch" in section
        assert "ticket_churn" in section
        row = section[section.index(f"{churner} (far above peers)") :]
        row = row[: row.index("</tr>")]
        mine = sum(
            1 for t in month.truth["tickets"] if t["self_assigned"] and t["assignee"] == churner
        )
        assert f"{mine:,} of" in row
        peer = month.truth["insiders"]["bulk_reader"]
        row = section[section.index(f"{peer} (far above peers)") :]
        assert '<td class="n">0 of' in row[: row.index("</tr>")]
