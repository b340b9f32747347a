"""Key-bound statements (issue 16): rows named by a key are probed, never trimmed.

Alice works T-100 (customer 42: orders 421 and 422, payments 421 and 422).
Customer 7 has orders 71 and 72, customer 43 order 431.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accessguard import AccessDenied, Guard, scenario
from accessguard.analysis import analyze
from accessguard.errors import PolicyError
from accessguard.guard import Session
from accessguard.policy.catalog import load_catalog
from accessguard.testing import MemoryAuditSink

if TYPE_CHECKING:
    from collections.abc import Iterator

db = pytest.mark.db
ALICE = Session(user="alice", ticket="T-100")
ORDER_BY_ID = "SELECT id, customer_id, status FROM orders WHERE orders.id = %s"
PAYMENTS_BY_ORDER = "SELECT id, order_id FROM payments WHERE payments.order_id IN (%s, %s)"
UPDATE_BY_ID = "UPDATE orders SET status = %s WHERE orders.id = %s"


def status_of(dsn: str, order: int) -> str:
    """The status of ``order``, read on an unguarded connection."""
    with psycopg.connect(dsn) as raw:
        row = raw.execute("SELECT status FROM orders WHERE id = %s", [order]).fetchone()
    assert row is not None
    return str(row[0])


def other_subject_events(sink: MemoryAuditSink) -> int:
    return sink.reasons().count("row_scope.other_subject")


@pytest.fixture
def alice(guard: Guard, scenario_dsn: str) -> Iterator[Any]:
    """Alice's guarded psycopg connection on T-100, on a fresh scenario database."""
    with guard.connect(scenario_dsn, user="alice", ticket="T-100") as conn:
        yield conn


# ---------------------------------------------------------------------- schema.toml


SCHEMA = """\
[tables.customers]
columns = ["id", "name"]
key = "id"
scope = "customer"
scope_column = "id"

[tables.orders]
columns = ["id", "customer_id"]
{orders}
scope = "customer"
scope_column = "customer_id"
"""


class TestSchemaKeys:
    def test_scenario_declares_keys_and_references(self) -> None:
        """The scenario's schema.toml declares orders.id and payments.order_id -> orders.id."""
        catalog = load_catalog(scenario.policies_dir() / "schema.toml")
        assert catalog.tables["public.orders"].key == "id"
        payments = catalog.tables["public.payments"]
        assert ("order_id", "public.orders", "id") in payments.references

    @pytest.mark.parametrize(
        ("orders", "words"),
        [
            ('key = "nope"', "key must name one of its columns"),
            ("key = 3", "key must name one of its columns"),
            ('references = { nope = "customers.id" }', "not one of its columns"),
            ('references = { customer_id = "customers" }', 'must be "table.column"'),
            ('references = { customer_id = "people.id" }', "does not declare"),
            ('references = { customer_id = "customers.email" }', "does not declare"),
            ('references = "customers.id"', "references must be a table"),
        ],
        ids=["key-unknown", "key-not-text", "fk-unknown-column", "fk-no-column",
             "fk-unknown-table", "fk-unknown-target-column", "fk-not-a-table"],
    )  # fmt: skip
    def test_bad_keys_name_file_and_line(self, tmp_path: Path, orders: str, words: str) -> None:
        """A bad key or foreign key is a PolicyError naming schema.toml and the table's line."""
        path = tmp_path / "schema.toml"
        path.write_text(SCHEMA.format(orders=orders), encoding="utf-8")
        with pytest.raises(PolicyError) as info:
            load_catalog(path)
        assert words in str(info.value)
        assert info.value.path == str(path)
        assert info.value.line == 7


# ---------------------------------------------------------------------- analysis


