"""What chooses or orders a result's rows weighs as what fills them (the chooser pivot).

Red team, 2026-12 (second pass): the row weight counted only the select list.
A subquery in WHERE, ON, GROUP BY, ORDER BY or LIMIT, and an aggregate in
HAVING or ORDER BY, weighed nothing, though each makes the rows returned
spell the values it reads:

- ``products p WHERE p.id = (SELECT total_cents % 16 + 1 FROM orders ..)``:
  twelve such conditions over joined products handed over the totals of
  customer 42's three orders in one row of weight 0, through a guard capped
  at two rows a statement; the ledger counted one row.
- ``GROUP BY p1.id, p2.id, p3.id HAVING max(CASE WHEN o.id = 421 THEN
  total_cents END) % 20 = p1.id - 1 AND ..``: the one group left spells the
  three totals (mod 20) at weight 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from accessguard import AccessDenied, Throttled, scenario
from accessguard.analysis import analyze
from accessguard.policy.catalog import Catalog, load_catalog

if TYPE_CHECKING:
    from accessguard import Guard
    from accessguard.testing import MemoryAuditSink

CATALOG: Catalog = load_catalog(scenario.policies_dir() / "schema.toml")
ORDERS = (421, 422, 423)  # customer 42's
_NIBBLES = 4  # totals below 2 ** 16


def _where_pivot() -> str:
    """One row of joined products whose ids spell every nibble of three orders' totals."""
    names = [f"p{k}_{j}" for k in range(len(ORDERS)) for j in range(_NIBBLES)]
    conditions = [
        f"p{k}_{j}.id = (SELECT (total_cents / {16**j}) % 16 + 1 FROM orders "
        f"WHERE customer_id = 42 AND id = {order})"
        for k, order in enumerate(ORDERS)
        for j in range(_NIBBLES)
    ]
    return (
        f"SELECT {', '.join(f'{n}.id' for n in names)} "
        f"FROM {', '.join(f'products {n}' for n in names)} WHERE {' AND '.join(conditions)}"
    )


_HAVING_PIVOT = (
    "SELECT p1.id, p2.id, p3.id FROM products p1, products p2, products p3, orders o "
    "WHERE o.customer_id = 42 GROUP BY p1.id, p2.id, p3.id "
    "HAVING max(CASE WHEN o.id = 421 THEN o.total_cents END) % 20 = p1.id - 1 "
    "AND max(CASE WHEN o.id = 422 THEN o.total_cents END) % 20 = p2.id - 1 "
    "AND max(CASE WHEN o.id = 423 THEN o.total_cents END) % 20 = p3.id - 1"
)
_NOT_EXISTS = (
    "SELECT p1.id, p2.id, p3.id FROM products p1, products p2, products p3 WHERE NOT EXISTS ("
    "SELECT 1 FROM orders o WHERE o.customer_id = 42 AND ("
    "(o.id = 421 AND o.total_cents % 20 <> p1.id - 1) OR "
    "(o.id = 422 AND o.total_cents % 20 <> p2.id - 1) OR "
    "(o.id = 423 AND o.total_cents % 20 <> p3.id - 1)))"
)
_HAVING_COUNT = (
    "SELECT p1.id, p2.id, p3.id FROM products p1, products p2, products p3, orders o "
    "WHERE o.customer_id = 42 AND ((o.id = 421 AND o.total_cents % 20 = p1.id - 1) "
    "OR (o.id = 422 AND o.total_cents % 20 = p2.id - 1) "
    "OR (o.id = 423 AND o.total_cents % 20 = p3.id - 1)) "
    "GROUP BY p1.id, p2.id, p3.id HAVING count(*) = 3"
)
_ONE = "(SELECT total_cents % 20 FROM orders WHERE customer_id = 42 AND id = 421)"


def weight(sql: str) -> int:
    facts = analyze(sql, catalog=CATALOG)
    assert facts.problem is None, facts.detail
    return facts.row_weight


