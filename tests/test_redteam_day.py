"""Red team of the day's features on the real PostgreSQL: what an insider can still do.

Each ``xfail(strict=True)`` test is a finding: it asserts the safe behaviour and
fails today (a leak, a write or a tampering not detected). The others are
attacks that are properly refused, kept as regression tests.

Alice works T-100 (order_issue, customer 42: orders and payments 421-423);
customer 7 has orders 71-73 (T-101, closed).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import psycopg
import pytest
from maskcases import CLEAR, KEY, masked_policies
from test_investigate import KEY as AUDIT_KEY
from test_investigate import workload

from accessguard import AccessGuardError, Guard, scenario
from accessguard.audit.chain import KEY_ENV
from accessguard.audit.pgsink import PostgresSink
from accessguard.audit.sinks import JsonlSink
from accessguard.cli.app import main
from accessguard.engine.breakglass import Scope
from accessguard.testing import MemoryAuditSink

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.db

REASON = "customer 42 locked out during a live outage, INC-7"


def _who_read(source: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """``audit who-read --customer 42``: (exit code, the users it names)."""
    capsys.readouterr()
    code = main(["audit", "who-read", *source, "--customer", "42", "--format", "json"])
    out = capsys.readouterr().out
    return code, [row["user"] for row in json.loads(out)]


# ---------------------------------------------------------------------- 4. resumed verification


class TestDerivedStoresOfTheTrail:
    """who-read verifies the chain, then answers from a store the chain does not cover."""

    @pytest.mark.xfail(
        strict=True,
        reason="who-read answers from TRAIL.index/*.parquet, which no MAC covers: a rewritten "
        "part hides a reader while the trail verifies and the command exits 0",
    )
    def test_rewritten_index_part_hides_a_reader(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setenv(KEY_ENV, AUDIT_KEY.hex())
        trail = tmp_path / "audit.jsonl"
        JsonlSink(trail, key=AUDIT_KEY, fsync=False).write([dict(e) for e in workload()])
        assert _who_read(["--audit", str(trail)], capsys) == (0, ["alice", "erin"])
        parts = sorted((tmp_path / "audit.jsonl.index").glob("*.parquet"))
        assert parts
        con = duckdb.connect()
        for part in parts:  # the insider's edit: alice's ledger rows removed, nothing else
            rewritten = part.with_suffix(".new")
            con.execute(
                f"COPY (SELECT * FROM read_parquet('{part}') WHERE user_name <> 'alice') "  # noqa: S608
                f"TO '{rewritten}' (FORMAT parquet)"
            )
            rewritten.replace(part)
        con.close()
        code, users = _who_read(["--audit", str(trail)], capsys)
        assert code != 0 or "alice" in users

    @pytest.mark.xfail(
        strict=True,
        reason="who-read --dsn answers whole hours from accessguard.ledger_hours, which no MAC "
        "covers: a DELETE there hides a reader while the events verify and the command exits 0",
    )
    def test_edited_rollup_hides_a_reader(
        self,
        scenario_dsn: str,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.setenv(KEY_ENV, AUDIT_KEY.hex())
        sink = PostgresSink(scenario_dsn, key=AUDIT_KEY)
        sink.setup()
        sink.write([dict(e) for e in workload()])
        sink.close()
        assert main(["audit", "index", "--dsn", scenario_dsn]) == 0
        assert _who_read(["--dsn", scenario_dsn], capsys) == (0, ["alice", "erin"])
        with psycopg.connect(scenario_dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM accessguard.ledger_hours WHERE user_name = 'alice'")
        code, users = _who_read(["--dsn", scenario_dsn], capsys)
        assert code != 0 or "alice" in users

    def test_an_edited_event_behind_the_rollup_still_fails(
        self,
        scenario_dsn: str,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Editing the events themselves (behind a mark and a rollup) is caught."""
        monkeypatch.setenv(KEY_ENV, AUDIT_KEY.hex())
        sink = PostgresSink(scenario_dsn, key=AUDIT_KEY)
        sink.setup()
        sink.write([dict(e) for e in workload()])
        sink.close()
        assert main(["audit", "index", "--dsn", scenario_dsn]) == 0
        assert _who_read(["--dsn", scenario_dsn], capsys)[0] == 0  # leaves a mark
        with psycopg.connect(scenario_dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE accessguard.events SET event = jsonb_set(event, '{user.name}', "
                "'\"bob\"') WHERE user_name = 'alice'"
            )
        assert _who_read(["--dsn", scenario_dsn], capsys)[0] == 1
