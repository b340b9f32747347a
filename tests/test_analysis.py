"""The analyser: statement text -> facts, failing closed on whatever it cannot read."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from accessguard import scenario
from accessguard.analysis import Const, Facts, Param, analyze, subject_marker
from accessguard.errors import Reason
from accessguard.policy.catalog import Catalog, load_catalog

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
            ("SELECT id FROM products FOR UPDATE", Reason.STATEMENT_FORBIDDEN),
            (
                "SELECT id FROM orders WHERE customer_id = 42 FOR UPDATE OF public.orders",
                Reason.SQL_UNANALYZABLE,
            ),
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


class TestNameScoping:
    """Names resolve as PostgreSQL resolves them (issue 24); see also tests/cases/scoping.yaml."""

    ON_SIBLING = (
        "SELECT p.id, (SELECT c.t FROM (SELECT card_last4 AS card_token FROM payments "
        "WHERE customer_id = 42) AS a, (VALUES (1)) AS b(n) JOIN (VALUES ('x')) AS c(t) "
        "ON card_token = c.t LIMIT 1) FROM payments AS p WHERE p.customer_id = 42"
    )

    def test_on_clause_sees_only_its_join(self) -> None:
        """An ON clause skips a comma-listed sibling and reads the outer level's column."""
        assert ("public.payments", "card_token") in facts(self.ON_SIBLING).reads

    def test_sqlite_on_clause_sees_the_whole_from_list(self) -> None:
        """SQLite's ON sees every FROM item (a comma is a CROSS JOIN): card_token is a's alias."""
        f = facts(self.ON_SIBLING, dialect="sqlite")
        assert f.problem is None
        assert ("public.payments", "card_token") not in f.reads

    def test_on_clause_elsewhere_must_agree_with_whole_from(self) -> None:
        """Outside PostgreSQL, a name an ON clause reads from a later FROM item is refused."""
        sql = (
            "SELECT count(*) FROM orders o JOIN payments p ON p.id = c.id "
            "JOIN customers c ON c.id = o.customer_id"
        )
        assert facts(sql, dialect="sqlite").problem is Reason.SQL_UNANALYZABLE
        assert facts(sql).problem is Reason.COLUMN_UNKNOWN  # PostgreSQL: no such table there

    def test_window_order_by_reads_input_column(self) -> None:
        """Inside OVER (ORDER BY ..) a name is an input column, never the output alias."""
        f = facts(
            "SELECT id, card_last4 AS card_token FROM payments WHERE customer_id = 42 "
            "ORDER BY rank() OVER (ORDER BY card_token)"
        )
        assert ("public.payments", "card_token") in f.reads

    def test_bare_order_by_is_the_output_column(self) -> None:
        """A bare ORDER BY name is the output column first."""
        f = facts(
            "SELECT id, card_last4 AS card_token FROM payments WHERE customer_id = 42 "
            "ORDER BY card_token"
        )
        assert ("public.payments", "card_token") not in f.reads

    @pytest.mark.parametrize(
        ("sql", "reads_token"),
        [
            ("SELECT max(card_last4) AS card_token FROM payments GROUP BY card_token", True),
            ("SELECT card_last4 AS last4 FROM payments GROUP BY last4", False),
        ],
    )
    def test_group_by_prefers_input_columns(self, sql: str, reads_token: bool) -> None:
        """A bare GROUP BY name is an input column first, an output name only after."""
        f = facts(sql)
        assert f.problem is None
        assert (("public.payments", "card_token") in f.reads) is reads_token

    def test_using_column_is_merged_and_binds(self) -> None:
        """An unqualified USING column is not ambiguous; an inner USING join binds both sides."""
        f = facts(
            "SELECT customer_id FROM orders o JOIN payments p USING (customer_id) "
            "WHERE customer_id = 42"
        )
        assert f.problem is None
        assert scopes(f) == [("public.orders", (Const(42),)), ("public.payments", (Const(42),))]

    def test_natural_join_reads_common_columns(self) -> None:
        """NATURAL JOIN compares every common column, and reads them."""
        f = facts("SELECT count(*) FROM payments a NATURAL JOIN payments b")
        assert ("public.payments", "card_token") in f.reads


