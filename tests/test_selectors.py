"""Counts and ranks over rows an expression chooses weigh as max(CASE ..) does (the count pivot).

Red team, 2026-12: forty-two ``count(*) FILTER (WHERE rn = k AND bit b of
total_cents)`` calls in one result row spelled out the totals of customer
42's three orders through a guard capped at two rows a statement, and the
ledger counted one row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from accessguard import Throttled, scenario
from accessguard.analysis import analyze
from accessguard.policy.catalog import Catalog, load_catalog

if TYPE_CHECKING:
    from accessguard import Guard

CATALOG: Catalog = load_catalog(scenario.policies_dir() / "schema.toml")

#: customer 42's orders, numbered
_NUMBERED = (
    "(SELECT id, total_cents, row_number() OVER (ORDER BY id) AS rn "
    "FROM orders WHERE customer_id = 42) s"
)
_BITS = 14  # total_cents of the scenario's orders fit in 14 bits


def _pivot(rows: int) -> str:
    """One result row holding every bit of the totals of ``rows`` numbered orders."""
    calls = ", ".join(
        f"count(*) FILTER (WHERE rn = {k} AND (total_cents / {1 << b}) % 2 = 1)"
        for k in range(1, rows + 1)
        for b in range(_BITS)
    )
    return f"SELECT {calls} FROM {_NUMBERED}"


def weight(sql: str) -> int:
    facts = analyze(sql, catalog=CATALOG)
    assert facts.problem is None, facts.detail
    return facts.row_weight


class TestCountsThatChoose:
    @pytest.mark.parametrize(
        ("sql", "expected"),
        [
            pytest.param(
                "SELECT count(*) FILTER (WHERE id = 421), count(*) FILTER (WHERE id = 422) "
                "FROM orders WHERE customer_id = 42",
                3,
                id="count-filter",
            ),
            pytest.param(
                "SELECT count(CASE WHEN id = 421 THEN 1 END), count(CASE WHEN id = 422 THEN 1 END) "
                "FROM orders WHERE customer_id = 42",
                3,
                id="count-case",
            ),
            pytest.param(
                f"SELECT count(*) FILTER (WHERE rn = 1) OVER () FROM {_NUMBERED} LIMIT 1",
                2,
                id="window-count-filter",
            ),
            pytest.param(
                f"SELECT count(*) OVER (PARTITION BY rn = 1 AND total_cents % 2 = 1) "
                f"FROM {_NUMBERED}",
                2,
                id="window-count-partition-by-expression",
            ),
            pytest.param(
                f"SELECT row_number() OVER (ORDER BY rn = 1 AND total_cents % 2 = 1) "
                f"FROM {_NUMBERED}",
                2,
                id="row-number-over-expression",
            ),
            pytest.param(
                "SELECT count(x) FROM (SELECT CASE WHEN rn = 1 THEN 1 END AS x "
                f"FROM {_NUMBERED}) t",
                2,
                id="count-of-a-derived-expression",
            ),
            pytest.param(_pivot(3), 1 + 3 * _BITS, id="bit-pivot"),
        ],
    )
    def test_weigh_as_a_pivot(self, sql: str, expected: int) -> None:
        """A count or rank of rows an expression chooses carries a bit of those rows."""
        assert weight(sql) == expected

    @pytest.mark.parametrize(
        "sql",
        [
            pytest.param(
                "SELECT count(*), count(id), count(DISTINCT status) "
                "FROM orders WHERE customer_id = 42",
                id="plain-counts",
            ),
            pytest.param(
                "SELECT status, count(*) FROM orders WHERE customer_id = 42 GROUP BY status",
                id="count-per-group",
            ),
            pytest.param(
                "SELECT id, row_number() OVER (PARTITION BY customer_id ORDER BY created_at DESC) "
                "FROM orders WHERE customer_id = 42",
                id="row-number-over-columns",
            ),
            pytest.param(
                "SELECT count(s.id) FROM (SELECT id FROM orders WHERE customer_id = 42) s",
                id="count-of-a-derived-column",
            ),
        ],
    )
    def test_plain_counts_stay_free(self, sql: str) -> None:
        """A count of a bare column, or a window over bare columns, chooses nothing itself."""
        assert weight(sql) == 1


@pytest.mark.db
class TestRowCap:
    def test_bit_pivot_is_refused_over_the_cap(self, capped: Guard, scenario_dsn: str) -> None:
        """Three orders' totals packed as counts into one row are over a cap of two rows."""
        with (
            capped.connect(scenario_dsn, user="alice", ticket="T-100") as conn,
            pytest.raises(Throttled) as refused,
        ):
            conn.execute(_pivot(3)).fetchall()
        assert refused.value.reason == "throttle.rows"
        # the message says why a cap of two admits no row at all
        assert "carries" in str(refused.value)
        assert "more than 0 rows" not in str(refused.value)

    def test_plain_count_still_runs(self, capped: Guard, scenario_dsn: str) -> None:
        """count(*) of customer 42's three orders is one row under the same cap."""
        with capped.connect(scenario_dsn, user="alice", ticket="T-100") as conn:
            rows = conn.execute(
                "SELECT count(*) FROM orders WHERE customer_id = %s", [42]
            ).fetchall()
        assert rows == [(3,)]
