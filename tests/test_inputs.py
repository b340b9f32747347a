"""Inputs that cannot stall the guard: bounded, well-encoded text before any scan.

Crafted statements that once took quadratic time in a regular expression, a
statement far past the length limit, lone surrogates and undecodable bytes:
each is one audited ``sql.unanalyzable`` refusal with a small audit event,
never a bare exception. The fuzz entry point runs here on a few inputs so it
cannot break silently.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from accessguard import AccessDenied, AccessGuardError, Guard, scenario
from accessguard.analysis import MAX_TOKENS, Facts, analyze, as_text, screen_placeholders
from accessguard.analysis.redact import MAX_AUDIT_TEXT, MAX_SQL_LENGTH
from accessguard.engine.lane import Session
from accessguard.policy.rules import load_policy
from accessguard.testing import MemoryAuditSink

ROOT = Path(__file__).resolve().parents[1]
#: an audit event of a refusal stays within this many bytes of JSON
EVENT_BUDGET = 2 * MAX_AUDIT_TEXT + 4096

CRAFTED: dict[str, str | bytes] = {
    "unclosed-comments-100kb": "SELECT 1 " + "/*a" * 33330,
    "unclosed-comments-over-limit": "SELECT 1 " + "/*a" * 40000,
    "ten-megabytes": "SELECT name FROM customers WHERE email = 'x' OR " + "a" * 10_000_000,
    "long-literal-over-limit": "SELECT '" + "secret" * 20000 + "'",
    "lone-surrogate-literal": "SELECT '\ud800' FROM customers",
    "lone-surrogate-name": "SELECT \udcff FROM customers",
    "invalid-utf8-bytes": b"SELECT name FROM customers WHERE email = '\xff\xfe'",
    "huge-digit-run": "SELECT id FROM customers WHERE id = " + "9" * 5000,
}


def event_size(event: dict[str, object]) -> int:
    return len(json.dumps(event, ensure_ascii=False, default=str).encode())


class TestCraftedInputs:
    @pytest.mark.parametrize("name", sorted(CRAFTED))
    def test_check_refuses_with_one_small_event(
        self, guard: Guard, sink: MemoryAuditSink, name: str
    ) -> None:
        """check() refuses each crafted input with one audit event of bounded size."""
        sql = CRAFTED[name]
        decision = guard.check(sql, user="alice", ticket="T-100")
        assert not decision.allowed
        assert len(sink.events) == 1
        event = sink.events[0]
        assert event_size(event) < EVENT_BUDGET
        assert decision.reason == "sql.unanalyzable"

    def test_long_literal_never_reaches_the_event(
        self, guard: Guard, sink: MemoryAuditSink
    ) -> None:
        """A statement past the limit is cut before redaction: its literal is not in the event."""
        guard.check(CRAFTED["long-literal-over-limit"], user="alice", ticket="T-100")
        event = sink.events[0]
        assert "secret" not in json.dumps(event)
        assert event["accessguard.fingerprint"]

    def test_long_redacted_text_is_cut_and_fingerprinted(
        self, guard: Guard, sink: MemoryAuditSink
    ) -> None:
        """A long (but analyzable) refused statement's text is cut; its fingerprint is whole."""
        columns = ", ".join(["card_token"] * 5000)
        sql = f"SELECT {columns} FROM payments WHERE customer_id = 42"
        assert len(sql) < MAX_SQL_LENGTH
        guard.check(sql, user="alice", ticket="T-100")
        guard.check(sql.replace("card_token", "card_token ", 1), user="alice", ticket="T-100")
        first, second = sink.events
        assert first["db.query.text"].endswith("...[cut]")
        assert len(first["db.query.text"]) < MAX_AUDIT_TEXT + 16
        assert first["accessguard.fingerprint"] == second["accessguard.fingerprint"]

    def test_same_oversized_statement_has_one_fingerprint(
        self, guard: Guard, sink: MemoryAuditSink
    ) -> None:
        """Two sends of one oversized statement share a fingerprint; another one differs."""
        sql = str(CRAFTED["unclosed-comments-over-limit"])
        for text in (sql, sql, sql + " "):
            guard.check(text, user="alice", ticket="T-100")
        prints = [e["accessguard.fingerprint"] for e in sink.events]
        assert prints[0] == prints[1] != prints[2]

    @pytest.mark.db
    @pytest.mark.parametrize("name", sorted(n for n, v in CRAFTED.items() if isinstance(v, str)))
    def test_execute_refuses_with_one_event(
        self, guard: Guard, sink: MemoryAuditSink, scenario_dsn: str, name: str
    ) -> None:
        """execute() refuses each crafted text before the server sees it, with one event."""
        with guard.connect(scenario_dsn, user="alice", ticket="T-100") as conn:
            with pytest.raises(AccessDenied):
                conn.execute(CRAFTED[name])
            assert conn.execute("SELECT name FROM customers WHERE id = 42").fetchall()
        refusals = [e for e in sink.events if e["accessguard.outcome"] != "allowed"]
        assert len(refusals) == 1
        assert event_size(refusals[0]) < EVENT_BUDGET

    @pytest.mark.db
    def test_execute_with_named_params_refuses_oversized_text(
        self, guard: Guard, sink: MemoryAuditSink, scenario_dsn: str
    ) -> None:
        """A too-long statement with named parameters is refused before psycopg converts it."""
        sql = "SELECT name FROM customers WHERE id = %(id)s " + "/*a" * 40000
        with (
            guard.connect(scenario_dsn, user="alice", ticket="T-100") as conn,
            pytest.raises(AccessDenied) as info,
        ):
            conn.execute(sql, {"id": 42})
        assert info.value.reason == "sql.unanalyzable"
        assert len(sink.events) == 1

    @pytest.mark.db
    @pytest.mark.parametrize(
        ("query", "params"),
        [
            (b"SELECT name FROM customers WHERE id = 42 AND name <> '\xff'", None),
            ("SELECT name FROM customers WHERE id = %(id)s AND name <> '\udcff'", {"id": 42}),
            ("SELECT name FROM customers WHERE id = %s AND name <> '\udcff'", [42]),
        ],
        ids=["undecodable-bytes", "surrogate-named-params", "surrogate-positional"],
    )
    def test_execute_refuses_unreadable_text_with_one_event(
        self,
        guard: Guard,
        sink: MemoryAuditSink,
        scenario_dsn: str,
        query: str | bytes,
        params: object,
    ) -> None:
        """Undecodable bytes or a lone surrogate through execute() is one audited refusal."""
        with guard.connect(scenario_dsn, user="alice", ticket="T-100") as conn:
            with pytest.raises(AccessDenied) as info:
                conn.execute(query, params)
            assert info.value.reason == "sql.unanalyzable"
            assert conn.execute("SELECT name FROM customers WHERE id = 42").fetchall()
        refusals = [e for e in sink.events if e["accessguard.outcome"] != "allowed"]
        assert len(refusals) == 1

    @pytest.mark.db
    def test_a_valid_statement_still_runs(self, guard: Guard, scenario_dsn: str) -> None:
        """Text with non-ASCII characters that is valid Unicode is analyzed as before."""
        with guard.connect(scenario_dsn, user="alice", ticket="T-100") as conn:
            rows = conn.execute(
                "SELECT name FROM customers WHERE id = 42 AND name <> 'Zoë'"
            ).fetchall()
        assert rows


