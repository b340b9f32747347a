"""The PostgreSQL-parser cross-check (accessguard.analysis.crosscheck).

Agreement on every legitimate statement of the case files; disagreement on
real differentials: statements sqlglot accepts (analyze() finds no problem)
that PostgreSQL's own parser rejects or reads with other tables.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest
from casefiles import load_redteam_cases, load_scenario_cases
from hypothesis import given
from pglast.parser import parse_sql_json
from strategies import CORPUS, arbitrary_sql, mutated_sql
from test_attacks import CASES, AttackCase, policies_without_limits

import accessguard.scenario
from accessguard import Guard
from accessguard.adapters.psycopg3 import authorize_statement
from accessguard.analysis import Facts, analyze, shape
from accessguard.analysis.crosscheck import crosscheck, statement_kinds
from accessguard.analysis.pgcalls import call_identity
from accessguard.analysis.pgtree import relations, relations_in_json, relations_short
from accessguard.analysis.sentcheck import verify_sent
from accessguard.engine.paramstyle import convert_query
from accessguard.errors import AccessGuardError, Reason
from accessguard.guard import Session
from accessguard.policy.catalog import load_catalog
from accessguard.testing import MemoryAuditSink

if TYPE_CHECKING:
    from collections.abc import Iterator

CATALOG = load_catalog(accessguard.scenario.policies_dir() / "schema.toml")
SCOPED = {t.qualified: t.scope_column or "" for t in CATALOG.tables.values() if t.scope}
ALICE, ERIN = Session(user="alice", ticket="T-100"), Session(user="erin", ticket="T-300")


@pytest.fixture(scope="module")
def guard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guard]:
    """A guard on the scenario (no volume limits), deciding without a database."""
    directory = policies_without_limits(tmp_path_factory.mktemp("crosscheck"))
    with Guard.from_directory(
        directory, tickets=accessguard.scenario.tickets(), audit=MemoryAuditSink()
    ) as guard:
        yield guard


def facts_of(sql: str, params: Any = None) -> tuple[str, Facts]:
    """(the text analyze() sees, its facts), converting psycopg placeholders first."""
    if params is not None:
        sql, _values = convert_query(sql, params)
    return sql, analyze(sql, catalog=CATALOG, params=params is not None)


def wired(sql: str) -> Facts:
    """analyze() with the cross-check wired in as proposed (sql.parser_disagreement)."""
    facts = analyze(sql, catalog=CATALOG)
    if facts.problem is None:
        detail = crosscheck(sql, facts)
        if detail is not None:
            return replace(facts, problem=Reason.SQL_PARSER_DISAGREEMENT, detail=detail, sent=None)
    return facts


def _legit() -> list[tuple[str, str, Any]]:
    """(id, sql, params) of every legitimate case of the three case files."""
    out = [(c.id, c.sql, c.params) for c in load_redteam_cases() if c.allowed]
    out += [(c.id, c.sql, c.params) for c in load_scenario_cases() if c.allowed]
    out += [(c.id, c.sql, c.params) for c in CASES if c.allowed and c.known_bug is None]
    return out


class TestAgreement:
    @pytest.mark.parametrize(("sql", "params"), [pytest.param(s, p, id=i) for i, s, p in _legit()])
    def test_legitimate_cases_agree(self, sql: str, params: Any) -> None:
        """PostgreSQL's parser agrees with the analysis of every legitimate case."""
        text, facts = facts_of(sql, params)
        assert facts.problem is None
        assert crosscheck(text, facts) is None

    @pytest.mark.parametrize(
        "case", [c for c in CASES if c.allowed and c.known_bug is None], ids=lambda c: c.id
    )
    def test_sent_sql_keeps_the_second_wall(self, case: AttackCase, guard: Guard) -> None:
        """For every legitimate case, the SQL connect() would send passes verify_sent."""
        ok = authorize_statement(
            guard.lane(Session(user=case.user, ticket=case.ticket), "postgres"),
            case.sql,
            case.params,
        )
        subjects = {s for _scope, s in ok.decision.subjects}
        assert (
            verify_sent(
                ok.sql, ok.facts, SCOPED, pyformat=case.params is not None, subjects=subjects
            )
            is None
        )

    @pytest.mark.parametrize(
        ("sql", "tables"),
        [
            (
                (
                    "WITH customers AS (SELECT id FROM public.customers WHERE id = 42) "
                    "SELECT id FROM customers"
                ),
                {"public.customers"},
            ),
            (
                "WITH orders AS (SELECT id FROM orders) SELECT id FROM orders",
                {"public.orders"},
            ),
            ("WITH a AS (SELECT 1 AS x), b AS (SELECT x FROM a) SELECT x FROM b", set()),
            ("WITH b AS (SELECT 1 FROM a), a AS (SELECT 1) SELECT 1 FROM b", {"public.a"}),
            ("SELECT (WITH x AS (SELECT 1) SELECT 1 FROM x) FROM x", {"public.x"}),
            ("WITH RECURSIVE r AS (SELECT 1 UNION ALL SELECT 1 FROM r) SELECT * FROM r", set()),
            ("UPDATE orders SET status = 'x' WHERE customer_id = 42", {"public.orders"}),
            (
                'SELECT 1 FROM "Odd""Name", archive.customers, db.s.t',
                {'public.Odd"Name', "archive.customers", "db.s.t"},
            ),
            ('SELECT 1 FROM "caf\u00e9"', {"public.caf\u00e9"}),
        ],
    )
    def test_relations_scope_with_items(self, sql: str, tables: set[str]) -> None:
        """WITH items hide a table name only where PostgreSQL makes them visible."""
        assert relations(json.loads(parse_sql_json(sql))) == tables

    def test_fast_path_matches_tree_walk(self) -> None:
        """The regex over the JSON text finds exactly the RangeVars the tree walk finds."""
        checked = 0
        for sql in CORPUS:
            try:
                text = parse_sql_json(sql)
            except Exception:  # noqa: BLE001, S112 - statements PostgreSQL rejects are skipped
                continue
            if '"ctename":' in text:
                continue
            assert relations_in_json(text) == relations(json.loads(text)), sql
            checked += 1
        assert checked > 300

    def test_statement_kinds(self) -> None:
        """statement_kinds names each statement as the analyser does."""
        assert statement_kinds("SELECT 1; UPDATE t SET a = 1; SELECT 1 INTO x") == [
            "select",
            "update",
            "create",
        ]