class TestAnalysis:
    @pytest.mark.parametrize(
        "sql",
        [
            "SELECT status FROM orders WHERE id = 421 OR true",
            "SELECT status FROM orders WHERE id > 420",
            "SELECT status FROM orders WHERE NOT id <> 421",
            "SELECT status FROM orders WHERE id = '421'",
            "SELECT status FROM orders WHERE id IN (SELECT id FROM orders)",
            "SELECT status FROM orders WHERE status = 'pending'",
        ],
    )
    def test_only_top_level_key_equalities_bind(self, guard: Guard, sql: str) -> None:
        """A key under OR / NOT, a range, a string or a subquery binds nothing: unbound."""
        decision = guard.check(sql, user="alice", ticket="T-100")
        assert decision.reason == "row_scope.unbound"

    def test_key_binding_is_recorded_with_its_values(self, guard: Guard) -> None:
        """``payments WHERE order_id IN ($1, 7)`` records the foreign key and both values."""
        facts = analyze(
            "SELECT id FROM payments WHERE order_id IN ($1, 7)", catalog=guard.policy.catalog
        )
        (ref,) = facts.scopes
        assert ref.values == ()
        assert ref.key is not None
        assert ref.key.column == "order_id"
        assert len(ref.key.values) == 2

    def test_a_key_that_is_not_an_integer_is_unbound(self, guard: Guard) -> None:
        """A bound key value that is not an integer cannot be probed: row_scope.unbound."""
        decision = guard.check(ORDER_BY_ID, ["421"], user="alice", ticket="T-100")
        assert decision.reason == "row_scope.unbound"

    def test_an_adapter_that_cannot_probe_refuses(
        self, guard: Guard, sink: MemoryAuditSink
    ) -> None:
        """Without ``probing`` (an adapter that cannot probe) a key-bound statement is refused."""
        with pytest.raises(AccessDenied) as info:
            guard.authorize("SELECT status FROM orders WHERE id = 421", None, ALICE,
                            dialect="postgres")  # fmt: skip
        assert info.value.reason == "row_scope.unbound"
        assert sink.reasons() == ["row_scope.unbound"]


# ---------------------------------------------------------------------- psycopg


