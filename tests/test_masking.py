"""Masked columns (issue 21): the policy syntax, the SQL sent, and attack cases on real PostgreSQL.

The cases are data (tests/cases/masking.yaml). Each runs through ``check()``
and on PostgreSQL through every read path; no path returns, and no error
quotes, a clear value of a masked column.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from casefiles import PgServerLike, database_copy
from maskcases import (
    ALLOWED,
    CASES,
    KEY,
    MaskCase,
    Rows,
    assert_no_clear_value,
    comparable,
    error_text,
    expected,
    masked_policies,
)
from sqlalchemy import BigInteger, Text, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import accessguard.scenario
from accessguard import AccessGuardError, Guard, PolicyError
from accessguard.analysis.rewrite import mask_expression, mask_texts
from accessguard.analysis.sentcheck import verify_sent
from accessguard.audit.ledger import Ledger
from accessguard.authoring.lint import lint
from accessguard.errors import Reason
from accessguard.policy.masking import MASKS, Masking, apply, parse_action
from accessguard.policy.rules import load_policy
from accessguard.testing import MemoryAuditSink

if TYPE_CHECKING:
    from collections.abc import Iterator

db = pytest.mark.db


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return masked_policies(tmp_path_factory.mktemp("masking") / "policies")


@pytest.fixture(scope="module")
def guard(policy_dir: Path) -> Iterator[Guard]:
    with Guard.from_directory(
        policy_dir,
        tickets=accessguard.scenario.tickets(),
        audit=MemoryAuditSink(),
        ledger_pseudonym_key=KEY,
    ) as guard:
        yield guard


@pytest.fixture(scope="module")
def dsn(pg_server: PgServerLike, scenario_template: str) -> Iterator[str]:
    """One scenario copy for the module; every case's transaction is rolled back."""
    with database_copy(pg_server, scenario_template, prefix="ag_masking") as found:
        yield found


def _execute(guard: Guard, dsn: str, case: MaskCase) -> Rows | AccessGuardError | psycopg.Error:
    """The case's rows through a guarded connection, or the error it raised (rolled back)."""
    with guard.connect(dsn, user=case.user, ticket=case.ticket) as conn:
        try:
            with conn.transaction(force_rollback=True):
                rows: Rows = conn.execute(case.sql, case.params).fetchall()
        except (AccessGuardError, psycopg.Error) as exc:
            return exc
    return rows


class TestCaseFile:
    def test_cases_load(self) -> None:
        """masking.yaml loads strictly and covers the attack families the issue names."""
        ids = {c.id for c in CASES}
        assert len(CASES) >= 50
        for family in ("like", "range", "order", "length", "cast", "union", "window", "cte"):
            assert any(family in i for i in ids), family
        assert {c.reason for c in CASES if c.reason} <= {str(r) for r in Reason}


