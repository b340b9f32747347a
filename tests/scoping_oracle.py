"""Oracles for the name-scoping tests: column grants as PostgreSQL checks them, and a grammar.

``ColumnRoles`` makes one PostgreSQL role per employee and ticket holding
exactly the columns the policy grants: PostgreSQL checks column privileges on
the columns its own name resolution finds, so a statement the guard allows
that fails there with a permission error read a column the guard missed.
``scoping_selects`` generates SELECTs in which allowed columns are aliased
like forbidden ones, beside joins, LATERAL items and correlated subqueries.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import psycopg
from hypothesis import strategies as st
from psycopg import sql as pgsql
from test_attacks import valid_ticket

if TYPE_CHECKING:
    from accessguard.policy.rules import Policy
    from accessguard.tickets.stores import Ticket


class ColumnRoles:
    """One PostgreSQL role per employee and ticket, granted exactly the policy's columns.

    PostgreSQL checks column privileges on the columns its own name resolution
    finds (whole-row references, USING and NATURAL columns included), so a
    statement the guard allows must run under that role without a permission
    error: otherwise the guard missed a column the statement reads.
    """

    def __init__(self, dsn: str, policy: Policy, tickets: list[Ticket]) -> None:
        self._admin = psycopg.connect(dsn, autocommit=True)
        self._policy, self._tickets = policy, tickets
        self._prefix = f"ag_cols_{uuid.uuid4().hex[:8]}"
        self._roles: dict[tuple[str, str | None], str] = {}

    def role(self, user: str, ticket_id: str | None) -> str:
        """The role for ``user`` on ``ticket_id`` (created on first use)."""
        found = self._roles.get((user, ticket_id))
        if found is not None:
            return found
        name = f"{self._prefix}_{len(self._roles)}"
        ticket = valid_ticket(self._tickets, user, ticket_id)
        kind = ticket.kind if ticket is not None else None
        role = pgsql.Identifier(name)
        self._admin.execute(pgsql.SQL("CREATE ROLE {} NOLOGIN").format(role))
        self._roles[user, ticket_id] = name
        for table, column, action in sorted(
            self._policy.granted(self._policy.roles_of(user), kind)
        ):
            privilege = "UPDATE" if action == "update" else "SELECT"
            self._admin.execute(
                pgsql.SQL("GRANT {} ({}) ON {} TO {}").format(
                    pgsql.SQL(privilege),
                    pgsql.Identifier(column),
                    pgsql.Identifier(*table.split(".")),
                    role,
                )
            )
        return name

    def close(self) -> None:
        """Drop every role made (their grants first)."""
        for name in self._roles.values():
            self._admin.execute(pgsql.SQL("DROP OWNED BY {}").format(pgsql.Identifier(name)))
            self._admin.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(name)))
        self._admin.close()


#: names that mean different things at different places: forbidden columns, aliases of them
_NAMES = ("card_token", "card_last4", "email", "t", "n", "a.card_token")
#: FROM items whose columns shadow (or are named like) forbidden ones; {e} is an expression
_ITEMS = (
    "(SELECT card_last4 AS card_token, customer_id FROM payments WHERE customer_id = 42) AS a",
    "(VALUES (1)) AS b(n)",
    "(SELECT id AS x, title FROM products WHERE id < 3) AS pr",
    "LATERAL (SELECT {e} AS t) AS l",
    "(SELECT {e} AS t) AS l",
)
_JOINS = (", {i}", " JOIN {i} ON {e} IS NOT NULL", " LEFT JOIN {i} ON {e} = {e}", " CROSS JOIN {i}")


@st.composite
def _expr(draw: st.DrawFn, depth: int = 0) -> str:
    """An expression over the tricky names: windows, casts, correlated subqueries."""
    name = draw(st.sampled_from(_NAMES))
    if depth > 1 or draw(st.booleans()):
        return name
    inner = draw(_expr(depth + 1))
    shapes = (
        "lower({}::text)",
        "rank() OVER (ORDER BY {})",
        "count(*) OVER (PARTITION BY {})",
        "(SELECT {} FROM products AS q LIMIT 1)",
        "({} || '')",
    )
    return draw(st.sampled_from(shapes)).format(inner)


@st.composite
def scoping_selects(draw: st.DrawFn) -> str:
    """A SELECT for alice in which an allowed column is aliased like a forbidden one.

    Either the alias is an output name its own clauses may or may not see
    (ORDER BY, windows, GROUP BY, WHERE), or a derived table carrying it sits
    beside other FROM items, joins and correlated subqueries of a scalar
    subquery whose outer level reads payments.
    """
    clause = draw(st.sampled_from((" ORDER BY {}", " WHERE {} IS NOT NULL", " GROUP BY {}", "")))
    if draw(st.booleans()):
        window = draw(st.sampled_from(("", ", {} AS w")))
        head = "SELECT id, card_last4 AS card_token" + window.format(draw(_expr()))
        return f"{head} FROM payments WHERE customer_id = 42" + clause.format(draw(_expr()))
    rest = draw(st.lists(st.sampled_from(_ITEMS[1:]), min_size=1, max_size=2, unique=True))
    from_ = _ITEMS[0]
    for item in rest:
        join = draw(st.sampled_from(_JOINS))
        from_ += join.format(i=item, e="{e}").replace("{e}", draw(_expr(1)))
    inner = f"SELECT {draw(_expr())} FROM {from_}" + clause.format(draw(_expr())) + " LIMIT 1"
    return f"SELECT p.id, ({inner}) AS v FROM payments AS p WHERE p.customer_id = 42"