@db
class TestPsycopg:
    @pytest.mark.parametrize(
        ("sql", "params"),
        [(ORDER_BY_ID, [421]), ("SELECT id, customer_id, status FROM orders WHERE id = 421", None)],
        ids=["param", "literal"],
    )
    def test_own_order_by_key(self, alice: Any, sql: str, params: Any) -> None:
        """Alice's order 421 by its key alone is allowed and returns exactly its row."""
        assert alice.execute(sql, params).fetchall() == [(421, 42, "cancelled")]

    @pytest.mark.parametrize(
        ("sql", "params"),
        [(ORDER_BY_ID, [71]), (ORDER_BY_ID, [431]),
         ("SELECT id, customer_id, status FROM orders WHERE id = 431", None)],
        ids=["customer-7", "customer-43", "customer-43-literal"],
    )  # fmt: skip
    def test_other_customers_order_is_refused(
        self, alice: Any, sink: MemoryAuditSink, sql: str, params: Any
    ) -> None:
        """Another customer's order by key is refused other_subject: no row, one audit event."""
        cur = alice.cursor()
        with pytest.raises(AccessDenied) as info:
            cur.execute(sql, params)
        assert info.value.reason == "row_scope.other_subject"
        assert cur.description is None  # nothing was sent: no result at all
        assert sink.reasons() == ["row_scope.other_subject"]
        assert "431" not in str(info.value)
        assert "71" not in str(info.value)

    def test_int_subclass_keys_are_probed(self, alice: Any) -> None:
        """psycopg's Int8 (what Django binds server-side) is probed as its value; True is not."""
        from psycopg.types.numeric import Int8

        assert alice.execute(ORDER_BY_ID, [Int8(421)]).fetchall() == [(421, 42, "cancelled")]
        with pytest.raises(AccessDenied) as info:
            alice.execute(ORDER_BY_ID, [Int8(71)])
        assert info.value.reason == "row_scope.other_subject"
        with pytest.raises(AccessDenied) as info:
            alice.execute(ORDER_BY_ID, [True])
        assert info.value.reason == "row_scope.unbound"

    def test_a_key_that_names_no_row_returns_nothing(
        self, alice: Any, sink: MemoryAuditSink
    ) -> None:
        """A key no row has is not a refusal: the statement runs and returns nothing."""
        assert alice.execute(ORDER_BY_ID, [999_999]).fetchall() == []
        assert sink.reasons() == []

    def test_repeated_statement_is_probed_every_time(self, alice: Any) -> None:
        """The plan is reused, the probe is not: the same text with another key is refused."""
        assert len(alice.execute(ORDER_BY_ID, [421]).fetchall()) == 1
        assert len(alice.execute(ORDER_BY_ID, [422]).fetchall()) == 1
        with pytest.raises(AccessDenied) as info:
            alice.execute(ORDER_BY_ID, [72])
        assert info.value.reason == "row_scope.other_subject"

    def test_varying_literal_keys_share_a_shape_and_are_each_probed(
        self, guard: Guard, alice: Any
    ) -> None:
        """``id = 421``, then ``= 422``, then ``= 71``: one shape plan, each text its own probe."""
        sql = "SELECT id, customer_id FROM orders WHERE id = {n}"
        assert alice.execute(sql.format(n=421)).fetchall() == [(421, 42)]
        assert alice.execute(sql.format(n=422)).fetchall() == [(422, 42)]
        assert guard.lane(ALICE, "postgres").shapes  # the second text was served by its shape
        with pytest.raises(AccessDenied) as info:
            alice.execute(sql.format(n=71))
        assert info.value.reason == "row_scope.other_subject"
        with pytest.raises(AccessDenied):  # a text seen twice gets an exact plan: still probed
            alice.execute(sql.format(n=71))
        assert alice.execute(sql.format(n=422)).fetchall() == [(422, 42)]

    def test_update_own_order_by_key_writes(self, alice: Any, scenario_dsn: str) -> None:
        """The ORM flush ``UPDATE orders SET status WHERE id`` writes alice's order."""
        assert alice.execute(UPDATE_BY_ID, ["refunded", 421]).rowcount == 1
        alice.commit()
        assert status_of(scenario_dsn, 421) == "refunded"

    def test_update_other_customers_order_writes_nothing(
        self, alice: Any, scenario_dsn: str, sink: MemoryAuditSink
    ) -> None:
        """The same UPDATE on customer 7's order is refused and writes nothing."""
        with pytest.raises(AccessDenied) as info:
            alice.execute(UPDATE_BY_ID, ["refunded", 71])
        alice.commit()
        assert info.value.reason == "row_scope.other_subject"
        assert status_of(scenario_dsn, 71) == "pending"
        assert sink.reasons() == ["row_scope.other_subject"]

    def test_children_through_own_orders(self, alice: Any) -> None:
        """``payments WHERE order_id IN (421, 422)`` (selectinload, prefetch) is allowed."""
        rows = alice.execute(PAYMENTS_BY_ORDER, [421, 422]).fetchall()
        assert sorted(rows) == [(421, 421), (422, 422)]

    @pytest.mark.parametrize("other", [72, 431], ids=["customer-7", "customer-43"])
    def test_children_with_another_customers_order_refused(self, alice: Any, other: int) -> None:
        """One order of another customer in the IN list refuses the whole statement."""
        with pytest.raises(AccessDenied) as info:
            alice.execute(PAYMENTS_BY_ORDER, [421, other])
        assert info.value.reason == "row_scope.other_subject"

    def test_parent_of_another_customer_refused_without_children(
        self, alice: Any, scenario_dsn: str
    ) -> None:
        """The parent is probed too: another customer's order with no payment still refuses."""
        with psycopg.connect(scenario_dsn) as raw:
            raw.execute("DELETE FROM payments WHERE order_id = 72")
        with pytest.raises(AccessDenied) as info:
            alice.execute(PAYMENTS_BY_ORDER, [421, 72])
        assert info.value.reason == "row_scope.other_subject"

    def test_executemany_refused_before_any_write(
        self, guard: Guard, alice: Any, scenario_dsn: str, sink: MemoryAuditSink
    ) -> None:
        """executemany with one foreign key in the batch writes none of it, and no ledger entry."""
        cur = alice.cursor()
        with pytest.raises(AccessDenied) as info:
            cur.executemany(UPDATE_BY_ID, [["x", 421], ["x", 422], ["x", 71]])
        alice.commit()
        assert info.value.reason == "row_scope.other_subject"
        assert status_of(scenario_dsn, 421) == "cancelled"
        assert status_of(scenario_dsn, 422) == "pending"
        assert status_of(scenario_dsn, 71) == "pending"
        assert other_subject_events(sink) == 1
        guard.ledger.flush()
        assert not [e for e in sink.events if e.get("event.action") == "ledger"]

    def test_executemany_of_own_orders_writes(self, alice: Any, scenario_dsn: str) -> None:
        """executemany of UPDATEs by key over alice's orders writes every one."""
        alice.cursor().executemany(UPDATE_BY_ID, [["x", 421], ["y", 422]])
        alice.commit()
        assert (status_of(scenario_dsn, 421), status_of(scenario_dsn, 422)) == ("x", "y")

    def test_read_committed_probe_sees_a_concurrent_owner_change(
        self, alice: Any, scenario_dsn: str
    ) -> None:
        """READ COMMITTED: an order moved to customer 7 mid-transaction is refused, not trimmed."""
        alice.execute("SELECT status FROM orders WHERE customer_id = 42").fetchall()
        with psycopg.connect(scenario_dsn, autocommit=True) as raw:
            raw.execute("UPDATE orders SET customer_id = 7 WHERE id = 422")
        with pytest.raises(AccessDenied) as info:
            alice.execute(ORDER_BY_ID, [422])
        assert info.value.reason == "row_scope.other_subject"

    def test_repeatable_read_probe_shares_the_statements_snapshot(
        self, guard: Guard, scenario_dsn: str
    ) -> None:
        """REPEATABLE READ: probe and statement see one snapshot, so the row is never trimmed."""
        options = "-c default_transaction_isolation=repeatable\\ read"
        with guard.connect(scenario_dsn, user="alice", ticket="T-100", options=options) as conn:
            conn.execute("SELECT status FROM orders WHERE customer_id = 42").fetchall()
            with psycopg.connect(scenario_dsn, autocommit=True) as raw:
                raw.execute("UPDATE orders SET customer_id = 7 WHERE id = 422")
            assert conn.execute(ORDER_BY_ID, [422]).fetchall() == [(422, 42, "pending")]
            conn.rollback()
            with pytest.raises(AccessDenied):  # a new snapshot: 422 is customer 7's now
                conn.execute(ORDER_BY_ID, [422])

    def test_ledger_records_the_subject(
        self, guard: Guard, alice: Any, sink: MemoryAuditSink
    ) -> None:
        """An allowed key-bound read is in the ledger under customer 42; a refused one is not."""
        alice.execute(ORDER_BY_ID, [421]).fetchall()
        with pytest.raises(AccessDenied):
            alice.execute("SELECT id FROM orders WHERE id = %s", [71])
        guard.ledger.flush()
        ledger = [e for e in sink.events if e.get("event.action") == "ledger"]
        assert [(e["accessguard.subject.id"], e["accessguard.statements"]) for e in ledger] == [
            (42, 1)
        ]