class TestPolicy:
    def test_parse_action(self) -> None:
        """read, update and read:mask=NAME parse; anything else does not."""
        assert parse_action("read") == ("read", None)
        assert parse_action("update") == ("update", None)
        assert parse_action("read:mask=last4") == ("read", "last4")
        assert parse_action("read:mask=rot13") is None
        assert parse_action("update:mask=email") is None
        assert parse_action("read:mask") is None

    def test_masks_for(self, policy_dir: Path) -> None:
        """A column granted only masked is masked; one granted clear too is clear."""
        policy = load_policy(policy_dir)
        roles = policy.roles_of("alice")
        masks = policy.masks_for(roles, "order_issue")
        assert masks == {
            ("public.customers", "email", "email"),
            ("public.customers", "phone", "last4"),
        }
        assert policy.masks_for(roles, None) == frozenset()  # no ticket: no grant at all
        erin = policy.masks_for(policy.roles_of("erin"), "account_recovery")
        assert ("public.customers", "email", "hash") in erin
        assert ("public.customers", "name", "email") not in erin

    def test_least_revealing_mask_wins(self, tmp_path: Path) -> None:
        """Two masks for one column: the least revealing one applies."""
        target = masked_policies(tmp_path / "p")
        with (target / "policy.csv").open("a", encoding="utf-8") as f:
            f.write("p, support_agent, -, customers.email, read:mask=hash\n")
        policy = load_policy(target)
        masks = policy.masks_for(policy.roles_of("alice"), "order_issue")
        assert ("public.customers", "email", "hash") in masks
        assert MASKS.index("hash") < MASKS.index("email")

    def test_casbin_agrees(self, policy_dir: Path) -> None:
        """A masked rule is a read to Casbin and to the compiled table alike."""
        policy = load_policy(policy_dir)
        access = ("public.customers", "email", "read")
        assert policy.allows(frozenset({"support_agent"}), "order_issue", access)
        assert policy.enforce("support_agent", "order_issue", "customers.email", "read")
        assert not policy.enforce("support_agent", "order_issue", "customers.email", "update")

    @pytest.mark.parametrize(
        ("action", "words"),
        [
            ("read:mask=rot13", "unknown mask 'rot13'"),
            ("update:mask=email", "unknown action"),
            ("read:mask=", "malformed entry"),
            ("read:mask=email:x", "malformed entry"),
        ],
    )
    def test_bad_mask_names_file_and_line(self, tmp_path: Path, action: str, words: str) -> None:
        """A bad mask is a PolicyError naming policy.csv and its line."""
        target = masked_policies(tmp_path / "p")
        path = target / "policy.csv"
        with path.open("a", encoding="utf-8") as f:
            f.write(f"p, support_agent, order_issue, customers.name, {action}\n")
        line = len(path.read_text(encoding="utf-8").splitlines())
        with pytest.raises(PolicyError) as caught:
            load_policy(target)
        assert caught.value.line == line
        assert words in caught.value.message

    def test_lint_accepts_masks_and_names_unknown_ones(self, tmp_path: Path) -> None:
        """lint accepts known masks and reports an unknown one as mask.unknown with its line."""
        target = masked_policies(tmp_path / "p")
        assert not [f for f in lint(target) if f.severity == "error"]
        path = target / "policy.csv"
        with path.open("a", encoding="utf-8") as f:
            f.write("p, support_agent, order_issue, customers.name, read:mask=rot13\n")
        line = len(path.read_text(encoding="utf-8").splitlines())
        found = [(Path(f.path).name, f.line, f.code) for f in lint(target)]
        assert ("policy.csv", line, "mask.unknown") in found

    def test_lint_flags_a_masked_read_granted_clear_anyway(self, policy_dir: Path) -> None:
        """A masked rule for a column the role reads clear is rule.shadowed; not the reverse."""
        lines = (policy_dir / "policy.csv").read_text(encoding="utf-8").splitlines()
        masked = lines.index("p, support_agent, order_issue, customers.address, read:mask=hash") + 1
        clear = lines.index("p, support_agent, order_issue, customers.address, read") + 1
        found = {(f.line, f.code) for f in lint(policy_dir) if Path(f.path).name == "policy.csv"}
        assert (masked, "rule.shadowed") in found
        assert (clear, "rule.shadowed") not in found


class TestCheck:
    @pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
    def test_decision(self, case: MaskCase, guard: Guard) -> None:
        """check() decides each case as the file says (an error case is allowed)."""
        decision = guard.check(case.sql, case.params, user=case.user, ticket=case.ticket)
        if case.expect == "denied":
            assert decision.outcome == "denied"
            assert str(decision.reason) == case.reason
        else:
            assert decision.allowed, decision.message

    def test_decision_names_masks(self, guard: Guard) -> None:
        """An allowed decision lists the columns it reads masked, and how."""
        decision = guard.check(
            "SELECT name, email, phone FROM customers WHERE id = 42", user="alice", ticket="T-100"
        )
        assert decision.masked == (("customers.email", "email"), ("customers.phone", "last4"))

    def test_sqlite_refuses_masked_reads(self, guard: Guard) -> None:
        """Masks are PostgreSQL expressions: a masked read on SQLite is refused."""
        decision = guard.check(
            "SELECT email FROM customers WHERE id = 42",
            user="alice",
            ticket="T-100",
            dialect="sqlite",
        )
        assert decision.reason == Reason.COLUMN_MASKED
        clear = guard.check(
            "SELECT name FROM customers WHERE id = 42",
            user="alice",
            ticket="T-100",
            dialect="sqlite",
        )
        assert clear.allowed