class TestCastsAndNames:
    @pytest.mark.parametrize(
        "sql",
        [
            "SELECT 1::email_t",
            'SELECT 1::"Email_T"',
            "SELECT CAST(1 AS public.email_t)",
            "SELECT CAST(1 AS pg_catalog.int4)",
            "SELECT '{}'::email_t[]",
            "SELECT 'a'::hstore",
            "SELECT 1::int128",
        ],
    )
    def test_non_builtin_types_are_refused(self, sql: str) -> None:
        """A cast to a type PostgreSQL does not build in (it may run user code) is refused."""
        assert facts(sql).problem is Reason.TYPE_FORBIDDEN

    @pytest.mark.parametrize(
        "sql",
        [
            "SELECT 1::bigint, 1::int4, 1::numeric(5, 2), 'a'::varchar(3), 'a'::\"char\"",
            "SELECT '{1}'::int[], now()::date, '1 day'::interval, '{}'::jsonb, 'a'::bytea",
        ],
    )
    def test_builtin_types_are_allowed(self, sql: str) -> None:
        """Casts to built-in types stay allowed."""
        assert facts(sql).problem is None

    @pytest.mark.parametrize(
        ("sql", "named"),
        [
            ("SELECT '{}'::jsonb @? '$.a'", "operator @?"),
            ("SELECT ARRAY[1] @> ARRAY[1]", "operator @>"),
            ("SELECT jsonb_path_exists('{}', '$')", "function jsonb_path_exists"),
            ("SELECT sha256('a')", "function sha256"),
            ("SELECT to_hex(id) FROM products", "function to_hex"),
        ],
    )
    def test_refusals_name_what_was_written(self, sql: str, named: str) -> None:
        """Messages name the function or operator as PostgreSQL reads it, with no literal."""
        detail = facts(sql).detail
        assert named in detail
        assert "$.a" not in detail


class TestPacking:
    @pytest.mark.parametrize(
        "sql",
        [
            "SELECT array_agg(id) FROM orders WHERE customer_id = 42",
            "SELECT string_agg(s, ',') FROM (SELECT status AS s FROM orders) AS d",
            "WITH o AS (SELECT status FROM orders) SELECT string_agg(status, ',') FROM o",
        ],
    )
    def test_packing_over_scoped_rows_is_recorded(self, sql: str) -> None:
        """A packing aggregate over rows of a scoped table is named in Facts.packing."""
        assert facts(sql).packing

    def test_packing_the_catalogue_is_not(self) -> None:
        """The same aggregate over an unscoped table packs nothing the row limit counts."""
        assert facts("SELECT array_agg(title) FROM products").packing == ()


_JOINED = (
    "SELECT o.id, p.id FROM orders o JOIN payments p ON p.order_id = o.id "
    "WHERE o.customer_id = 42 AND p.customer_id = 42"
)
_SELF_JOINED = (
    "SELECT a.status, b.status FROM orders a JOIN orders b ON b.customer_id = a.customer_id "
    "WHERE a.customer_id = 42"
)
_PIVOT = (
    "SELECT max(CASE WHEN id % 2 = 0 THEN status END), max(CASE WHEN id % 2 = 1 THEN status END) "
    "FROM orders WHERE customer_id = 42 GROUP BY id / 2"
)
_SUBQUERIES = (
    "SELECT (SELECT status FROM orders WHERE id = 421 AND customer_id = 42), "
    "(SELECT status FROM orders WHERE id = 422 AND customer_id = 42)"
)
_UNION = (
    "WITH o AS (SELECT id FROM orders WHERE customer_id = 42) "
    "SELECT id FROM o UNION SELECT id FROM products"
)


class TestRowWeight:
    @pytest.mark.parametrize(
        ("sql", "weight"),
        [
            ("SELECT title FROM products", 0),
            ("SELECT id FROM orders WHERE customer_id = 42", 1),
            ("SELECT count(*) FROM orders WHERE customer_id = 42", 1),
            (_JOINED, 1),
            (_SELF_JOINED, 2),
            (_PIVOT, 3),
            (_SUBQUERIES, 2),
            (_UNION, 1),
        ],
    )
    def test_bounds_scoped_rows_per_result_row(self, sql: str, weight: int) -> None:
        """row_weight bounds how many scoped rows one result row carries (pivots, subqueries)."""
        f = facts(sql)
        assert f.problem is None
        assert f.row_weight == weight


