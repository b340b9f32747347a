"""The shortcuts of the first-sight path (issue 19) find what the long way finds.

Each faster form in the analyser is compared here with the plain form it
replaced, over every statement of the case files and a few written for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlglot
import yaml
from sqlglot import exp
from sqlglot.errors import SqlglotError

from accessguard.analysis.walker import _LEAVES, _derived_nodes

CASES = Path(__file__).resolve().parent / "cases"

#: subqueries and WITH items wherever a statement can hold one
WRITTEN = [
    "WITH a AS (SELECT 1 AS x), b AS (SELECT x FROM a) SELECT * FROM b",
    "SELECT (SELECT max(id) FROM orders) AS m, CASE WHEN EXISTS (SELECT 1) THEN 1 END",
    "SELECT * FROM t WHERE id IN (SELECT id FROM u) AND x = ANY (SELECT y FROM v)",
    "SELECT coalesce((SELECT 1), 2), f((SELECT 3)) FROM (SELECT 4 AS z) AS s",
    "SELECT * FROM t, LATERAL (SELECT * FROM u WHERE u.id = t.id) AS l",
    "SELECT * FROM (VALUES (1), ((SELECT 2))) AS v(a) ORDER BY (SELECT 1) LIMIT (SELECT 5)",
    (
        "SELECT x FROM t GROUP BY x HAVING count(*) > (SELECT 1) "
        "UNION SELECT y FROM (WITH w AS (SELECT 1 AS y) SELECT y FROM w) AS q"
    ),
    "UPDATE orders SET status = (SELECT 'x') WHERE id IN (SELECT order_id FROM payments)",
]


def _sql_texts(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k == "sql" and isinstance(v, str)]
        for value in node.values():
            found += _sql_texts(value)
        return found
    if isinstance(node, list):
        return [text for item in node for text in _sql_texts(item)]
    return []


def _corpus() -> list[str]:
    texts = list(WRITTEN)
    for path in sorted(CASES.rglob("*.yaml")):
        texts += _sql_texts(yaml.safe_load(path.read_text(encoding="utf-8")))
    return texts


def _trees() -> list[exp.Expr]:
    trees: list[exp.Expr] = []
    for text in _corpus():
        try:
            parsed = sqlglot.parse(text, read="postgres")
        except SqlglotError:
            continue
        trees += [tree for tree in parsed if tree is not None]
    return trees


def test_the_corpus_has_derived_tables() -> None:
    trees = _trees()
    assert len(trees) > 200
    assert sum(1 for t in trees if any(True for _ in t.find_all(exp.CTE))) > 10
    assert sum(1 for t in trees if any(True for _ in t.find_all(exp.Subquery))) > 50


@pytest.mark.parametrize("index", range(4))
def test_derived_nodes_are_what_find_all_finds(index: int) -> None:
    trees = _trees()
    for tree in trees[index::4]:
        fast = [id(n) for n in _derived_nodes(tree)]
        slow = [id(n) for n in tree.find_all(exp.CTE, exp.Subquery)]
        assert sorted(fast) == sorted(slow), tree.sql()


def test_leaves_hold_no_node() -> None:
    """The classes the index's walk does not look into have no child node in any tree."""
    assert {exp.Identifier, exp.Literal} == _LEAVES
    seen = 0
    for tree in _trees():
        for node in tree.walk():
            if type(node) in _LEAVES:
                seen += 1
                assert not list(node.iter_expressions()), tree.sql()
    assert seen > 1000