class TestSent:
    def test_projection_holds_the_mask(self, guard: Guard) -> None:
        """The SQL sent projects the masked column as its mask, under its own name."""
        facts = guard.analyze(
            "SELECT email FROM customers WHERE id = 42",
            masking=Masking(frozenset({("public.customers", "email", "email")}), KEY),
        )
        assert facts.sent is not None
        assert 'SPLIT_PART(CAST("email" AS TEXT), \'@\', 2) AS "email"' in facts.sent
        assert facts.masked == {("public.customers", "email", "email")}

    def test_verify_sent_requires_the_mask(self, guard: Guard) -> None:
        """PostgreSQL's parse of the SQL sent must show each masked column as exactly its mask."""
        masking = Masking(frozenset({("public.customers", "email", "last4")}), KEY)
        plain = guard.analyze("SELECT email FROM customers WHERE id = 42")
        masked = guard.analyze("SELECT email FROM customers WHERE id = 42", masking=masking)
        scoped = {"public.customers": "id"}
        masks = mask_texts(masking, plain.reads)
        assert plain.sent is not None
        assert masked.sent is not None
        assert verify_sent(masked.sent, masked, scoped, masks=masks) is None
        problem = verify_sent(plain.sent, plain, scoped, masks=masks)
        assert problem is not None
        assert "unmasked" in problem
        other = mask_texts(
            Masking(frozenset({("public.customers", "email", "email")}), KEY), plain.reads
        )
        assert verify_sent(masked.sent, masked, scoped, masks=other) is not None
        wider = masked.sent.replace('RIGHT(CAST("email" AS TEXT), 4)', 'CAST("email" AS TEXT)')
        assert wider != masked.sent
        assert verify_sent(wider, masked, scoped, masks=masks) is not None


@db
class TestMaskValues:
    @pytest.mark.parametrize("mask", MASKS)
    def test_postgres_equals_reference(self, mask: str, dsn: str) -> None:
        """Each mask expression computes on PostgreSQL what masking.apply computes."""
        values = [
            "c0042@mail.example",
            "",
            "x",
            "no-at-sign",
            "a@b@c",
            "ünï@cödé.example",
            "12",
            None,
        ]
        expression = mask_expression(mask, "v", KEY)
        text = expression.sql("postgres")
        with psycopg.connect(dsn) as conn:
            for value in values:
                row = conn.execute(
                    f'SELECT {text} FROM (SELECT %s::text AS "v") AS t',
                    [value],
                ).fetchone()
                assert row is not None
                assert row[0] == apply(mask, value, KEY), (mask, value)

    def test_hash_is_hmac_and_the_ledger_pseudonym(self) -> None:
        """mask=hash is HMAC-SHA256 with the key: the ledger's pseudonym of the same value."""
        ledger = Ledger(MemoryAuditSink(), pseudonym_key=KEY)
        try:
            assert apply("hash", 42, KEY) == ledger.pseudonym(42)
        finally:
            ledger.close()
        assert apply("hash", "x", KEY) == hmac.new(KEY, b"x", hashlib.sha256).hexdigest()