class TestOrmShapes:
    """Issue 16: outer joins, functions by catalog identity, locks, qualified columns."""

    @pytest.mark.parametrize(
        ("sql", "expected"),
        [
            (
                (
                    "SELECT c.name, o.id FROM customers c LEFT JOIN orders o "
                    "ON c.id = o.customer_id WHERE c.id = 42"
                ),
                [("public.customers", (Const(42),)), ("public.orders", (Const(42),))],
            ),
            (
                (
                    "SELECT c.name, o.id FROM customers c LEFT JOIN orders o "
                    "ON o.customer_id = c.id WHERE o.customer_id = 42"
                ),
                [("public.customers", ()), ("public.orders", (Const(42),))],
            ),
            (
                (
                    "SELECT c.name, o.id FROM orders o RIGHT JOIN customers c "
                    "ON o.customer_id = c.id WHERE c.id = 42"
                ),
                [("public.customers", (Const(42),)), ("public.orders", (Const(42),))],
            ),
            (
                (
                    "SELECT c.name, o.id FROM customers c FULL JOIN orders o "
                    "ON o.customer_id = c.id AND o.customer_id = 42 WHERE c.id = 42"
                ),
                [("public.customers", (Const(42),)), ("public.orders", ())],
            ),
            (
                (
                    "SELECT o.id, p.id FROM orders o LEFT JOIN payments p USING (customer_id) "
                    "WHERE customer_id = 42"
                ),
                [("public.orders", (Const(42),)), ("public.payments", (Const(42),))],
            ),
        ],
    )
    def test_outer_join_on_binds_its_nullable_side(
        self, sql: str, expected: list[tuple[str, tuple[Const, ...]]]
    ) -> None:
        """An outer join's ON binds the nullable side only; a FULL JOIN's binds nothing."""
        f = facts(sql)
        assert f.problem is None, f.detail
        assert sorted(scopes(f)) == expected

    def test_on_holds_only_where_the_nullable_side_is_present(self) -> None:
        """A chain through an outer ON never binds the preserved side of that join."""
        f = facts(
            "SELECT a.id, b.id FROM orders a LEFT JOIN orders b ON b.customer_id = a.customer_id "
            "AND b.customer_id = 42"
        )
        assert sorted(scopes(f)) == [("public.orders", ()), ("public.orders", (Const(42),))]

    @pytest.mark.parametrize(
        ("sql", "names"),
        [
            ("SELECT power(2, 3), pow(2, 3), sqrt(4.0)", {"power", "sqrt"}),
            ("SELECT format('%s', 1), json_build_object('a', 1) ->> 'a'", {"format"}),
            ("SELECT '{}'::jsonb -> 'a', '{}'::jsonb #>> '{a}'", {"operator ->"}),
            ("SELECT ltrim(' a ', ' '), lower('A'), round(1.5, 0)", {"lower", "round"}),
            (
                "SELECT statement_timestamp(), sin(1), localtimestamp",
                {"statement_timestamp", "sin", "localtimestamp"},
            ),
        ],
    )
    def test_builtins_are_allowed_by_catalog_identity(self, sql: str, names: set[str]) -> None:
        """Harmless built-ins pass, named as PostgreSQL names the function it runs."""
        f = facts(sql)
        assert f.problem is None, f.detail
        assert names <= f.functions
        assert not any("_" in n and n.startswith("j_s") for n in f.functions)

    @pytest.mark.parametrize(
        "sql",
        [
            "SELECT pg_read_file('/etc/passwd')",
            "SELECT current_setting('server_version')",
            "SELECT query_to_xml('select 1', true, true, '')",
            "SELECT dblink('host=x', 'select 1')",
            "SELECT lo_import('/etc/passwd')",
            "SELECT txid_current()",
            "SELECT jsonb_agg(id) FROM products",
            "SELECT json_build_object('a', 1) @> '{}'",
            "SELECT lower('a', 'b')",
        ],
    )
    def test_other_functions_stay_forbidden(self, sql: str) -> None:
        """Whatever is not a listed built-in with a listed arity is refused."""
        assert facts(sql).problem in (Reason.FUNCTION_FORBIDDEN, Reason.SQL_UNANALYZABLE)

    def test_schema_qualified_column_resolves_as_unqualified(self) -> None:
        """public.orders.id is orders.id of the unaliased public.orders, and is sent so."""
        f = facts("SELECT public.orders.id FROM public.orders WHERE public.orders.customer_id = 42")
        assert f.problem is None, f.detail
        assert scopes(f) == [("public.orders", (Const(42),))]
        assert f.sent is not None
        assert "public.orders.id" not in f.sent
        assert 'AS "orders" WHERE orders.customer_id = 42' in f.sent

    @pytest.mark.parametrize(
        ("sql", "reason"),
        [
            ("SELECT public.orders.id FROM public.orders o WHERE o.customer_id = 42", None),
            ("SELECT archive.orders.id FROM public.orders WHERE customer_id = 42", None),
            ("SELECT x.public.orders.id FROM public.orders", Reason.SQL_UNANALYZABLE),
            ("UPDATE orders SET public.orders.status = 'x' WHERE customer_id = 42", None),
        ],
    )
    def test_schema_qualified_column_never_names_another_table(
        self, sql: str, reason: Reason | None
    ) -> None:
        """An alias, another schema or a catalog name is refused, never resolved elsewhere."""
        problem = facts(sql).problem
        assert problem is not None
        assert reason is None or problem is reason

    def test_lock_lists_the_tables_it_locks(self) -> None:
        """A locking read reports its tables; the decision asks for an update grant on each."""
        f = facts("SELECT id FROM orders WHERE customer_id = 42 FOR NO KEY UPDATE NOWAIT")
        assert f.problem is None
        assert f.locked == {"public.orders"}
        assert f.sent is not None
        assert f.sent.endswith("FOR NO KEY UPDATE NOWAIT")
        assert facts("SELECT id FROM orders WHERE customer_id = 42").locked == frozenset()