#: Real differentials: sqlglot accepts the text (analyze() finds no problem),
#: PostgreSQL's parser (libpg_query 18) does not read it the same way.
DIFFERENTIALS: list[tuple[str, str, str]] = [
    (
        "empty-select-item",
        "SELECT id, , price_cents FROM products WHERE price_cents > 3000",
        "rejects",
    ),
    ("empty-select-item-before-from", "SELECT day,FROM sales_metrics", "rejects"),
    ("empty-parens", "SELECT ()", "rejects"),
    (
        "adjacent-strings-one-line",
        "SELECT id, name FROM customers WHERE id = 42 AND name <> 'a' 'b'",
        "rejects",
    ),
    ("nbsp-before-where", "SELECT id, name, email FROM customers\u00a0WHERE id = 42", "rejects"),
    ("nbsp-glues-alias", "SELECT id FROM products\u00a0p WHERE id = 1", "tables"),
    ("line-separator-glues-table", "SELECT title FROM\u2028products WHERE id = 9", "tables"),
    ("next-line-glues-alias", "SELECT id FROM products\u0085p WHERE id = 1", "tables"),
    ("ideographic-space", "SELECT id FROM products\u3000WHERE id = 1", "rejects"),
    ("dollar-space-one", "SELECT $ 1 FROM products", "rejects"),
    ("number-glued-to-keyword", "SELECT 1from products", "rejects"),
    ("window-as-alias", "SELECT id FROM products AS window", "rejects"),
    ("bare-offset", "SELECT id FROM products offset", "rejects"),
    ("chained-equals", "SELECT id FROM products WHERE id = 1 = 1", "rejects"),
]


DIFFERENTIAL_PARAMS = [pytest.param(s, w, id=i) for i, s, w in DIFFERENTIALS]