@db
class TestPaths:
    @pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
    def test_execute(self, case: MaskCase, guard: Guard, dsn: str) -> None:
        """conn.execute + fetchall: the file's rows or error, and no clear value anywhere."""
        outcome = _execute(guard, dsn, case)
        if isinstance(outcome, AccessGuardError):
            assert case.expect == "denied", str(outcome)
            assert str(outcome.reason) == case.reason
            assert_no_clear_value(str(outcome))
            if case.reason == Reason.COLUMN_MASKED:
                assert "is granted masked only" in outcome.message
        elif isinstance(outcome, psycopg.Error):
            assert case.expect == "error", str(outcome)
            assert_no_clear_value(error_text(outcome))
        else:
            assert case.expect == "allowed"
            assert comparable(outcome, case) == expected(case)
            assert_no_clear_value(repr(outcome))

    @pytest.mark.parametrize("case", ALLOWED, ids=[c.id for c in ALLOWED])
    def test_stream_and_named_cursor(self, case: MaskCase, guard: Guard, dsn: str) -> None:
        """cursor.stream() and a server-side cursor return the same masked rows."""
        if case.sql.startswith("UPDATE"):
            pytest.skip("a server-side cursor takes a query, not an UPDATE")
        with guard.connect(dsn, user=case.user, ticket=case.ticket) as conn:
            with conn.transaction(force_rollback=True):
                streamed = list(conn.cursor().stream(case.sql, case.params))
            with conn.transaction(force_rollback=True):
                named = conn.cursor(name="masking_case")
                named.execute(case.sql, case.params)
                fetched = named.fetchall()
                named.close()
        assert comparable(streamed, case) == expected(case)
        assert comparable(fetched, case) == expected(case)

    def test_executemany_returning(self, guard: Guard, dsn: str) -> None:
        """executemany(returning=True) returns the masked value of each RETURNING."""
        with (
            guard.connect(dsn, user="alice", ticket="T-100") as conn,
            conn.transaction(force_rollback=True),
        ):
            cur = conn.cursor()
            cur.executemany(
                "UPDATE orders SET status = status WHERE customer_id = 42 AND id = %s "
                "RETURNING id, (SELECT email FROM customers WHERE id = 42)",
                [(421,), (422,)],
                returning=True,
            )
            results = [cur.fetchall()]
            while cur.nextset():
                results.append(cur.fetchall())
        assert results == [[(421, "c***@mail.example")], [(422, "c***@mail.example")]]

    def test_write_then_read_masked(self, guard: Guard, dsn: str) -> None:
        """A granted write to a masked column lands clear; reading it back is masked."""
        with (
            guard.connect(dsn, user="alice", ticket="T-100") as conn,
            conn.transaction(force_rollback=True),
        ):
            conn.execute("UPDATE customers SET phone = '+1-555-9876' WHERE id = 42")
            row = conn.execute("SELECT phone FROM customers WHERE id = 42").fetchone()
            with psycopg.connect(dsn) as raw:  # not guarded: the stored value is unchanged
                stored = raw.execute("SELECT phone FROM customers WHERE id = 42").fetchone()
        assert row == ("***-9876",)
        assert stored == ("+1-555-0042",)

    def test_same_statement_per_employee(self, guard: Guard, dsn: str) -> None:
        """One statement text, read by employees with different masks, gets each one's masks."""
        sql = "SELECT email FROM customers WHERE id = %s"
        got: list[tuple[str, tuple[Any, ...] | None]] = []
        for user, ticket in (("alice", "T-100"), ("erin", "T-300"), ("alice", "T-100")):
            with guard.connect(dsn, user=user, ticket=ticket) as conn:
                # three times: the plan and shape caches, and psycopg's prepared statements
                got.extend((user, conn.execute(sql, [42]).fetchone()) for _ in range(3))
        pseudonym = apply("hash", "c0042@mail.example", KEY)
        assert (
            got
            == [("alice", ("c***@mail.example",))] * 3
            + [("erin", (pseudonym,))] * 3
            + [("alice", ("c***@mail.example",))] * 3
        )

    def test_reload_masks_a_clear_column(self, tmp_path: Path, dsn: str) -> None:
        """A reload that turns a clear grant into a masked one masks the next read."""
        target = tmp_path / "policies"
        shutil.copytree(accessguard.scenario.policies_dir(), target)
        (target / "limits.toml").unlink()
        tickets = accessguard.scenario.tickets()
        sql = "SELECT email FROM customers WHERE id = 42"
        with (
            Guard.from_directory(target, tickets=tickets, audit=MemoryAuditSink()) as other,
            other.connect(dsn, user="alice", ticket="T-100") as conn,
        ):
            before = conn.execute(sql).fetchone()
            path = target / "policy.csv"
            text = path.read_text(encoding="utf-8")
            path.write_text(
                text.replace("customers.email, read\n", "customers.email, read:mask=email\n"),
                encoding="utf-8",
            )
            assert other.reload()
            after = conn.execute(sql).fetchone()
        assert before == ("c0042@mail.example",)
        assert after == ("c***@mail.example",)

    def test_hash_without_key_is_still_keyed(self, policy_dir: Path, dsn: str) -> None:
        """Without ledger_pseudonym_key the hash uses a random key: no unkeyed digest."""
        tickets = accessguard.scenario.tickets()
        with (
            Guard.from_directory(policy_dir, tickets=tickets, audit=MemoryAuditSink()) as other,
            other.connect(dsn, user="erin", ticket="T-300") as conn,
        ):
            row = conn.execute("SELECT email FROM customers WHERE id = 42").fetchone()
        assert row is not None
        assert len(row[0]) == 64
        assert row[0] != apply("hash", "c0042@mail.example", KEY)
        assert row[0] != hashlib.sha256(b"c0042@mail.example").hexdigest()


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str | None] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(Text)
    phone: Mapped[str | None] = mapped_column(Text)


