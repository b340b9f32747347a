"""The analyser: statement text -> facts, failing closed on whatever it cannot read."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from accessguard import scenario
from accessguard.analysis import Const, Facts, Param, analyze, subject_marker
from accessguard.catalog import Catalog, load_catalog
from accessguard.errors import Reason

CATALOG: Catalog = load_catalog(scenario.policies_dir() / "schema.toml")


def facts(sql: str, *, params: bool = False, dialect: str = "postgres") -> Facts:
    return analyze(sql, catalog=CATALOG, dialect=dialect, params=params)


def scopes(f: Facts) -> list[tuple[str, tuple[Const | Param, ...]]]:
    return [(s.table, s.values) for s in f.scopes]


class TestTables:
    @pytest.mark.parametrize(
        "sql",
        [
            "SELECT id FROM customers WHERE id = 42",
            'SELECT "id" FROM "public"."customers" WHERE "id" = 42',
            "SELECT c.id FROM customers AS c WHERE c.id = 42",
            "select id from PUBLIC.Customers where id = 42",
        ],
    )
    def test_spellings_resolve_to_one_table(self, sql: str) -> None:
        """Aliases, quoting of lower-case names and schema qualification name the same table."""
        f = facts(sql)
        assert f.problem is None
        assert f.tables == {"public.customers"}
        assert f.reads == {("public.customers", "id")}

    def test_quoted_mixed_case_is_another_table(self) -> None:
        """A quoted mixed-case name is a different object and is refused as unknown."""
        assert facts('SELECT id FROM "Customers"').problem is Reason.TABLE_UNKNOWN

    def test_other_schema_is_unknown(self) -> None:
        """archive.customers is not public.customers."""
        assert (
            facts("SELECT id FROM archive.customers WHERE id = 42").problem is Reason.TABLE_UNKNOWN
        )

    @pytest.mark.parametrize(
        "sql",
        [
            "SELECT * FROM pg_catalog.pg_class",
            "SELECT * FROM pg_user",
            "SELECT table_name FROM information_schema.tables",
        ],
    )
    def test_system_catalogs_are_refused(self, sql: str) -> None:
        """pg_catalog, information_schema and pg_* relations are refused."""
        assert facts(sql).problem is Reason.CATALOG_FORBIDDEN

    def test_unreachable_table_is_refused(self) -> None:
        """The tickets table is never reachable, not even for reading."""
        assert facts("SELECT id FROM tickets").problem is Reason.TABLE_FORBIDDEN

    def test_cte_shadowing_a_table_reads_what_the_cte_reads(self) -> None:
        """A CTE named like a table hides it; the reads are those inside the CTE."""
        f = facts(
            "WITH customers(id, name) AS (SELECT 42, card_token FROM payments) "
            "SELECT id, name FROM customers WHERE id = 42"
        )
        assert ("public.payments", "card_token") in f.reads
        assert all(t != "public.customers" for t, _c in f.reads)

    def test_union_reads_both_branches(self) -> None:
        """Both sides of a set operation are analyzed."""
        f = facts("SELECT name FROM customers WHERE id = 42 UNION SELECT status FROM orders")
        assert {("public.customers", "name"), ("public.orders", "status")} <= f.reads


class TestColumns:
    def test_star_reads_every_column(self) -> None:
        """SELECT * reads every declared column of the table."""
        f = facts("SELECT * FROM payments WHERE customer_id = 42")
        assert ("public.payments", "card_token") in f.reads

    def test_whole_row_reference_reads_every_column(self) -> None:
        """SELECT c FROM customers c is a whole-row read."""
        f = facts("SELECT c FROM customers c WHERE c.id = 42")
        assert ("public.customers", "created_at") in f.reads

    def test_where_and_order_by_columns_are_reads(self) -> None:
        """Probing a column in WHERE or ORDER BY counts as reading it."""
        f = facts("SELECT id FROM customers WHERE id = 42 AND email LIKE 'a%' ORDER BY phone")
        assert {("public.customers", "email"), ("public.customers", "phone")} <= f.reads

    def test_unknown_column_is_refused(self) -> None:
        """A column that is not in the schema cannot be accounted for."""
        assert facts("SELECT secret FROM customers WHERE id = 42").problem is Reason.COLUMN_UNKNOWN

    def test_update_writes_and_reads(self) -> None:
        """UPDATE writes its SET columns and reads its WHERE columns."""
        f = facts("UPDATE orders SET status = 'x' WHERE customer_id = 42 AND id = 421")
        assert f.kind == "update"
        assert f.writes == {("public.orders", "status")}
        assert ("public.orders", "customer_id") in f.reads


class TestScope:
    @pytest.mark.parametrize(
        ("sql", "values"),
        [
            ("SELECT id FROM customers WHERE id = 42", (Const(42),)),
            ("SELECT id FROM customers WHERE (id = 42) AND name = 'x'", (Const(42),)),
            ("SELECT id FROM customers WHERE id = 42::bigint", (Const(42),)),
            ("SELECT id FROM customers WHERE id IN (42)", (Const(42),)),
            ("SELECT id FROM customers WHERE id = $1", (Param(0),)),
            ("SELECT id FROM customers WHERE id = 42 OR name = 'x'", ()),
            ("SELECT id FROM customers WHERE id = 42 | 1", None),
            ("SELECT id FROM customers WHERE NOT id <> 42", ()),
            ("SELECT id FROM customers", ()),
        ],
    )
    def test_conjunctive_equalities_bind(
        self, sql: str, values: tuple[Const | Param, ...] | None
    ) -> None:
        """Only an equality (or one-value IN) in the AND chain binds the scope column."""
        f = facts(sql, params="$1" in sql)
        if values is None:
            assert f.problem is not None
        else:
            assert scopes(f) == [("public.customers", values)]

    def test_join_equality_carries_scope(self) -> None:
        """An inner join's equality carries the customer from one table to the other."""
        f = facts(
            "SELECT o.id FROM customers c JOIN orders o ON o.customer_id = c.id WHERE c.id = 42"
        )
        assert sorted(scopes(f)) == [
            ("public.customers", (Const(42),)),
            ("public.orders", (Const(42),)),
        ]

    def test_outer_join_on_binds_nothing(self) -> None:
        """A LEFT JOIN's ON clause never restricts its preserved side."""
        f = facts(
            "SELECT c.name FROM customers c LEFT JOIN orders o "
            "ON o.customer_id = c.id AND c.id = 42"
        )
        assert ("public.customers", ()) in scopes(f)

    def test_correlated_subquery_inherits_outer_binding(self) -> None:
        """A subquery correlated on an outer bound column is bound too."""
        f = facts(
            "SELECT c.id FROM customers c WHERE c.id = 42 AND EXISTS "
            "(SELECT 1 FROM orders o WHERE o.customer_id = c.id)"
        )
        assert ("public.orders", (Const(42),)) in scopes(f)

    def test_every_reference_is_checked(self) -> None:
        """A self join yields one scope reference per table reference."""
        f = facts("SELECT b.name FROM customers a JOIN customers b ON true WHERE a.id = 42")
        assert sorted(scopes(f)) == [("public.customers", ()), ("public.customers", (Const(42),))]