class TestDisagreement:
    @pytest.mark.parametrize(("sql", "what"), DIFFERENTIAL_PARAMS)
    def test_real_differential_is_caught(self, sql: str, what: str) -> None:
        """sqlglot accepts the statement, PostgreSQL's parser does not agree: analyze refuses."""
        facts = analyze(sql, catalog=CATALOG)
        assert facts.problem is Reason.SQL_PARSER_DISAGREEMENT
        assert what in facts.detail

    @pytest.mark.parametrize(("sql", "what"), DIFFERENTIAL_PARAMS)
    def test_wired_refuses(self, sql: str, what: str) -> None:
        """Wired into analyze(), a differential is refused as sql.parser_disagreement."""
        assert what
        facts = wired(sql)
        assert facts.problem is Reason.SQL_PARSER_DISAGREEMENT
        assert facts.sent is None

    def test_corpus_differentials_are_refused(self) -> None:
        """The corpus's parser-differential cases are refused by analyze() itself."""
        marked = [c for c in CASES if c.category == "parser-differential" and not c.known_bug]
        assert marked
        for case in marked:
            assert wired(case.sql).problem is not None, case.id

    @pytest.mark.parametrize(
        "case", [c for c in CASES if c.id.startswith("dq-digit-tag-")], ids=lambda c: c.id
    )
    def test_catches_literal_splices(self, case: AttackCase, guard: Guard) -> None:
        """A digit-tag dollar quote (PostgreSQL: $1 and a comment) never reaches the server."""
        # Only digits and plain quoted strings are lifted out of a statement's
        # shape and pasted back; a dollar quote stays in the text, where the
        # analyser and PostgreSQL's parser see it, and the statement is refused.
        with pytest.raises(AccessGuardError):
            authorize_statement(
                guard.lane(ALICE if case.user == "alice" else ERIN, "postgres"),
                case.sql,
                case.params,
            )

    def test_dollar_quotes_are_never_lifted(self) -> None:
        """shape() leaves a dollar-quoted literal in the text: it is never spliced back."""
        case = next(c for c in CASES if c.id == "dq-digit-tag-splice-exfil")
        text, _values = convert_query(case.sql, case.params or [])
        found = shape(text, "postgres")
        assert found is None or "$1--$" in found[0].text

    @pytest.mark.parametrize(
        ("sql", "facts", "what"),
        [
            ("SELECT 1; SELECT 2", Facts(kind="select"), "2 statements"),
            ("", Facts(kind="select"), "0 statements"),
            ("UPDATE orders SET status = 'x'", Facts(kind="select"), "UPDATE statement"),
            ("SELECT 1 INTO leak", Facts(kind="select"), "CREATE statement"),
            ("DELETE FROM reviews", Facts(kind="select"), "DELETE statement"),
            (
                "WITH d AS (DELETE FROM reviews RETURNING id) SELECT 1",
                Facts(kind="select"),
                "data-modifying",
            ),
            (
                "WITH d AS (INSERT INTO t VALUES (1)) UPDATE orders SET status = 'x'",
                Facts(kind="update", tables=frozenset({"public.orders", "public.t"})),
                "data-modifying",
            ),
            (
                "SELECT 1 FROM customers, payments",
                Facts(kind="select", tables=frozenset({"public.customers"})),
                "also reads public.payments",
            ),
            (
                "SELECT 1 FROM customers",
                Facts(kind="select", tables=frozenset({"public.customers", "public.orders"})),
                "the analyser also reads public.orders",
            ),
            ("SELECT (", Facts(kind="select"), "rejects"),
        ],
    )
    def test_each_disagreement(self, sql: str, facts: Facts, what: str) -> None:
        """Statement count, kind, nested writes and tables each produce their own detail."""
        detail = crosscheck(sql, facts)
        assert detail is not None
        assert what in detail

    def test_detail_names_no_literal(self) -> None:
        """A detail never repeats a literal or an oddly spelt table name of the statement."""
        detail = crosscheck(
            'SELECT 1 FROM "tok_421_secret\'x", "c0042@mail.example"', Facts(kind="select")
        )
        assert detail is not None
        assert "tok_421" not in detail
        assert "c0042" not in detail
        assert "2 oddly named tables" in detail


