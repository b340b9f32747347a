"""Red team of the day's features on the real PostgreSQL: what an insider can still do.

Each ``xfail(strict=True)`` test is a finding: it asserts the safe behaviour and
fails today (a leak, a write or a tampering not detected). The others are
attacks that are properly refused, kept as regression tests.

Alice works T-100 (order_issue, customer 42: orders and payments 421-423);
customer 7 has orders 71-73 (T-101, closed).
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
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
from accessguard.engine import probes
from accessguard.engine.breakglass import Scope
from accessguard.testing import MemoryAuditSink
from accessguard.tickets.elevations import ElevationRecord, RedisElevationStore

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

    def test_rewritten_index_part_hides_a_reader(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A rewritten index part is noticed (the keyed manifest names each part's digest) and
        the index rebuilt from the verified trail: alice is still listed (found by the red
        team)."""
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
                f"COPY (SELECT * FROM read_parquet('{part}') WHERE user_name <> 'alice') "
                f"TO '{rewritten}' (FORMAT parquet)"
            )
            rewritten.replace(part)
        con.close()
        code, users = _who_read(["--audit", str(trail)], capsys)
        assert code != 0 or "alice" in users

    def test_edited_rollup_hides_a_reader(
        self,
        scenario_dsn: str,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A DELETE in the keyed rollup breaks its MAC: who-read answers from the verified
        events and alice is still listed (found by the red team)."""
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

    def test_tail_cut_behind_the_mark_with_an_old_checkpoint(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A trail cut back before the mark, with the checkpoint of that time put back, fails:
        the mark vouches for more events than the trail holds (found by the red team)."""
        monkeypatch.setenv(KEY_ENV, AUDIT_KEY.hex())
        trail = tmp_path / "audit.jsonl"
        events = [dict(e) for e in workload()]
        JsonlSink(trail, key=AUDIT_KEY, fsync=False).write(
            [e for e in events if e["user.name"] != "alice"]
        )
        assert _who_read(["--audit", str(trail)], capsys) == (0, ["erin"])
        size, checkpoint = trail.stat().st_size, tmp_path / "audit.jsonl.checkpoint"
        saved = checkpoint.read_bytes()  # the insider keeps a copy
        JsonlSink(trail, key=AUDIT_KEY, fsync=False).write(
            [e for e in events if e["user.name"] == "alice"]
        )
        assert _who_read(["--audit", str(trail)], capsys) == (0, ["alice", "erin"])  # marked
        with trail.open("r+b") as fh:
            fh.truncate(size)
        checkpoint.write_bytes(saved)
        code, users = _who_read(["--audit", str(trail)], capsys)
        assert code != 0 or "alice" in users

    def test_rows_cut_behind_the_pg_mark_with_their_checkpoint(
        self,
        scenario_dsn: str,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Rows after an earlier checkpoint, deleted with their checkpoints, fail: the
        investigator's mark vouched for them (found by the red team)."""
        monkeypatch.setenv(KEY_ENV, AUDIT_KEY.hex())
        events = [dict(e) for e in workload()]
        sink = PostgresSink(scenario_dsn, key=AUDIT_KEY)
        sink.setup()
        sink.write([e for e in events if e["user.name"] != "alice"])
        sink.write([e for e in events if e["user.name"] == "alice"])
        sink.close()
        assert _who_read(["--dsn", scenario_dsn], capsys) == (0, ["alice", "erin"])  # marked
        with psycopg.connect(scenario_dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM accessguard.events WHERE user_name = 'alice'")
            conn.execute(
                "DELETE FROM accessguard.checkpoints WHERE id > (SELECT min(id) FROM "
                "accessguard.checkpoints)"
            )
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


# ---------------------------------------------------------------------- 1. row scope


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scenario's policies without limits, plus break-glass rules for support agents."""
    path: Path = tmp_path_factory.mktemp("redteam") / "policies"
    shutil.copytree(scenario.policies_dir(), path)
    (path / "limits.toml").unlink()
    rules = ("customers.id", "customers.phone", "orders.id", "orders.customer_id", "orders.status")
    with (path / "policy.csv").open("a", encoding="utf-8") as f:
        f.writelines(f"p, support_agent, break_glass, {rule}, read\n" for rule in rules)
    return path


@pytest.fixture(scope="module")
def plain(policies: Path) -> Iterator[Guard]:
    with Guard.from_directory(
        policies, tickets=scenario.tickets(), audit=MemoryAuditSink()
    ) as guard:
        yield guard


def _outcome(guard: Guard, dsn: str, sql: str, user: str = "alice", ticket: str = "T-100") -> Any:
    """The rows of ``sql`` (rolled back), or the refusal's reason code."""
    with guard.connect(dsn, user=user, ticket=ticket) as conn:
        try:
            with conn.transaction(force_rollback=True):
                cur = conn.execute(sql)
                return cur.fetchall() if cur.description else cur.rowcount
        except AccessGuardError as exc:
            return str(exc.reason)


REFUSED_ROW_ATTACKS = {
    "self-join-or": "SELECT o.id FROM orders o JOIN orders o2 ON o2.id = o.id "
    "WHERE o2.customer_id = 42 OR o.id = 71",
    "union-in-in": "SELECT p.id FROM payments p WHERE p.order_id IN "
    "(SELECT id FROM orders WHERE customer_id = 42 UNION SELECT 71)",
    "union-derived": "SELECT c.id, c.email FROM (SELECT o.customer_id FROM orders o "
    "WHERE o.customer_id = 42 UNION SELECT 7) x JOIN customers c ON c.id = x.customer_id",
    "left-on-or": "SELECT c.email FROM orders o LEFT JOIN customers c "
    "ON o.customer_id = c.id OR c.id = 7 WHERE o.customer_id = 42",
    "full-join": "SELECT c.email FROM orders o FULL JOIN customers c "
    "ON o.customer_id = c.id WHERE o.customer_id = 42",
    "renamed-cte": "WITH o AS (SELECT id AS customer_id FROM orders WHERE customer_id = 42) "
    "SELECT c.email FROM customers c JOIN o ON o.customer_id = c.id",
    "lateral": "SELECT c.email FROM customers c, LATERAL (SELECT o.customer_id FROM orders o "
    "WHERE o.customer_id = 42) x WHERE x.customer_id = c.id",
    "correlated-plus-zero": "SELECT o.id, (SELECT c.email FROM customers c "
    "WHERE c.id = o.customer_id + 0) FROM orders o WHERE o.customer_id = 42",
    "scalar-key-other": "SELECT c.email FROM customers c "
    "WHERE c.id = (SELECT customer_id FROM orders WHERE id = 71)",
    "update-from": "UPDATE orders SET status = 'x' FROM payments p "
    "WHERE p.order_id = orders.id AND p.customer_id = 42",
    "update-in-or": "UPDATE orders SET status = 'x' WHERE id IN "
    "(SELECT order_id FROM payments WHERE customer_id = 42 OR order_id = 71)",
    "returning-other": "UPDATE orders SET status = 'x' WHERE customer_id = 42 "
    "RETURNING (SELECT email FROM customers WHERE id = 7)",
}


@pytest.mark.parametrize("sql", REFUSED_ROW_ATTACKS.values(), ids=REFUSED_ROW_ATTACKS.keys())
def test_row_scope_attacks_are_refused(plain: Guard, scenario_dsn: str, sql: str) -> None:
    """Each reaches (or could reach) customer 7's rows: refused, never run."""
    assert _outcome(plain, scenario_dsn, sql) in {
        "row_scope.unbound",
        "row_scope.other_subject",
        "sql.unanalyzable",
    }


def test_payment_moved_between_probe_and_statement_is_trimmed(
    plain: Guard, scenario_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """READ COMMITTED: customer 7's payment 71 moved onto order 421 once the relation probe
    has passed (a concurrent commit) is still filtered out by the second wall."""
    passed = probes.run_batch

    def then_move(guard: Any, batch: Any, connection: Any, *, qmark: bool = False) -> None:
        passed(guard, batch, connection, qmark=qmark)
        with psycopg.connect(scenario_dsn, autocommit=True) as other:
            other.execute("UPDATE payments SET order_id = 421 WHERE id = 71")

    monkeypatch.setattr(probes, "run_batch", then_move)
    sql = (
        "SELECT p.id, p.customer_id, p.card_last4 FROM orders o JOIN payments p "
        "ON p.order_id = o.id WHERE o.customer_id = 42 ORDER BY p.id"
    )
    rows = _outcome(plain, scenario_dsn, sql)
    with psycopg.connect(scenario_dsn) as check:
        moved = check.execute("SELECT order_id FROM payments WHERE id = 71").fetchone()
    assert moved == (421,)  # the race happened
    assert [r[:2] for r in rows] == [(421, 42), (422, 42), (423, 42)]


# ---------------------------------------------------------------------- 2. masked columns


@pytest.fixture(scope="module")
def masked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guard]:
    policies = masked_policies(tmp_path_factory.mktemp("redteam-mask") / "policies")
    with Guard.from_directory(
        policies,
        tickets=scenario.tickets(),
        audit=MemoryAuditSink(),
        ledger_pseudonym_key=KEY,
    ) as guard:
        yield guard


MASK_ATTACKS = {
    "update-where-oracle": "UPDATE customers SET phone = phone "
    "WHERE id = 42 AND phone LIKE '+1-555%'",
    "copy-email-into-phone": "UPDATE customers SET phone = email WHERE id = 42",
    "whole-row-text": "UPDATE customers SET phone = '1' "
    "WHERE id = 42 AND customers::text LIKE '%c0042%'",
    "returning-star": "UPDATE customers SET phone = '1' WHERE id = 42 RETURNING *",
    "cast-error": "SELECT id FROM customers WHERE id = 42 AND CAST(email AS int) = 1",
    "like-oracle": "SELECT id FROM customers WHERE id = 42 AND email LIKE 'c0042%'",
    "range-oracle": "SELECT id FROM customers WHERE id = 42 AND phone > '+1-555-0041'",
    "position-oracle": "SELECT id FROM customers WHERE id = 42 AND position('0042' in email) > 0",
    "using-oracle": "SELECT id FROM customers JOIN (VALUES ('c0042@mail.example')) v(email) "
    "USING (email) WHERE id = 42",
    "materialized-cte": "WITH x AS MATERIALIZED (SELECT email, phone FROM customers "
    "WHERE id = 42) SELECT * FROM x",
}


@pytest.mark.parametrize("sql", MASK_ATTACKS.values(), ids=MASK_ATTACKS.keys())
def test_masked_columns_give_nothing_clear(masked: Guard, scenario_dsn: str, sql: str) -> None:
    """Refused, or an answer (rows, or an error's words) computed on the masked value only."""
    with masked.connect(scenario_dsn, user="alice", ticket="T-100") as conn:
        try:
            with conn.transaction(force_rollback=True):
                cur = conn.execute(sql)
                seen = repr(cur.fetchall() if cur.description else cur.rowcount)
        except (AccessGuardError, psycopg.Error) as exc:
            seen = str(exc)
    for clear in CLEAR:
        assert clear not in seen
    assert seen not in {"[(42,)]", "1"}  # no oracle matched the clear value


# ---------------------------------------------------------------------- 3. break-glass


def test_named_cursor_stops_at_revocation(plain: Guard, scenario_dsn: str) -> None:
    """A server-side cursor fetches nothing more once its elevation is revoked."""
    elevation = plain.break_glass("alice", Scope(customer_id=43), 30, REASON)
    with plain.connect(scenario_dsn, user="alice", ticket=elevation.ticket) as conn:
        with conn.transaction(force_rollback=True):
            cur = conn.cursor(name="rt_cursor")
            cur.execute("SELECT o.id, o.status FROM orders o WHERE o.customer_id = 43")
            assert cur.fetchone() is not None
            elevation.revoke(by="security")
            try:
                after = cur.fetchall()
            except AccessGuardError:
                after = []
            finally:
                cur.close()
        assert after == []


@pytest.mark.parametrize(
    ("user", "forged"),
    [
        pytest.param("bob", False, id="another-employee"),
        pytest.param("mallory", False, id="another-agent"),
        pytest.param("alice", True, id="forged-id"),
    ],
)
def test_an_elevation_is_its_owner_s_and_cannot_be_forged(
    plain: Guard, scenario_dsn: str, user: str, *, forged: bool
) -> None:
    elevation = plain.break_glass("alice", Scope(customer_id=43), 30, REASON)
    ticket = elevation.ticket.upper() if forged else elevation.ticket
    sql = "SELECT id, phone FROM customers WHERE id = 43"
    assert _outcome(plain, scenario_dsn, sql, user, ticket) in {
        "ticket.not_assigned",
        "ticket.unknown",
    }


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id, phone FROM customers WHERE id = 42",
        (
            "SELECT o.id, c.phone FROM orders o JOIN customers c ON c.id = o.customer_id "
            "WHERE o.id = 421"
        ),
        "SELECT id, email FROM customers WHERE id = 43",
        "UPDATE orders SET status = 'x' WHERE customer_id = 43",
    ],
)
def test_an_elevation_reaches_its_scope_and_rules_only(
    plain: Guard, scenario_dsn: str, sql: str
) -> None:
    """Another customer (by value or through a key), a column or a write its rules lack."""
    elevation = plain.break_glass("alice", Scope(customer_id=43), 30, REASON)
    assert _outcome(plain, scenario_dsn, sql, "alice", elevation.ticket) in {
        "row_scope.other_subject",
        "ticket.wrong_kind",
    }


def test_a_record_written_into_the_store_is_no_elevation(
    policies: Path, redis_url: str, scenario_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the audit key, elevation records in Redis are MAC'd: one written straight into the
    store by someone without the key is refused (found by the red team)."""
    monkeypatch.setenv(KEY_ENV, AUDIT_KEY.hex())
    now = dt.datetime.now(dt.UTC).timestamp()
    forged = ElevationRecord(
        id=f"BG-{secrets.token_hex(8)}",
        user="alice",
        kind="break_glass",
        customer_id=43,
        product_id=None,
        reason=REASON,
        opened=now,
        expires=now + 3600,
    )
    RedisElevationStore(redis_url).put(forged)  # the insider's SET, no guard involved
    with Guard.from_directory(
        policies, tickets=scenario.tickets(), audit=MemoryAuditSink(), elevations=redis_url
    ) as guard:
        sql = "SELECT id, phone FROM customers WHERE id = 43"
        refused = _outcome(guard, scenario_dsn, sql, "alice", forged.id)
        assert refused in {"ticket.unknown", "ticket.store_unavailable"}
