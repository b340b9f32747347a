"""The statements the workloads send, and the goals of issue 5 they are held to."""

from __future__ import annotations

from benchmarks.timing import Goal

REPEATED = Goal(name="repeated shape: guarded / raw median", op="<=", bound=1.03)
VARYING = Goal(name="literals inlined and varying: guarded / raw median", op="<=", bound=1.25)
FIRST_SIGHT = Goal(name="first sight: analysis + decision / sqlglot parse", op="<=", bound=2.0)
POLICY_SIZE = Goal(name="100,000 policy lines: decision / decision with 10", op="<=", bound=1.2)
THREADS = Goal(name="8 threads: guarded / raw throughput", op=">=", bound=0.9)

POINT = "SELECT id, name, email FROM customers WHERE id = %s"
#: an order by its primary key only (Session.get): the guard probes its owner first
KEYED = "SELECT id, customer_id, status FROM orders WHERE orders.id = %s"
#: varies an integer literal that never excludes a row (customer 42 has 3 orders)
VARYING_SQL = "SELECT id, status, total_cents FROM orders WHERE customer_id = 42 AND id <> {n}"
JOIN = (
    "SELECT c.id, c.name, o.id, o.status, o.total_cents, p.amount_cents, p.card_last4 "
    "FROM customers AS c "
    "JOIN orders AS o ON o.customer_id = c.id "
    "JOIN payments AS p ON p.order_id = o.id "
    "WHERE c.id = %s AND o.customer_id = %s AND p.customer_id = %s "
    "ORDER BY o.id"
)
ANALYTIC = """\
WITH daily AS (
  SELECT m.product_id, m.day, SUM(m.units) AS units, SUM(m.revenue_cents) AS revenue
  FROM sales_metrics AS m
  WHERE m.day >= DATE '2020-01-01'
  GROUP BY m.product_id, m.day
), ranked AS (
  SELECT d.product_id, d.units, d.revenue,
         ROW_NUMBER() OVER (PARTITION BY d.product_id ORDER BY d.revenue DESC) AS rn
  FROM daily AS d
)
SELECT {alias}.id, {alias}.title, {alias}.price_cents,
       COUNT(*) AS days, SUM(r.units) AS units, AVG(r.revenue) AS avg_revenue,
       MAX(r.revenue) AS best_day, COALESCE(MIN(r.units), 0) AS worst_units,
       CASE WHEN SUM(r.units) > 100 THEN 'high'
            WHEN SUM(r.units) > 10 THEN 'mid'
            ELSE 'low' END AS band,
       SUM(CASE WHEN r.rn <= 3 THEN r.revenue ELSE 0 END) AS top3_revenue
FROM ranked AS r
JOIN products AS {alias} ON {alias}.id = r.product_id
WHERE {alias}.price_cents BETWEEN {low} AND 1000000 AND {alias}.title LIKE 'Product-{pct}'
GROUP BY {alias}.id, {alias}.title, {alias}.price_cents
HAVING COUNT(*) > 0
ORDER BY units DESC, {alias}.id
LIMIT 50"""
ANALYTIC_PARAM = ANALYTIC.format(alias="p", low="%s", pct="%%")
REFUSED = "SELECT id, card_token FROM payments WHERE customer_id = %s"  # card_token: never
UNSCOPED = "SELECT id, title FROM products WHERE id = %s"

#: first_sight shapes: a table alias that differs per statement makes every text
#: (and every shape: fingerprints keep table aliases) new to the guard
FIRST_SIGHT_SHAPES: dict[str, tuple[str, str, str | None]] = {
    "first_sight": (
        "SELECT {a}.id, {a}.name, {a}.email FROM customers AS {a} WHERE {a}.id = 42",
        "alice",
        "T-100",
    ),
    "first_sight_join": (
        (
            "SELECT {a}.id, {a}.name, o.id, o.status, p.amount_cents "
            "FROM customers AS {a} JOIN orders AS o ON o.customer_id = {a}.id "
            "JOIN payments AS p ON p.order_id = o.id "
            "WHERE {a}.id = 42 AND o.customer_id = 42 AND p.customer_id = 42"
        ),
        "alice",
        "T-100",
    ),
    "first_sight_analytic": (ANALYTIC.format(alias="{a}", low="100", pct="%"), "dave", None),
}

POLICY_LINES = (10, 1_000, 100_000)
THREAD_COUNT = 8
