"""Generated joins over inconsistent data (issue 16): allowed means nothing was trimmed.

The scenario gets payments that disagree with their orders (9001: order 421
of customer 42, paid by customer 7; 9002: customer 42's payment of customer
7's order 71; 9003: no customer). Random joins of orders, payments and
customers (inner, LEFT, RIGHT, FULL; ON and WHERE equalities, some under OR,
some naming customer 7; EXISTS, IN and scalar subqueries over payments, an
orders derived table) run as alice on T-100 through a guarded connection,
probes included. Whatever the guard allows must return exactly what the
statement returns run raw on the full database: a row of another customer
the first wall let through would be trimmed by the second wall, and the
results would differ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from casefiles import PgServerLike, database_copy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accessguard import AccessGuardError, Guard

if TYPE_CHECKING:
    from collections.abc import Iterator

INCONSISTENT = """
INSERT INTO payments (id, order_id, customer_id, amount_cents, card_last4, card_token) VALUES
  (9001, 421, 7, 100, '9001', 'tok_9001'),
  (9002, 71, 42, 100, '9002', 'tok_9002'),
  (9003, 421, NULL, 100, '9003', 'tok_9003');
"""

#: alias -> (table, columns a join may compare)
TABLES = {
    "o": ("orders", ("id", "customer_id")),
    "p": ("payments", ("id", "order_id", "customer_id")),
    "c": ("customers", ("id",)),
    "o2": ("orders", ("id", "customer_id")),
}
#: alias -> its scope column
SCOPE = {"o": "customer_id", "p": "customer_id", "c": "id", "o2": "customer_id"}


@st.composite
def joins(draw: st.DrawFn) -> str:
    """A SELECT of 2-4 of the aliases, joined at random, with random WHERE conjuncts."""
    aliases = draw(st.permutations(list(TABLES)).map(lambda xs: xs[: draw(st.integers(2, 4))]))

    def equality(left: str, rights: list[str]) -> str:
        right = draw(st.sampled_from(rights))
        a = draw(st.sampled_from(TABLES[left][1]))
        b = draw(st.sampled_from(TABLES[right][1]))
        return f"{left}.{a} = {right}.{b}"

    def scope_test(alias: str) -> str:
        return f"{alias}.{SCOPE[alias]} = {draw(st.sampled_from([42, 42, 7]))}"

    parts = [f"{TABLES[aliases[0]][0]} {aliases[0]}"]
    for n, alias in enumerate(aliases[1:], start=1):
        kind = draw(
            st.sampled_from(["JOIN", "JOIN", "LEFT JOIN", "LEFT JOIN", "RIGHT JOIN", "FULL JOIN"])
        )
        on = [equality(alias, aliases[:n])]
        extra = draw(st.sampled_from(["", "and-scope", "or", "and-eq"]))
        if extra == "and-scope":
            on.append(scope_test(draw(st.sampled_from(aliases[: n + 1]))))
        elif extra == "or":
            on = [f"({on[0]} OR {equality(alias, aliases[:n])})"]
        elif extra == "and-eq":
            on.append(equality(alias, aliases[:n]))
        parts.append(f"{kind} {TABLES[alias][0]} {alias} ON {' AND '.join(on)}")
    where = [scope_test(draw(st.sampled_from(aliases)))]
    for _ in range(draw(st.integers(0, 2))):
        choice = draw(st.sampled_from(["scope", "key", "or", "eq", "exists", "in"]))
        alias = draw(st.sampled_from(aliases))
        column = draw(st.sampled_from(TABLES[alias][1]))
        bound = draw(st.sampled_from(["", " AND q.customer_id = 42", " AND q.customer_id = 7"]))
        if choice == "exists":
            where.append(
                f"EXISTS (SELECT 1 FROM payments q WHERE q.order_id = {alias}.{column}{bound})"
            )
        elif choice == "in":
            where.append(
                f"{alias}.{column} IN (SELECT q.order_id FROM payments q WHERE q.id > 0{bound})"
            )
        elif choice == "scope":
            where.append(scope_test(alias))
        elif choice == "key":
            where.append(f"{alias}.id = {draw(st.sampled_from([421, 422, 71, 9001, 9002]))}")
        elif choice == "or":
            where.append(f"({scope_test(alias)} OR {alias}.id > 0)")
        else:
            where.append(equality(alias, [a for a in aliases if a != alias]))
    columns = ", ".join(f"{a}.id" for a in aliases)
    if draw(st.booleans()):
        alias = draw(st.sampled_from(aliases))
        column = draw(st.sampled_from(TABLES[alias][1]))
        columns += f", (SELECT max(q.id) FROM payments q WHERE q.order_id = {alias}.{column})"
    if aliases[0] in ("o", "o2") and draw(st.booleans()):
        value = draw(st.sampled_from([42, 42, 7]))
        derived = f"(SELECT id, customer_id FROM orders WHERE customer_id = {value}) {aliases[0]}"
        parts[0] = derived
    return f"SELECT {columns} FROM {' '.join(parts)} WHERE {' AND '.join(where)}"


@pytest.fixture(scope="module", params=["consistent", "inconsistent"])
def connections(
    request: pytest.FixtureRequest,
    unlimited: Guard,
    pg_server: PgServerLike,
    scenario_template: str,
) -> Iterator[tuple[Any, Any]]:
    """(alice's guarded connection, a raw one) on the scenario, as is or made inconsistent.

    On the consistent one the probes pass and what they let through is compared;
    on the inconsistent one they must refuse what would be trimmed.
    """
    setup = INCONSISTENT if request.param == "inconsistent" else None
    with (
        database_copy(pg_server, scenario_template, prefix="ag_rel_fuzz", setup=setup) as dsn,
        unlimited.connect(dsn, user="alice", ticket="T-100") as guarded,
        psycopg.connect(dsn) as raw,
    ):
        yield guarded, raw


def _rows(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    try:
        return sorted(conn.execute(sql).fetchall(), key=repr)
    finally:
        conn.rollback()


@pytest.mark.db
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sql=joins())
def test_allowed_joins_are_not_trimmed(connections: tuple[Any, Any], sql: str) -> None:
    """An allowed generated join returns exactly its raw rows (nothing trimmed, nothing more)."""
    guarded, raw = connections
    try:
        got = _rows(guarded, sql)
    except AccessGuardError:
        guarded.rollback()
        return
    assert got == _rows(raw, sql), sql