class TestChoosers:
    @pytest.mark.parametrize(
        ("sql", "expected"),
        [
            pytest.param(f"SELECT p.id FROM products p LIMIT {_ONE}", 1, id="limit"),
            pytest.param(
                f"SELECT p.id FROM products p ORDER BY p.id OFFSET {_ONE}", 1, id="offset"
            ),
            pytest.param(
                f"(SELECT p.id FROM products p ORDER BY p.id) LIMIT {_ONE}",
                1,
                id="limit-of-a-parenthesized-query",
            ),
            pytest.param(
                f"SELECT id FROM products UNION SELECT id FROM products LIMIT {_ONE}",
                1,
                id="limit-of-a-union",
            ),
            pytest.param(
                "SELECT id FROM orders WHERE customer_id = 42 AND id IN "
                "(SELECT id FROM orders WHERE customer_id = 42 AND total_cents > 1000)",
                2,
                id="in-the-same-table",
            ),
            pytest.param(
                "SELECT id FROM orders WHERE customer_id = 42 AND total_cents > "
                "(SELECT max(total_cents) FROM orders WHERE customer_id = 42 AND id = 421)",
                3,
                id="compared-with-a-subquery",
            ),
            pytest.param(
                "SELECT status FROM orders WHERE customer_id = 42 GROUP BY status "
                "HAVING max(CASE WHEN id = 421 THEN total_cents END) > 1000",
                2,
                id="having-aggregate",
            ),
        ],
    )
    def test_weigh_what_they_read(self, sql: str, expected: int) -> None:
        """A subquery or aggregate outside the select list weighs the rows it reads."""
        assert weight(sql) == expected

    @pytest.mark.parametrize(
        "sql",
        [
            pytest.param(_where_pivot(), id="where-subqueries"),
            pytest.param(f"SELECT p.id FROM products p WHERE p.id = {_ONE}", id="where"),
            pytest.param(f"SELECT p.id FROM products p JOIN products q ON q.id = {_ONE}", id="on"),
            pytest.param(f"SELECT count(*) FROM products p GROUP BY p.id = {_ONE}", id="group-by"),
            pytest.param(
                f"SELECT p.id FROM products p ORDER BY abs(p.id - {_ONE}) LIMIT 1", id="order-by"
            ),
            pytest.param(_NOT_EXISTS, id="not-exists"),
            pytest.param(
                "SELECT p.id FROM products p WHERE p.id NOT IN "
                "(SELECT total_cents FROM orders WHERE customer_id = 42)",
                id="not-in",
            ),
            pytest.param(
                "SELECT p.id FROM products p WHERE (SELECT count(*) FROM orders o "
                "WHERE o.customer_id = 42 AND o.total_cents % 20 = p.id) = 0",
                id="count-compared",
            ),
            pytest.param(
                "SELECT p.id FROM products p EXCEPT "
                "SELECT total_cents FROM orders WHERE customer_id = 42",
                id="except",
            ),
            pytest.param(_HAVING_PIVOT, id="having-pivot"),
            pytest.param(_HAVING_COUNT, id="having-count-over-products"),
            pytest.param(
                "SELECT p.id FROM products p, orders o WHERE o.customer_id = 42 GROUP BY p.id "
                "ORDER BY abs(max(CASE WHEN o.id = 421 THEN o.total_cents END) % 20 - p.id) "
                "LIMIT 1",
                id="order-by-aggregate-over-products",
            ),
        ],
    )
    def test_quantifiers_over_public_rows_are_refused(self, sql: str) -> None:
        """Scoped rows that choose rows of a public table (a subquery, an aggregate over their
        join) are refused: NOT EXISTS, NOT IN or count(*) range over every scoped row."""
        facts = analyze(sql, catalog=CATALOG)
        assert facts.problem == "sql.unanalyzable", facts.detail

    @pytest.mark.parametrize(
        ("sql", "expected"),
        [
            pytest.param(
                "SELECT id FROM orders WHERE customer_id = 42 AND id IN "
                "(SELECT order_id FROM payments WHERE customer_id = 42)",
                1,
                id="in-another-table",
            ),
            pytest.param(
                "SELECT status, max(created_at) FROM orders WHERE customer_id = 42 "
                "GROUP BY status ORDER BY max(created_at) DESC",
                2,
                id="order-by-a-selected-aggregate",
            ),
            pytest.param(
                "SELECT status, count(*) FROM orders WHERE customer_id = 42 "
                "GROUP BY status HAVING count(*) > 1 ORDER BY count(*) DESC",
                1,
                id="having-count",
            ),
        ],
    )
    def test_everyday_filters_stay_light(self, sql: str, expected: int) -> None:
        """A filter on another table, or an aggregate the select list already hands over,
        adds nothing."""
        assert weight(sql) == expected


@pytest.mark.db
class TestRowCap:
    @pytest.mark.parametrize(
        "sql",
        [
            pytest.param(_where_pivot(), id="where"),
            pytest.param(_HAVING_PIVOT, id="having"),
            pytest.param(_NOT_EXISTS, id="not-exists"),
            pytest.param(_HAVING_COUNT, id="having-count"),
        ],
    )
    def test_public_rows_spelling_orders_are_refused(
        self, sql: str, capped: Guard, sink: MemoryAuditSink, scenario_dsn: str
    ) -> None:
        """Three orders' totals spelled by one row of joined products: refused, audited."""
        with (
            capped.connect(scenario_dsn, user="alice", ticket="T-100") as conn,
            pytest.raises(AccessDenied) as refused,
        ):
            conn.execute(sql).fetchall()
        assert refused.value.reason == "sql.unanalyzable"
        assert "sql.unanalyzable" in sink.reasons()

    def test_chosen_orders_are_refused_over_the_cap(
        self, capped: Guard, sink: MemoryAuditSink, scenario_dsn: str
    ) -> None:
        """Orders chosen by a subquery over orders weigh two: one row at most under a cap of two."""
        with (
            capped.connect(scenario_dsn, user="alice", ticket="T-100") as conn,
            pytest.raises(Throttled) as refused,
        ):
            conn.execute(
                "SELECT id FROM orders WHERE customer_id = 42 AND id IN "
                "(SELECT id FROM orders WHERE customer_id = 42 AND total_cents > 0)"
            ).fetchall()
        assert refused.value.reason == "throttle.rows"
        assert "carries" in str(refused.value)
        assert "throttle.rows" in sink.reasons()

    def test_filter_on_payments_still_runs(self, capped: Guard, scenario_dsn: str) -> None:
        """Orders filtered by their payments return their rows under the same cap."""
        with capped.connect(scenario_dsn, user="alice", ticket="T-100") as conn:
            rows = conn.execute(
                "SELECT id FROM orders WHERE customer_id = %s AND id IN "
                "(SELECT order_id FROM payments WHERE customer_id = %s) AND id = %s",
                [42, 42, 421],
            ).fetchall()
        assert rows == [(421,)]