class TestRefusals:
    @pytest.mark.parametrize(
        ("sql", "reason"),
        [
            ("DELETE FROM reviews", Reason.STATEMENT_FORBIDDEN),
            ("SET ROLE postgres", Reason.STATEMENT_FORBIDDEN),
            ("DO $$BEGIN NULL; END$$", Reason.STATEMENT_FORBIDDEN),
            ("COPY customers TO STDOUT", Reason.STATEMENT_FORBIDDEN),
            ("SELECT 1; SELECT 2", Reason.SQL_UNANALYZABLE),
            ("", Reason.SQL_UNANALYZABLE),
            ("SELECT FROM WHERE", Reason.SQL_UNANALYZABLE),
            ("NOTIFY chan", Reason.SQL_UNANALYZABLE),
            ("SELECT pg_sleep(10)", Reason.FUNCTION_FORBIDDEN),
            ("SELECT set_config('a', 'b', false)", Reason.FUNCTION_FORBIDDEN),
            ("SELECT * FROM generate_series(1, 10)", Reason.FUNCTION_FORBIDDEN),
            ("SELECT id FROM orders WHERE customer_id = 42 FOR UPDATE", Reason.SQL_UNANALYZABLE),
            ("SELECT id INTO leak FROM orders WHERE customer_id = 42", Reason.SQL_UNANALYZABLE),
            ("WITH RECURSIVE r AS (SELECT 1) SELECT * FROM r", Reason.SQL_UNANALYZABLE),
            ("SELECT __ag_subject_customer__ FROM products", Reason.SQL_UNANALYZABLE),
        ],
    )
    def test_refused(self, sql: str, reason: Reason) -> None:
        """Statements the guard never runs, or cannot account for, carry a reason."""
        assert facts(sql).problem is reason

    def test_oversized_statement_is_refused(self) -> None:
        """A statement with too many nodes is refused rather than half-analyzed."""
        sql = "SELECT id FROM products WHERE " + " OR ".join(f"id = {i}" for i in range(3000))
        assert facts(sql).problem is Reason.SQL_UNANALYZABLE

    @given(st.text(max_size=200))
    def test_never_raises_on_any_text(self, text: str) -> None:
        """Whatever the input, analyze returns facts; it never raises."""
        assert isinstance(facts(text), Facts)

    @given(
        st.lists(
            st.sampled_from(
                [
                    "SELECT",
                    "id",
                    ",",
                    "email",
                    "FROM",
                    "customers",
                    "WHERE",
                    "=",
                    "42",
                    "(",
                    ")",
                    "OR",
                    "AND",
                    "'x'",
                    ";",
                    "UNION",
                    "orders",
                    "c",
                    ".",
                    "*",
                    "$1",
                    "--",
                    "/*",
                    "*/",
                ]
            ),
            max_size=30,
        )
    )
    def test_never_raises_on_sql_like_tokens(self, words: list[str]) -> None:
        """Token soup close to real SQL never makes the analyser raise."""
        f = facts(" ".join(words), params=True)
        assert f.problem is not None or f.sent is not None