#: orders of alice's customer (42), of customers 7 and 43, and an id no order has
ALICE_ORDERS = frozenset({421, 422, 423})
OTHER_ORDERS = (71, 72, 431)


@db
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    keys=st.lists(st.sampled_from([*ALICE_ORDERS, *OTHER_ORDERS, 999_999]), min_size=1, max_size=5)
)
def test_any_key_list_is_refused_or_exactly_alices(alice: Any, keys: list[int]) -> None:
    """Any list of order keys: refused iff it names another customer's order, else alice's rows."""
    sql = f"SELECT id FROM orders WHERE id IN ({', '.join(['%s'] * len(keys))})"
    if set(keys) & set(OTHER_ORDERS):
        with pytest.raises(AccessDenied) as info:
            alice.execute(sql, keys)
        assert info.value.reason == "row_scope.other_subject"
    else:
        assert {row[0] for row in alice.execute(sql, keys)} == set(keys) & ALICE_ORDERS
    alice.rollback()


@db
def test_refused_probe_writes_only_its_refusal(scenario_dsn: str) -> None:
    """With allowed events audited, a probed statement is audited once: allowed or refused."""
    sink = MemoryAuditSink()
    with Guard.from_directory(
        scenario.policies_dir(), tickets=scenario.tickets(), audit=sink, audit_allowed=True
    ) as guard:
        with guard.connect(scenario_dsn, user="alice", ticket="T-100") as conn:
            conn.execute(ORDER_BY_ID, [421]).fetchall()
            with pytest.raises(AccessDenied):
                conn.execute(ORDER_BY_ID, [71])
        queries = [e for e in sink.events if e.get("event.action") == "query"]
        assert [e["accessguard.outcome"] for e in queries] == ["allowed", "denied"]


@pytest.fixture
def anyio_backend() -> str:
    """psycopg's async connections run on asyncio."""
    return "asyncio"


@db
class TestOtherAdapters:
    @pytest.mark.anyio
    async def test_async_connection(self, guard: Guard, scenario_dsn: str) -> None:
        """The async adapter probes too: alice's order allowed, customer 7's refused."""
        async with await guard.connect_async(scenario_dsn, user="alice", ticket="T-100") as conn:
            cur = await conn.execute(ORDER_BY_ID, [421])
            assert await cur.fetchall() == [(421, 42, "cancelled")]
            with pytest.raises(AccessDenied) as info:
                await conn.execute(ORDER_BY_ID, [71])
        assert info.value.reason == "row_scope.other_subject"

    def test_sqlite(self, guard: Guard) -> None:
        """The DB-API adapter probes on SQLite with ``?`` placeholders."""
        raw = sqlite3.connect(":memory:")
        scenario.load_sqlite(raw)
        conn = guard.wrap(raw, user="alice", ticket="T-100", dialect="sqlite")
        sql = "SELECT id, status FROM orders WHERE id = ?"
        assert conn.execute(sql, [421]).fetchall() == [(421, "cancelled")]
        with pytest.raises(AccessDenied) as info:
            conn.execute(sql, [71])
        assert info.value.reason == "row_scope.other_subject"
        raw.close()
