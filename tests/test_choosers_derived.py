"""A value that ranges over scoped rows chooses public rows through a derived column (finding 3).

Red team, 2026-12 (fourth pass): the chooser pivot (``test_choosers``) refused
a subquery over a scoped table in a WHERE clause over joined products, but not
the same subquery one level down, as a derived table's column:

- ``SELECT a, b, c FROM (SELECT p1.id AS a, .., (SELECT count(*) FROM orders o
  WHERE .. o.total_cents % 20 <> p1.id - 1 ..) AS n FROM products p1, ..) t
  WHERE n = 0`` left one row that spelled customer 42's three orders' totals
  (mod 20) at weight 1, through a guard capped at two rows a statement.
- ``orders o, products p1, products p2 .. EXCEPT SELECT 421, q1.id, q2.id FROM
  products q1, products q2, orders x WHERE ..`` spelled two other totals: the
  left branch had weight (``orders o``), so the EXCEPT check passed it.

The walker now follows what a derived table's (a WITH item's, a VALUES list's)
columns carry: a column computed over several scoped rows (a scalar subquery
or an aggregate or window call over one) is "spread", through renames and
further levels. At a level with rows of no scoped table, such a column read
anywhere but plainly in the select list is refused, and so are DISTINCT,
ORDER BY or GROUP BY by it, a LATERAL subquery over a scoped table after a
public FROM item, and EXCEPT or INTERSECT mixing both kinds of rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from accessguard import AccessDenied, scenario
from accessguard.analysis import analyze
from accessguard.policy.catalog import Catalog, load_catalog

if TYPE_CHECKING:
    from accessguard import Guard
    from accessguard.testing import MemoryAuditSink

CATALOG: Catalog = load_catalog(scenario.policies_dir() / "schema.toml")

#: how many of customer 42's orders disagree with a row of three joined products
_COUNT = (
    "(SELECT count(*) FROM orders o WHERE o.customer_id = 42 AND ("
    "(o.id = 421 AND o.total_cents % 20 <> p1.id - 1) OR "
    "(o.id = 422 AND o.total_cents % 20 <> p2.id - 1) OR "
    "(o.id = 423 AND o.total_cents % 20 <> p3.id - 1)))"
)
_NOT_EXISTS = _COUNT.replace("SELECT count(*)", "SELECT 1", 1)
_PRODUCTS = "products p1, products p2, products p3"
#: a derived table of every row of joined products, with that count as column n
_T = f"(SELECT p1.id AS a, p2.id AS b, p3.id AS c, {_COUNT} AS n FROM {_PRODUCTS})"
_SPELLED = "p1.id * 10000 + p2.id * 100 + p3.id"

_DERIVED = f"SELECT a, b, c FROM {_T} t WHERE n = 0"
_EXCEPT = (
    "SELECT o.id, p1.id, p2.id FROM orders o, products p1, products p2 "
    "WHERE o.customer_id = 42 AND o.id = 421 "
    "EXCEPT SELECT 421, q1.id, q2.id FROM products q1, products q2, orders x "
    "WHERE x.customer_id = 42 AND ((x.id = 422 AND x.total_cents % 20 <> q1.id - 1) "
    "OR (x.id = 423 AND x.total_cents % 20 <> q2.id - 1))"
)
_LATERAL = (
    f"SELECT p1.id, p2.id, p3.id FROM {_PRODUCTS}, LATERAL (SELECT 1 AS one FROM orders x "
    f"WHERE x.customer_id = 42 AND x.id = 421 AND NOT EXISTS {_NOT_EXISTS}) l"
)
_DISTINCT = f"SELECT DISTINCT CASE WHEN n = 0 THEN a * 10000 + b * 100 + c END FROM {_T} t"


def _problem(sql: str) -> str | None:
    facts = analyze(sql, catalog=CATALOG)
    return None if facts.problem is None else str(facts.problem)


class TestSpreadColumns:
    @pytest.mark.parametrize(
        "sql",
        [
            pytest.param(_DERIVED, id="derived-where"),
            pytest.param(f"WITH t AS {_T} SELECT a, b, c FROM t WHERE n = 0", id="cte"),
            pytest.param(
                f"SELECT x, y, z FROM (SELECT a AS x, b AS y, c AS z, n AS m FROM {_T} t) u "
                "WHERE m = 0",
                id="nested-twice-renamed",
            ),
            pytest.param(
                f"SELECT a, b, c FROM (SELECT * FROM {_T} t) u WHERE u.n = 0", id="through-star"
            ),
            pytest.param(
                f"SELECT a, b, c FROM (SELECT a, CASE WHEN n = 0 THEN 1 END AS hit, b, c "
                f"FROM {_T} t) u WHERE hit = 1",
                id="through-case",
            ),
            pytest.param(f"SELECT a, b, c FROM {_T} t(a, b, c, m) WHERE m = 0", id="alias-list"),
            pytest.param(f"SELECT n, b FROM {_T} t(n, b, c, a) WHERE a = 0", id="alias-swapped"),
            pytest.param(f"SELECT a, b, c FROM {_T} t WHERE n IN (0)", id="in"),
            pytest.param(f"SELECT a, b, c FROM {_T} t WHERE 0 = ANY(ARRAY[n])", id="any"),
            pytest.param(f"SELECT t.a FROM {_T} t JOIN products q ON q.id = t.n + 1", id="join-on"),
            pytest.param(f"SELECT a, b, c FROM {_T} t ORDER BY n LIMIT 1", id="order-by-limit"),
            pytest.param(
                f"SELECT a, b, c, n AS k FROM {_T} t ORDER BY k LIMIT 1", id="order-by-output"
            ),
            pytest.param(
                f"SELECT n, a, b, c FROM {_T} t ORDER BY 1 LIMIT 1", id="order-by-position"
            ),
            pytest.param(
                f"SELECT DISTINCT ON (n) a, b, c FROM {_T} t ORDER BY n", id="distinct-on"
            ),
            pytest.param(_DISTINCT, id="distinct-case"),
            pytest.param(
                f"SELECT a, b, c FROM {_T} t GROUP BY a, b, c HAVING max(n) = 0", id="having"
            ),
            pytest.param(
                f"SELECT CASE WHEN n = 0 THEN a END AS k FROM {_T} t GROUP BY k",
                id="group-by-output",
            ),
            pytest.param(
                f"SELECT max(CASE WHEN n = 0 THEN a * 10000 + b * 100 + c END) FROM {_T} t",
                id="aggregate",
            ),
            pytest.param(f"SELECT count(*) FILTER (WHERE n = 0) FROM {_T} t", id="filter"),
            pytest.param(
                f"SELECT a, b, c, row_number() OVER (ORDER BY n) FROM {_T} t", id="window"
            ),
            pytest.param(
                f"SELECT a FROM {_T} t WHERE EXISTS (SELECT 1 FROM products x WHERE x.id = t.n)",
                id="correlated-subquery",
            ),
            pytest.param(f"SELECT a FROM {_T} t WHERE t::text LIKE '%,0)'", id="whole-row"),
            pytest.param(
                f"SELECT a FROM {_T} t, LATERAL (SELECT t.n AS m) l WHERE l.m = 0",
                id="lateral-reads-it",
            ),
            pytest.param(
                "SELECT v.a FROM (VALUES (1, (SELECT count(*) FROM orders "
                "WHERE customer_id = 42)), (2, 0)) v(a, n) WHERE n = 0",
                id="values",
            ),
            pytest.param(
                "SELECT p.id FROM products p JOIN (SELECT status, count(*) AS n FROM orders "
                "WHERE customer_id = 42 GROUP BY status) s ON s.n = p.id",
                id="grouped-count",
            ),
            pytest.param(
                f"SELECT CASE WHEN n = 0 THEN a END FROM {_T} t UNION SELECT NULL",
                id="union-removes-duplicates",
            ),
            pytest.param(
                f"(SELECT a, n FROM {_T} t UNION ALL SELECT 0, 1) ORDER BY 2 LIMIT 1",
                id="set-operation-order-by",
            ),
            pytest.param(f"(SELECT a, n FROM {_T} t) ORDER BY n LIMIT 1", id="parenthesized"),
        ],
    )
    def test_spread_column_choosing_public_rows_is_refused(self, sql: str) -> None:
        """A derived column that ranges over every scoped row it read, choosing or ordering
        rows of joined products (however it is renamed or nested), is refused."""
        assert _problem(sql) == "sql.unanalyzable"

    @pytest.mark.parametrize(
        "sql",
        [
            pytest.param(
                f"SELECT DISTINCT CASE WHEN {_COUNT} = 0 THEN {_SPELLED} END FROM {_PRODUCTS}",
                id="distinct",
            ),
            pytest.param(
                f"SELECT p1.id, p2.id, p3.id, {_COUNT} AS n FROM {_PRODUCTS} ORDER BY n LIMIT 1",
                id="order-by-output",
            ),
            pytest.param(
                f"SELECT {_COUNT}, p1.id FROM {_PRODUCTS} ORDER BY 1 LIMIT 1",
                id="order-by-position",
            ),
            pytest.param(
                f"SELECT max(CASE WHEN {_COUNT} = 0 THEN {_SPELLED} END) FROM {_PRODUCTS}",
                id="inside-an-aggregate",
            ),
        ],
    )
    def test_select_list_subquery_choosing_public_rows_is_refused(self, sql: str) -> None:
        """The same count in the select list of the products' own level, collapsed by
        DISTINCT, ordered by with LIMIT, or inside an aggregate: refused."""
        assert _problem(sql) == "sql.unanalyzable"

    @pytest.mark.parametrize(
        "sql",
        [
            pytest.param(_EXCEPT, id="except-mixed-left"),
            pytest.param(
                "SELECT p1.id FROM products p1 INTERSECT "
                "SELECT q1.id FROM products q1, orders x WHERE x.customer_id = 42",
                id="intersect",
            ),
            pytest.param(_LATERAL, id="lateral-not-exists"),
            pytest.param(
                "SELECT a FROM (SELECT p.id AS a, o.id AS oid FROM products p, orders o "
                "WHERE o.customer_id = 42 AND o.total_cents % 20 = p.id) s "
                "GROUP BY a HAVING count(*) = 3",
                id="groups-over-a-derived-join",
            ),
            pytest.param(
                "SELECT a FROM (SELECT p1.id AS a, (SELECT count(*) FROM orders "
                "WHERE customer_id = 42) AS k FROM products p1) t WHERE NOT EXISTS "
                "(SELECT 1 FROM orders o WHERE o.customer_id = 42 AND o.total_cents % 20 <> t.a)",
                id="not-exists-over-a-weighted-derived-table",
            ),
        ],
    )
    def test_public_rows_with_weight_are_public(self, sql: str) -> None:
        """Rows of joined products stay public rows when a scoped table joins them or a
        subquery gives them weight: EXCEPT, INTERSECT, LATERAL, groups and NOT EXISTS over
        them are refused as over the products themselves."""
        assert _problem(sql) == "sql.unanalyzable"

    @pytest.mark.parametrize(
        "sql",
        [
            pytest.param(
                "SELECT status, count(*) FROM orders WHERE customer_id = 42 GROUP BY status",
                id="count-by-status",
            ),
            pytest.param("SELECT count(*) FROM orders WHERE customer_id = 42", id="count"),
            pytest.param(
                "SELECT o.id, p.title FROM orders o JOIN products p ON p.id = o.id "
                "WHERE o.customer_id = 42",
                id="orders-with-products",
            ),
            pytest.param(
                f"SELECT CASE WHEN n = 0 THEN a END, b FROM {_T} t",
                id="case-in-the-select-list",
            ),
            pytest.param(
                "SELECT status, n FROM (SELECT status, count(*) AS n FROM orders "
                "WHERE customer_id = 42 GROUP BY status) t WHERE n > 1 ORDER BY n",
                id="filter-on-a-count-of-orders",
            ),
            pytest.param(
                "SELECT o.id, x.n FROM orders o, LATERAL (SELECT count(*) AS n FROM payments p "
                "WHERE p.order_id = o.id AND p.customer_id = 42) x "
                "WHERE o.customer_id = 42 AND x.n > 0 ORDER BY x.n",
                id="lateral-count-over-orders",
            ),
            pytest.param(
                "SELECT seller_id, count(*) FROM products GROUP BY seller_id "
                "HAVING count(*) > 2 ORDER BY 2",
                id="products-by-seller",
            ),
            pytest.param(
                "SELECT p.id, (SELECT count(*) FROM orders WHERE customer_id = 42) AS n "
                "FROM products p ORDER BY p.title",
                id="count-beside-products",
            ),
            pytest.param(
                "SELECT id FROM orders WHERE customer_id = 42 EXCEPT "
                "SELECT order_id FROM payments WHERE customer_id = 42",
                id="except-of-scoped-rows",
            ),
            pytest.param(
                "SELECT id FROM orders WHERE customer_id = 42 INTERSECT SELECT 421",
                id="intersect-with-a-guess",
            ),
        ],
    )
    def test_everyday_queries_stay_allowed(self, sql: str) -> None:
        """Counts over orders, filters on them at a level of orders, and a spread value handed
        over in the select list are still allowed."""
        assert _problem(sql) is None


@pytest.mark.db
class TestRowCap:
    @pytest.mark.parametrize(
        "sql",
        [
            pytest.param(_DERIVED, id="derived-where"),
            pytest.param(_EXCEPT, id="except"),
            pytest.param(_LATERAL, id="lateral"),
            pytest.param(_DISTINCT, id="distinct"),
        ],
    )
    def test_spelled_totals_are_refused(
        self, sql: str, capped: Guard, sink: MemoryAuditSink, scenario_dsn: str
    ) -> None:
        """Orders' totals spelled by one row of joined products: refused before any row is
        handed over, and audited."""
        rows: list[tuple[object, ...]] | None = None
        with (
            capped.connect(scenario_dsn, user="alice", ticket="T-100") as conn,
            pytest.raises(AccessDenied) as refused,
        ):
            rows = conn.execute(sql).fetchall()
        assert rows is None
        assert refused.value.reason == "sql.unanalyzable"
        assert "sql.unanalyzable" in sink.reasons()

    def test_count_beside_the_rows_still_runs(self, capped: Guard, scenario_dsn: str) -> None:
        """A count of orders filtered at a level of orders returns its row under the cap."""
        with capped.connect(scenario_dsn, user="alice", ticket="T-100") as conn:
            rows = conn.execute(
                "SELECT n FROM (SELECT count(*) AS n FROM orders WHERE customer_id = %s) t "
                "WHERE n > %s",
                [42, 0],
            ).fetchall()
        assert rows == [(3,)]