UNCLOSED_PLACEHOLDERS = "SELECT name FROM customers WHERE id = %s " + "%(a" * 30000


class TestPlaceholders:
    def test_check_refuses_unclosed_placeholders_before_converting(
        self, guard: Guard, sink: MemoryAuditSink
    ) -> None:
        """Thousands of unclosed %( are refused before psycopg's quadratic scan reads them."""
        decision = guard.check(UNCLOSED_PLACEHOLDERS, [42], user="alice", ticket="T-100")
        assert decision.reason == "sql.unanalyzable"
        assert "placeholders" in decision.message
        assert len(sink.events) == 1

    def test_ordinary_placeholders_pass(self) -> None:
        """Named and positional placeholders, and a literal %( far from any ), are read."""
        assert screen_placeholders("SELECT %(a)s, %(bb)s, %s, '%(' || ')'") is None

    @pytest.mark.db
    def test_execute_refuses_unclosed_placeholders(
        self, guard: Guard, sink: MemoryAuditSink, scenario_dsn: str
    ) -> None:
        """execute() with positional values refuses the text before converting it."""
        with (
            guard.connect(scenario_dsn, user="alice", ticket="T-100") as conn,
            pytest.raises(AccessDenied) as info,
        ):
            conn.execute(UNCLOSED_PLACEHOLDERS, [42])
        assert info.value.reason == "sql.unanalyzable"
        assert len(sink.events) == 1


class TestRefuseUnreadable:
    @pytest.mark.parametrize(
        ("text", "placeholders"),
        [
            (b"SELECT '\xff'", False),
            ("SELECT '\udcff'", False),
            ("SELECT 1 " + "/*a" * 40000, False),
            (UNCLOSED_PLACEHOLDERS, True),
        ],
        ids=["bytes", "surrogate", "too-long", "placeholders"],
    )
    def test_an_unreadable_text_is_refused_for_adapters(
        self, guard: Guard, sink: MemoryAuditSink, text: str | bytes, *, placeholders: bool
    ) -> None:
        """refuse_unreadable() raises sql.unanalyzable with one event for what no scan may read."""
        session = Session(user="alice", ticket="T-100")
        with pytest.raises(AccessDenied) as info:
            guard.refuse_unreadable(text, session, placeholders=placeholders)
        assert info.value.reason == "sql.unanalyzable"
        assert len(sink.events) == 1

    def test_a_readable_text_passes(self, guard: Guard, sink: MemoryAuditSink) -> None:
        """A plain statement with placeholders is let through to the adapter, unaudited."""
        session = Session(user="alice", ticket="T-100")
        guard.refuse_unreadable("SELECT %(a)s", session, placeholders=True)
        assert sink.events == []


