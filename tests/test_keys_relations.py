"""Tables bound through another one (issue 16): joins, eager loads and subqueries of the ORMs.

``orders LEFT JOIN payments ON orders.id = payments.order_id WHERE
orders.customer_id = 42`` binds payments through its parent (a declared
reference), probed before sending: a payment of one of customer 42's orders
that names another customer (inconsistent data) refuses the statement
``row_scope.other_subject``, where the second wall alone would silently trim it.
Scope column to scope column needs no probe. Alice works T-100 (customer 42:
orders and payments 421, 422, 423); customer 7 has orders 71-73, 43 has 431-433.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from accessguard import AccessDenied, Guard, scenario
from accessguard.analysis import analyze
from accessguard.decision import Context
from accessguard.engine.probes import plan_probes

if TYPE_CHECKING:
    from collections.abc import Iterator

    from accessguard.analysis import Facts
    from accessguard.testing import MemoryAuditSink

db = pytest.mark.db

JOINEDLOAD = (
    "SELECT o.id, p.id, p.card_last4 FROM orders o LEFT OUTER JOIN payments p "
    "ON o.id = p.order_id WHERE o.customer_id = %s ORDER BY o.id, p.id"
)
PARENT_OF_CHILD = (
    "SELECT p.id, o.status FROM payments p JOIN orders o ON o.id = p.order_id "
    "WHERE p.customer_id = %s ORDER BY p.id"
)
HAS = (
    "SELECT payments.id FROM payments WHERE payments.customer_id = %s AND (EXISTS "
    "(SELECT 1 FROM orders WHERE orders.id = payments.order_id AND orders.status <> 'x')) "
    "ORDER BY payments.id"
)
SELECT_RELATED = (
    'SELECT "payments"."id", "orders"."status", T4."name" FROM "payments" '
    'INNER JOIN "orders" ON ("payments"."order_id" = "orders"."id") '
    'INNER JOIN "customers" T4 ON ("orders"."customer_id" = T4."id") '
    'WHERE "payments"."customer_id" = %s ORDER BY 1'
)
IN_SUBQUERY = (
    'SELECT "payments"."id" FROM "payments" WHERE "payments"."order_id" IN '
    '(SELECT U0."id" FROM "orders" U0 WHERE U0."customer_id" = %s) ORDER BY 1'
)
SUBQUERYLOAD = (
    "SELECT payments.id, anon_1.orders_id FROM (SELECT orders.id AS orders_id FROM orders "
    "WHERE orders.customer_id = %s) AS anon_1 JOIN payments ON anon_1.orders_id = "
    "payments.order_id ORDER BY payments.id"
)
NESTED_GROUP = (
    "SELECT o.id, p.id, c.name FROM orders o LEFT OUTER JOIN (payments AS p JOIN customers AS c "
    "ON c.id = p.customer_id) ON o.id = p.order_id WHERE o.customer_id = %s ORDER BY o.id"
)
UPDATE_SPAN = (
    'UPDATE "orders" SET "status" = %s WHERE "orders"."id" IN (SELECT U0."id" FROM "orders" U0 '
    'INNER JOIN "payments" U1 ON (U0."id" = U1."order_id") WHERE U1."customer_id" = %s)'
)
KEY_THEN_SAME = (
    "SELECT c.name FROM customers c JOIN orders o ON c.id = o.customer_id WHERE o.id = 421"
)
CYCLE = "SELECT o.id FROM orders o JOIN payments p ON p.order_id = o.id"
OR_IN_ON = (
    "SELECT p.id FROM orders o JOIN payments p ON p.order_id = o.id "
    "OR p.id = 1 WHERE o.customer_id = 42"
)
LEFT_WHERE_NULLABLE = (
    "SELECT o.id FROM orders o LEFT JOIN payments p ON p.order_id = o.id WHERE p.customer_id = 42"
)
NOT_IN = (
    "SELECT p.id FROM payments p WHERE p.order_id NOT IN "
    "(SELECT id FROM orders WHERE customer_id = 42)"
)
SCALAR_VALUE = (
    "SELECT p.id FROM payments p WHERE p.customer_id = 42 AND p.amount_cents = "
    "(SELECT o.total_cents FROM orders o WHERE o.customer_id = 42 LIMIT 1)"
)
REBOUND = (
    "SELECT c.name FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = 421 "
    "AND o.status IN (SELECT status FROM orders WHERE customer_id = 42)"
)
OTHER_SCOPE_KIND = (
    "SELECT r.id FROM orders o JOIN customers c ON c.id = o.customer_id "
    "JOIN reviews r ON r.customer_id = c.id WHERE o.id = 421"
)
JOINEDLOAD_LIMIT = (
    "SELECT anon_1.id, anon_1.status, payments_1.id AS id_1, payments_1.card_last4 FROM "
    "(SELECT orders.id AS id, orders.customer_id AS customer_id, orders.status AS status "
    "FROM orders WHERE orders.customer_id = %s ORDER BY orders.id LIMIT 2) AS anon_1 "
    "LEFT OUTER JOIN payments AS payments_1 ON anon_1.id = payments_1.order_id "
    "ORDER BY anon_1.id, payments_1.id"
)
JOINEDLOAD_CHAIN = (
    "SELECT payments.id, customers_1.name, orders_1.status FROM payments LEFT OUTER JOIN "
    "orders AS orders_1 ON orders_1.id = payments.order_id LEFT OUTER JOIN customers AS "
    "customers_1 ON customers_1.id = orders_1.customer_id WHERE payments.customer_id = %s "
    "ORDER BY payments.id"
)
CTE_JOIN = (
    "WITH mine AS (SELECT orders.id AS id FROM orders WHERE orders.customer_id = %s) "
    "SELECT payments.id FROM payments JOIN mine ON mine.id = payments.order_id ORDER BY 1"
)
#: every shape bound through another table, with the ticket's customer as its parameter
SHAPES = {
    "joinedload-limit": JOINEDLOAD_LIMIT,
    "joinedload-chain": JOINEDLOAD_CHAIN,
    "cte-join": CTE_JOIN,
    "joinedload": JOINEDLOAD,
    "parent-of-child": PARENT_OF_CHILD,
    "has-exists": HAS,
    "select-related-chain": SELECT_RELATED,
    "in-subquery": IN_SUBQUERY,
    "subqueryload": SUBQUERYLOAD,
    "nested-group": NESTED_GROUP,
}


def bindings(facts: Facts) -> dict[str, str]:
    """How each reference is bound: value, key, probe (through a relation), same, unbound."""
    out: dict[str, str] = {}
    for ref in facts.scopes:
        name = ref.table.rsplit(".", 1)[-1]
        if ref.values:
            kind = "value"
        elif ref.key is None:
            kind = "unbound"
        elif ref.key.via is None:
            kind = "key"
        else:
            kind = "probe" if ref.key.via.probe else "same"
        out[name] = min(out.get(name, kind), kind) if name in out else kind
    return out


class TestAnalysis:
    @pytest.mark.parametrize(
        ("sql", "expected"),
        [
            (JOINEDLOAD, {"orders": "value", "payments": "probe"}),
            (PARENT_OF_CHILD, {"payments": "value", "orders": "probe"}),
            (HAS, {"payments": "value", "orders": "probe"}),
            (SELECT_RELATED, {"payments": "value", "orders": "probe", "customers": "same"}),
            (IN_SUBQUERY, {"payments": "probe", "orders": "value"}),
            (SUBQUERYLOAD, {"orders": "value", "payments": "probe"}),
            (NESTED_GROUP, {"orders": "value", "payments": "probe", "customers": "same"}),
            (KEY_THEN_SAME, {"customers": "same", "orders": "key"}),
            (CYCLE, {"orders": "unbound", "payments": "unbound"}),
            (OR_IN_ON, {"orders": "value", "payments": "unbound"}),
            (LEFT_WHERE_NULLABLE, {"orders": "unbound", "payments": "value"}),
            (NOT_IN, {"payments": "unbound", "orders": "value"}),
            (SCALAR_VALUE, {"payments": "value", "orders": "value"}),
            (REBOUND, {"orders": "key", "customers": "same"}),
            (OTHER_SCOPE_KIND, {"orders": "key", "customers": "same", "reviews": "unbound"}),
        ],
        ids=[
            "joinedload", "parent-of-child", "has-exists", "select-related-chain", "in-subquery",
            "subqueryload", "nested-group", "key-then-same", "cycle", "or-in-on",
            "left-where-nullable", "not-in", "scalar-value", "rebound", "other-scope-kind",
        ],
    )  # fmt: skip
    def test_bindings(self, guard: Guard, sql: str, expected: dict[str, str]) -> None:
        """Each reference is bound as the shape allows, and no further."""
        facts = analyze(sql.replace("%s", "42"), catalog=guard.policy.catalog)
        assert facts.problem is None, facts.detail
        assert bindings(facts) == expected

    def test_check_cannot_probe(self, guard: Guard) -> None:
        """guard.check has no database: a relation-bound statement is refused unbound."""
        decision = guard.check(JOINEDLOAD, [42], user="alice", ticket="T-100")
        assert decision.reason == "row_scope.unbound"
        assert "payments" in decision.message

    def test_one_probe_per_relation(self, guard: Guard) -> None:
        """The relation probe reads the child rows of the subject's parents, both marks bound."""
        catalog = guard.policy.catalog
        facts = analyze(
            "SELECT p1.id FROM orders o JOIN payments p1 ON p1.order_id = o.id "
            "JOIN payments p2 ON p2.order_id = o.id WHERE o.customer_id = 42",
            catalog=catalog,
        )
        context = Context(user="alice", roles=frozenset(), ticket_id="T-100", ticket=None)
        probes = plan_probes(facts, catalog, {"customer": 42}, context)
        assert probes is not None
        assert len(probes.probes) == 1  # two references, one relation
        assert probes.keys == (42, 42)
        assert 'r."order_id" IN (SELECT o."id"' in probes.format_sql
        assert 'r."customer_id" IS DISTINCT FROM %s' in probes.format_sql