class TestShortWalk:
    """The WITH walk leaves expressions out only when counting proves nothing hides there."""

    @staticmethod
    def _with_texts() -> list[str]:
        """libpg_query JSON of every case-file statement with a WITH item."""
        texts = [sql for _id, sql, _p in _legit()] + [c.sql for c in CASES]
        out = []
        for sql in texts:
            try:
                text = parse_sql_json(convert_query(sql, [0] * 20)[0] if "%s" in sql else sql)
            except Exception:  # noqa: BLE001, S112 - PostgreSQL rejects it: nothing to compare
                continue
            if '"ctename":' in text:
                out.append(text)
        return out

    def test_the_short_walk_agrees_on_every_with_statement(self) -> None:
        """relations_short answers as the whole walk on the corpus' WITH statements."""
        texts = self._with_texts()
        assert len(texts) >= 20  # the corpus has WITH statements; the test must see them
        shortened = 0
        for text in texts:
            tree = json.loads(text)
            assert relations_short(tree, text, "public") == relations(tree)
            shortened += relations(tree, expressions=False) == relations(tree)
        assert shortened >= 10  # and most of them are answered by the short walk

    @pytest.mark.parametrize(
        "sql",
        [
            "WITH x AS (SELECT 1 AS a) SELECT JSON_ARRAY(SELECT secret FROM customers) FROM x",
            "WITH x AS (SELECT 1 AS a) SELECT a FROM x ORDER BY JSON_ARRAY(SELECT 1 FROM orders)",
            "WITH x AS (SELECT 1 AS a) SELECT a FROM x WHERE a IN (SELECT 1 FROM customers)",
        ],
    )
    def test_a_query_inside_an_expression_is_walked(self, sql: str) -> None:
        """A relation named inside an expression (a sub-select, JSON_ARRAY's query) is seen."""
        detail = crosscheck(sql, Facts(kind="select"))
        assert detail is not None
        assert "public.customers" in detail or "public.orders" in detail

    def test_a_sub_select_in_a_with_statement_is_still_walked(self) -> None:
        """A table named only inside a WHERE sub-select is seen: SubLink turns the walk on."""
        sql = (
            "WITH c AS (SELECT id FROM customers WHERE id = 42) "
            "SELECT id FROM c WHERE id IN (SELECT customer_id FROM orders WHERE customer_id = 42)"
        )
        facts = analyze(sql, catalog=CATALOG, sending=False)
        assert facts.problem is None
        assert crosscheck(sql, facts) is None
        without_orders = replace(facts, tables=facts.tables - {"public.orders"})
        detail = crosscheck(sql, without_orders)
        assert detail is not None
        assert "public.orders" in detail


class TestNeverRaises:
    @given(arbitrary_sql())
    def test_arbitrary_text(self, sql: str) -> None:
        """crosscheck() returns None or a detail for any text."""
        result = crosscheck(sql, Facts(kind="select"))
        assert result is None or isinstance(result, str)

    @given(mutated_sql())
    def test_mutations(self, sql: str) -> None:
        """On mutated corpus statements, any detail is plain words: no quote, no literal."""
        facts = analyze(sql, catalog=CATALOG)
        detail = crosscheck(sql, facts)
        if detail is not None:
            assert not re.search("['\"$]", detail.replace("PostgreSQL's", "")), detail


#: what the analysis of the TestVerifySent statements reads: customers.id, orders.id,
#: products.title, and orders.status written
VERIFY_FACTS = Facts(
    kind="select",
    tables=frozenset({"public.customers", "public.orders", "public.products"}),
    reads=frozenset(
        {("public.customers", "id"), ("public.orders", "id"), ("public.products", "title")}
    ),
    writes=frozenset({("public.orders", "status")}),
)
C42 = '(SELECT "id" FROM public.customers WHERE id = 42) AS "c"'