@db
class TestOrm:
    def test_sqlalchemy_reads_masked_form(self, guard: Guard, dsn: str) -> None:
        """SQLAlchemy Core and ORM reads of a masked column work and return the masked form."""
        engine = create_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1))
        guard.instrument(engine)
        try:
            with guard.acting_as(user="alice", ticket="T-100"), Session(engine) as session:
                core = session.execute(select(Customer.email).where(Customer.id == 42)).all()
                found = session.get(Customer, 42)
                assert found is not None
                orm = (found.name, found.email, found.phone)
                filtered = session.scalars(
                    select(Customer).where(Customer.id == 42, Customer.email.like("c0%"))
                ).all()
        finally:
            engine.dispose()
        assert [tuple(r) for r in core] == [("c***@mail.example",)]
        assert orm == ("Name-0042", "c***@mail.example", "***-0042")
        assert filtered == []


class TestCli:
    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - our own CLI, fixed arguments
            [sys.executable, "-m", "accessguard", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    def test_check_and_explain_show_the_mask(self, policy_dir: Path) -> None:
        """check --format json lists masked columns; explain shows the rule and the mask."""
        tickets = str(Path(accessguard.scenario.__file__).parent / "tickets.yaml")
        sql = "SELECT email, phone FROM customers WHERE id = 42"
        common = ["--policies", str(policy_dir), "--tickets", tickets, "--user", "alice"]
        checked = self._run("check", *common, "--ticket", "T-100", "--format", "json", sql)
        assert checked.returncode == 0, checked.stderr
        out = json.loads(checked.stdout)
        assert out["masked"] == [
            {"column": "customers.email", "mask": "email"},
            {"column": "customers.phone", "mask": "last4"},
        ]
        explained = self._run("explain", *common, "--ticket", "T-100", sql)
        assert explained.returncode == 0, explained.stderr
        assert "customers.email, read:mask=email" in explained.stdout
        assert "masked:    customers.email (email), customers.phone (last4)" in explained.stdout
        assert "SPLIT_PART" in explained.stdout
        with contextlib.suppress(ValueError):
            json.loads(explained.stdout)  # text, not JSON