# ---------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def alice(guard: Guard, scenario_dsn: str) -> Iterator[Any]:
    """Alice's guarded psycopg connection on T-100, on a fresh scenario database."""
    with guard.connect(scenario_dsn, user="alice", ticket="T-100") as conn:
        yield conn


def raw_rows(dsn: str, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    """What ``sql`` returns on an unguarded connection (rolled back)."""
    with psycopg.connect(dsn) as raw:
        try:
            return list(raw.execute(sql, params).fetchall())
        finally:
            raw.rollback()


def insert_payment(dsn: str, payment: int, order: int, customer: int) -> None:
    """Make the data inconsistent: a payment whose customer is not its order's."""
    with psycopg.connect(dsn) as raw:
        raw.execute(
            "INSERT INTO payments (id, order_id, customer_id, amount_cents, card_last4, "
            "card_token) VALUES (%s, %s, %s, 100, '9999', 'tok_x')",
            [payment, order, customer],
        )


@db
class TestPostgres:
    @pytest.mark.parametrize("sql", list(SHAPES.values()), ids=list(SHAPES))
    def test_shape_returns_what_the_statement_returns(
        self, alice: Any, scenario_dsn: str, sql: str
    ) -> None:
        """Allowed for customer 42, with exactly the rows the statement returns run raw."""
        rows = alice.execute(sql, [42]).fetchall()
        assert rows
        assert rows == raw_rows(scenario_dsn, sql, [42])

    @pytest.mark.parametrize("sql", list(SHAPES.values()), ids=list(SHAPES))
    @pytest.mark.parametrize("other", [7, 43])
    def test_shape_for_another_customer_is_refused(
        self, alice: Any, sink: MemoryAuditSink, sql: str, other: int
    ) -> None:
        """The same shape for another customer is refused other_subject, nothing sent."""
        cur = alice.cursor()
        with pytest.raises(AccessDenied) as info:
            cur.execute(sql, [other])
        assert info.value.reason == "row_scope.other_subject"
        assert cur.description is None
        assert sink.reasons() == ["row_scope.other_subject"]

    @pytest.mark.parametrize(
        "case",
        [
            (JOINEDLOAD, 9001, 421, 7),  # a child of 42's order, of customer 7
            (PARENT_OF_CHILD, 9002, 71, 42),  # 42's payment of customer 7's order
            (HAS, 9002, 71, 42),
            (SUBQUERYLOAD, 9001, 421, 7),
            (IN_SUBQUERY, 9001, 421, 7),
        ],
        ids=["child", "parent", "exists", "derived", "in-subquery"],
    )
    def test_inconsistent_rows_are_refused_not_trimmed(
        self, alice: Any, scenario_dsn: str, case: tuple[str, int, int, int]
    ) -> None:
        """A row the relation reaches that is another customer's refuses the whole statement.

        Run raw, the statement returns the inconsistent payment (or its order's
        row); the second wall alone would trim it silently: the probe refuses.
        """
        sql, payment, order, customer = case
        leaked = payment
        insert_payment(scenario_dsn, payment, order, customer)
        raw = raw_rows(scenario_dsn, sql, [42])
        assert any(leaked in row for row in raw)
        with pytest.raises(AccessDenied) as info:
            alice.execute(sql, [42])
        assert info.value.reason == "row_scope.other_subject"
        assert str(leaked) not in str(info.value)

    def test_update_through_a_subquery(self, alice: Any, scenario_dsn: str) -> None:
        """Django's update() over a span writes the customer's orders; another's: nothing."""
        alice.execute(UPDATE_SPAN, ["refunded", 42])
        alice.commit()
        with pytest.raises(AccessDenied) as info:
            alice.execute(UPDATE_SPAN, ["refunded", 7])
        assert info.value.reason == "row_scope.other_subject"
        alice.rollback()
        with psycopg.connect(scenario_dsn) as raw:
            rows = raw.execute(
                "SELECT customer_id, count(*) FROM orders WHERE status = 'refunded' "
                "GROUP BY customer_id"
            ).fetchall()
        assert rows == [(42, 3)]

    def test_lock_of_an_alias(self, alice: Any) -> None:
        """FOR UPDATE OF an alias, with a table bound through the scope columns."""
        rows = alice.execute(
            "SELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.customer_id "
            "WHERE o.customer_id = %s ORDER BY o.id FOR UPDATE OF o",
            [42],
        ).fetchall()
        assert [r[0] for r in rows] == [421, 422, 423]


class TestOtherAdapters:
    def test_sqlite(self, guard: Guard) -> None:
        """The DB-API adapter runs the relation probe on SQLite (``?`` marks, ``IS NOT``)."""
        raw = sqlite3.connect(":memory:")
        scenario.load_sqlite(raw)
        conn = guard.wrap(raw, user="alice", ticket="T-100", dialect="sqlite")
        sql = JOINEDLOAD.replace("%s", "?")
        assert [r[1] for r in conn.execute(sql, [42]).fetchall()] == [421, 422, 423]
        with pytest.raises(AccessDenied) as info:
            conn.execute(sql, [7])
        assert info.value.reason == "row_scope.other_subject"
        raw.execute(
            "INSERT INTO payments (id, order_id, customer_id, amount_cents, card_last4, "
            "card_token) VALUES (9001, 421, 7, 100, '9999', 'tok_x')"
        )
        with pytest.raises(AccessDenied) as info:
            conn.execute(sql, [42])
        assert info.value.reason == "row_scope.other_subject"
        raw.close()

    @db
    @pytest.mark.anyio
    async def test_async_connection(self, guard: Guard, scenario_dsn: str) -> None:
        """The async adapter runs the relation probe too."""
        async with await guard.connect_async(scenario_dsn, user="alice", ticket="T-100") as conn:
            cur = await conn.execute(PARENT_OF_CHILD, [42])
            assert [r[0] for r in await cur.fetchall()] == [421, 422, 423]
        insert_payment(scenario_dsn, 9002, 71, 42)
        async with await guard.connect_async(scenario_dsn, user="alice", ticket="T-100") as conn:
            with pytest.raises(AccessDenied) as info:
                await conn.execute(PARENT_OF_CHILD, [42])
        assert info.value.reason == "row_scope.other_subject"


@pytest.fixture
def anyio_backend() -> str:
    """psycopg's async connections run on asyncio."""
    return "asyncio"