class TestVerifySent:
    @pytest.mark.parametrize(
        ("sent", "tables", "what"),
        [
            (
                "SELECT c.id FROM public.customers c JOIN public.products p ON true WHERE id = 4",
                {"public.customers", "public.products"},
                "outside",
            ),
            (
                'SELECT c.id FROM (SELECT "id" FROM public.customers WHERE id = 7) AS "c"',
                {"public.customers"},
                "without its scope filter",
            ),
            (
                f"SELECT 1 FROM {C42}, public.payments",
                {"public.customers"},
                "also reads public.payments",
            ),
            ("SELECT id FROM customers", {"public.customers"}, "without its schema"),
            (
                "UPDATE public.orders SET status = 'x' WHERE id = 1",
                {"public.orders"},
                "not filtered",
            ),
            (
                "UPDATE public.orders SET status = 'x' WHERE \"orders\".customer_id = 42 OR true",
                {"public.orders"},
                "not filtered",
            ),
            ("SELECT (", set(), "rejects"),
            ("SELECT 1; SELECT 2", set(), "2 statements"),
            ("SELECT (WITH x AS (SELECT 1) SELECT 1 FROM x) FROM x", set(), "also reads public.x"),
        ],
    )
    def test_refuses(self, sent: str, tables: set[str], what: str) -> None:
        """A scoped table read raw, with another subject, or an unfiltered UPDATE is caught."""
        facts = replace(VERIFY_FACTS, tables=frozenset(tables))
        detail = verify_sent(sent, facts, SCOPED, subjects={42})
        assert detail is not None
        assert what in detail

    @pytest.mark.parametrize(
        ("sent", "what"),
        [
            pytest.param(
                'SELECT "c".id FROM (SELECT * FROM public.customers WHERE id = 42) AS "c"',
                "other than a list of its columns",
                id="star-over-scoped-table",
            ),
            pytest.param("SELECT title FROM public.products", "outside", id="bare-unscoped-table"),
            pytest.param(
                'SELECT * FROM (SELECT * FROM public.products) AS "products"',
                "other than a list of its columns",
                id="star-over-unscoped-table",
            ),
            pytest.param(
                'SELECT 1 FROM (SELECT "id", "email" FROM public.customers WHERE id = 42) AS "c"',
                "other columns of public.customers",
                id="column-the-analysis-did-not-attribute",
            ),
            pytest.param(
                'SELECT 1 FROM (SELECT FROM public.customers WHERE id = 42) AS "c"',
                "other columns of public.customers",
                id="column-missing",
            ),
            pytest.param(
                'SELECT 1 FROM (SELECT "id", "id" FROM public.customers WHERE id = 42) AS "c"',
                "other columns",
                id="column-twice",
            ),
            pytest.param(
                'SELECT 1 FROM (SELECT "c"."id" FROM public.customers AS c WHERE id = 42) AS "c"',
                "other than a list of its columns",
                id="qualified-column",
            ),
            pytest.param(
                'SELECT 1 FROM (SELECT "id" AS "x" FROM public.customers WHERE id = 42) AS "c"',
                "more than a projection",
                id="renamed-column",
            ),
            pytest.param(
                'SELECT 1 FROM (SELECT c FROM public.customers AS c WHERE id = 42) AS "c"',
                "other columns",
                id="whole-row-inside-projection",
            ),
            pytest.param(
                'SELECT 1 FROM (SELECT "id" FROM public.customers WHERE id = 42 LIMIT 1) AS "c"',
                "more than a projection",
                id="limit-inside-projection",
            ),
            pytest.param(
                'SELECT 1 FROM (SELECT "title" FROM public.products WHERE ssn = 1) AS "p"',
                "a condition inside",
                id="condition-on-unscoped-table",
            ),
            pytest.param(
                'SELECT 1 FROM (SELECT "id" FROM public.customers WHERE id = 42 AND ssn = 1) "c"',
                "without its scope filter",
                id="condition-beside-scope-filter",
            ),
            pytest.param(
                "UPDATE public.orders AS o SET status = 'x' WHERE o.customer_id = 42 RETURNING *",
                "every column",
                id="returning-star",
            ),
            pytest.param(
                "UPDATE public.orders AS o SET status = 'x' WHERE o.customer_id = 42 RETURNING o",
                "every column",
                id="returning-whole-row",
            ),
            pytest.param(
                "UPDATE public.orders AS o SET status = o::text WHERE o.customer_id = 42",
                "every column",
                id="set-from-whole-row",
            ),
            pytest.param(
                "UPDATE public.orders AS o SET status = 'x' WHERE o.customer_id = 42 "
                "RETURNING o.ssn",
                "other columns",
                id="returning-undeclared-column",
            ),
            pytest.param(
                "UPDATE public.orders AS o SET status = 'x' WHERE o.customer_id = 42 AND ssn = 'x'",
                "other columns",
                id="where-on-undeclared-column",
            ),
            pytest.param(
                "UPDATE public.orders AS o SET status = 'x', ssn = 'y' WHERE o.customer_id = 42",
                "sets other columns",
                id="set-undeclared-column",
            ),
        ],
    )
    def test_refuses_other_columns(self, sent: str, what: str) -> None:
        """Any column PostgreSQL would read beyond what the analysis attributes is caught."""
        detail = verify_sent(sent, VERIFY_FACTS, SCOPED, subjects={42})
        assert detail is not None
        assert what in detail

    @pytest.mark.parametrize(
        "sent",
        [
            f'SELECT "c".id FROM {C42}',
            f"SELECT \"c\".id FROM {C42.replace('42', '%s')} WHERE id LIKE '%%x'",
            (
                'SELECT 1 FROM (SELECT "id" FROM public.orders WHERE customer_id = '
                '__ag_subject_customer__) AS "o"'
            ),
            (
                "UPDATE public.orders AS o SET status = 'x' WHERE (id = 421) AND "
                'o.customer_id = 42 RETURNING "id", (SELECT "__ag_row__" FROM '
                '(SELECT "o"."id") AS "__ag_row__")'
            ),
            'WITH x AS (SELECT 1) SELECT * FROM x, (SELECT "title" FROM public.products) AS "p"',
        ],
    )
    def test_accepts(self, sent: str) -> None:
        """The guard's own rewrite shapes pass (constant, parameter or marker subjects)."""
        assert verify_sent(sent, VERIFY_FACTS, SCOPED, pyformat="%s" in sent, subjects={42}) is None

    @given(mutated_sql())
    def test_never_raises(self, sql: str) -> None:
        """verify_sent returns None or a detail for anything."""
        result = verify_sent(sql, Facts(kind="select"), SCOPED, pyformat=True)
        assert result is None or isinstance(result, str)