class TestRewrite:
    def test_scoped_tables_are_filtered_and_qualified(self) -> None:
        """The sent SQL reads scoped tables through a filter on the subject marker."""
        f = facts("SELECT c.name FROM customers c JOIN products p ON p.id = 1 WHERE c.id = 42")
        assert f.sent is not None
        assert f"FROM public.customers WHERE id = {subject_marker('customer')}" in f.sent
        assert "public.products" in f.sent

    def test_update_target_gets_the_filter(self) -> None:
        """UPDATE carries the scope filter in its WHERE clause."""
        f = facts("UPDATE orders SET status = 'x' WHERE customer_id = 42")
        assert f.sent is not None
        assert f"customer_id = {subject_marker('customer')}" in f.sent
        assert f.sent.startswith("UPDATE public.orders")

    def test_parameters_are_reordered_for_psycopg(self) -> None:
        """$n placeholders become %s in sent order; literal % is escaped."""
        f = facts(
            "SELECT id FROM orders WHERE customer_id = $2 AND status LIKE 'p%' AND id > $1",
            params=True,
        )
        assert f.sent is not None
        assert f.param_order == (1, 0)
        assert "'p%%'" in f.sent
        assert f.sent.count("%s") == 2

    def test_sqlite_placeholders_are_numbered(self) -> None:
        """SQLite ? placeholders bind scope by position and are sent as ?."""
        f = facts("SELECT id FROM orders WHERE status = ? AND customer_id = ?", dialect="sqlite")
        assert scopes(f) == [("public.orders", (Param(1),))]
        assert f.sent is not None
        assert f.sent.count("?") == 2
        assert f.param_order == (0, 1)


def test_plain_types_are_decided_by_name_as_by_their_sql() -> None:
    """The walker's reg* shortcut answers as node.sql() does, for every type sqlglot knows."""
    from sqlglot import exp

    from accessguard.analysis.nodes import reads_catalog

    for kind in exp.DataType.Type:
        node = exp.DataType(this=kind)
        by_sql = node.sql(dialect="postgres").lower().startswith(("reg", '"reg'))
        assert reads_catalog(node) is by_sql, kind
    assert reads_catalog(exp.DataType.build("regclass", dialect="postgres"))