class TestTokenLimit:
    def test_too_many_tokens_is_refused_before_parsing(
        self, guard: Guard, sink: MemoryAuditSink
    ) -> None:
        """A statement of more than MAX_TOKENS tokens is refused, with its text redacted."""
        sql = "SELECT name FROM customers WHERE email = 'x' AND id IN (" + "42," * MAX_TOKENS
        decision = guard.check(sql + "42)", user="alice", ticket="T-100")
        assert decision.reason == "sql.unanalyzable"
        assert "tokens" in decision.message
        assert "'x'" not in sink.events[0]["db.query.text"]

    def test_a_long_in_list_under_the_limit_is_allowed(self, guard: Guard) -> None:
        """An IN list of a few thousand values stays well under the token limit."""
        values = ", ".join(["42"] * 3000)
        sql = f"SELECT name FROM customers WHERE id = 42 AND id IN ({values})"
        assert guard.check(sql, user="alice", ticket="T-100").allowed


class TestAsText:
    def test_bytes_are_read_as_utf8(self) -> None:
        """Valid UTF-8 bytes become the same text; invalid ones are a problem, not an error."""
        assert as_text("SELECT 'é'".encode()) == ("SELECT 'é'", None)
        text, problem = as_text(b"SELECT '\xff'")
        assert problem == "the statement is not valid UTF-8"
        assert "\ufffd" in text


_POLICY = load_policy(scenario.policies_dir())
_ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=300)
_ANY_INPUT = st.one_of(_ANY_TEXT, st.binary(max_size=300))


class TestNeverRaises:
    @given(_ANY_INPUT)
    def test_analysis_of_any_text_or_bytes_never_raises(self, sql: str | bytes) -> None:
        """analyze() of arbitrary text or bytes returns facts; it raises nothing."""
        facts = analyze(sql, catalog=_POLICY.catalog)
        assert isinstance(facts, Facts)

    @given(_ANY_INPUT)
    def test_check_of_any_text_or_bytes_raises_only_accessguard_errors(
        self, sql: str | bytes
    ) -> None:
        """check() of arbitrary text or bytes decides, or raises an AccessGuardError only."""
        sink = MemoryAuditSink()
        with Guard.from_directory(
            scenario.policies_dir(), tickets=scenario.tickets(), audit=sink
        ) as guard:
            try:
                decision = guard.check(sql, user="alice", ticket="T-100")
            except AccessGuardError:
                return
        if not decision.allowed:
            assert len(sink.events) == 1
            json.dumps(sink.events[0], ensure_ascii=False, default=str).encode()


class TestFuzzEntryPoint:
    def test_fuzz_runs_clean_on_a_few_inputs(self) -> None:
        """`python -m benchmarks.fuzz` runs, counts no crash, and reports the worst input time."""
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.fuzz", "--inputs", "200", "--progress", "1000"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        summary = json.loads(done.stdout.split("SUMMARY ", 1)[1].splitlines()[0])
        assert summary["inputs"] == 200
        assert summary["crashes"] == 0
        assert "worst_input_s" in summary


class TestJoinChains:
    @pytest.mark.parametrize("joins", [65, 3000])
    def test_a_long_join_chain_is_refused_before_name_resolution(
        self, guard: Guard, sink: MemoryAuditSink, joins: int
    ) -> None:
        """More than 64 joins is refused as unanalyzable (3,000 NATURAL JOINs took minutes)."""
        chain = " ".join(f"NATURAL JOIN orders o{i}" for i in range(joins))
        sql = f"SELECT 1 FROM orders a {chain} WHERE a.customer_id = 42"
        decision = guard.check(sql, user="alice", ticket="T-100")
        assert decision.reason == "sql.unanalyzable"
        assert "joins" in decision.message
        with pytest.raises(AccessDenied):
            guard.authorize(sql, None, Session(user="alice", ticket="T-100"), dialect="postgres")
        assert len(sink.events) == 2

    def test_an_ordinary_join_count_is_analyzed(self, guard: Guard) -> None:
        """A few joins, as an ORM writes them, are analyzed as before."""
        sql = (
            "SELECT c.name FROM customers c JOIN orders o ON o.customer_id = c.id "
            "JOIN payments p ON p.order_id = o.id WHERE c.id = 42 AND o.customer_id = 42 "
            "AND p.customer_id = 42"
        )
        assert guard.check(sql, user="alice", ticket="T-100").allowed