class TestCallIdentity:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("POWER(a, 2)", ("power", 2)),
            ("pg_catalog.power(a, b)", ("power", 2)),
            ("LOG(10, a)", ("log", 2)),
            ("a ->> b", ("operator ->>", 2)),
            ("ROUND(CAST(a AS NUMERIC))", None),
            ("a -> lower(b)", None),
            ("other.power(a, b)", None),
            ("SUM(a) OVER ()", None),
            ("CURRENT_TIMESTAMP", None),
            ("(SELECT 1)", None),
            ("not sql (", None),
        ],
    )
    def test_reads_the_call_postgresql_makes(
        self, text: str, expected: tuple[str, int] | None
    ) -> None:
        """One plain pg_catalog call or operator of placeholders is identified; nothing else."""
        assert call_identity(text) == expected


class TestLockingClause:
    def test_for_update_of_names_from_items_not_tables(self) -> None:
        """OF o names the FROM item o: both parsers agree and the SQL sent passes the check."""
        sql = "SELECT o.id FROM orders o WHERE o.customer_id = 42 FOR UPDATE OF o"
        facts = analyze(sql, catalog=CATALOG)
        assert facts.problem is None, facts.detail
        assert crosscheck(sql, facts) is None
        assert facts.sent is not None
        assert verify_sent(facts.sent, facts, SCOPED) is None

    def test_lock_does_not_hide_a_raw_table(self) -> None:
        """A table read raw is caught in a locking statement as in any other."""
        facts = analyze("SELECT id FROM orders WHERE customer_id = 42 FOR UPDATE", catalog=CATALOG)
        sent = "SELECT id FROM public.orders WHERE customer_id = 42 FOR UPDATE OF orders"
        detail = verify_sent(sent, facts, SCOPED)
        assert detail is not None
        assert "outside its projection" in detail
