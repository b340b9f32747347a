"""PostgreSQL's own parse tree (pglast, libpg_query), and the relations it names.

The one module that imports pglast: ``parse_sql_json`` and ``ParseError`` are
its, for ``crosscheck`` (the analysed text), ``sentcheck`` (the SQL to send)
and ``pgcalls`` (function identity). The JSON parse tree is read rather than
pglast's Python node objects (see ``crosscheck`` for the costs).

``relations_in_json`` finds every RangeVar of the JSON text by a regular
expression (fast; no WITH-item scoping); ``relations`` walks the tree,
leaving out the names of WITH items visible where they are used;
``relations_short`` walks expressions only when a relation hides in one.
An unqualified name is in ``DEFAULT_SCHEMA`` unless told otherwise.
``table_names`` puts a set of names in plain words without quoting an odd one.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pglast.parser import ParseError, parse_sql_json

__all__ = [
    "CHARS",
    "DEFAULT_SCHEMA",
    "EXPRESSION_FIELDS",
    "PLAIN_NAME",
    "ParseError",
    "parse_sql_json",
    "relations",
    "relations_in_json",
    "relations_short",
    "table_names",
    "unescape",
]

DEFAULT_SCHEMA = "public"

#: the body of a JSON string value
CHARS = r'(?:[^"\\]|\\.)*'
#: a RangeVar body: libpg_query writes its fields in this order, absent ones omitted
#: (``{"catalogname":"c","schemaname":"s","relname":"r"``; each quote that opens a
#: key is written once, after the brace or the comma: the same texts, matched faster)
_RANGE_VAR = re.compile(
    rf'\{{"(?:catalogname":"(?P<c>{CHARS})","|)(?:schemaname":"(?P<s>{CHARS})","|)'
    rf'relname":"(?P<r>{CHARS})"'
)
#: a name that may be shown as it is: lower-case words, up to catalog.schema.table
PLAIN_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}(\.[a-z_][a-z0-9_]{0,62}){0,2}$")


def relations_in_json(text: str, *, default_schema: str = DEFAULT_SCHEMA) -> set[str]:
    """Every RangeVar of a JSON parse tree, schema-qualified (fast; no WITH-item scoping)."""
    return {_qualified(m["c"], m["s"] or default_schema, m["r"]) for m in _RANGE_VAR.finditer(text)}


def _qualified(catalog: str | None, schema: str, rel: str) -> str:
    if catalog is None and "\\" not in schema and "\\" not in rel:
        return f"{schema}.{rel}"  # nothing to unescape (most names)
    return ".".join(unescape(p) for p in (catalog, schema, rel) if p is not None)


def unescape(text: str) -> str:
    """A name as JSON wrote it, its escapes undone."""
    return text if "\\" not in text else str(json.loads(f'"{text}"'))


#: Fields of PostgreSQL's raw parse nodes that hold expressions. Relations
#: (RangeVar) are named by FROM, INTO, DML targets and locking clauses; an
#: expression names one only through a query inside it (a sub-select, or
#: JSON_ARRAY(SELECT ...)), which ``relations_short`` detects by counting.
EXPRESSION_FIELDS = frozenset(
    {
        "targetList",
        "distinctClause",
        "whereClause",
        "groupClause",
        "havingClause",
        "windowClause",
        "sortClause",
        "limitOffset",
        "limitCount",
        "valuesLists",
        "returningList",
        "quals",
    }
)


def relations(
    tree: dict[str, Any], *, default_schema: str = DEFAULT_SCHEMA, expressions: bool = True
) -> set[str]:
    """Schema-qualified names of the relations a parse tree names, WITH items excluded.

    ``expressions=False`` leaves out the fields in ``EXPRESSION_FIELDS``: the
    answer is whole only if no relation is named inside an expression (see
    ``relations_short``).
    """
    found: set[str] = set()
    skip = _LOCKING_FIELDS if expressions else EXPRESSION_FIELDS | _LOCKING_FIELDS
    _collect(tree, frozenset(), found, default_schema, skip)
    return found


#: ``FOR UPDATE OF name``: the names are FROM items of the query (PostgreSQL
#: rejects any other), held as RangeVars that read nothing
_LOCKING_FIELDS = frozenset({"lockingClause"})


def relations_short(tree: dict[str, Any], text: str, default_schema: str) -> set[str]:
    """``relations(tree)``, walking expressions only when a relation hides in one.

    A parse tree's expressions are most of it, and seldom name a relation.
    The short walk counts the RangeVars it meets (CTE references included);
    every RangeVar of the JSON text has exactly one ``"relname":`` key (a
    quote inside a string value is escaped), so equal counts prove it met
    them all. Otherwise the whole tree is walked.
    """
    found: set[str] = set()
    met = _collect(tree, frozenset(), found, default_schema, EXPRESSION_FIELDS)
    if met == text.count('"relname":'):
        return found
    return relations(tree, default_schema=default_schema)


def _collect(
    root: Any,
    visible: frozenset[str],
    found: set[str],
    default_schema: str,
    skip: frozenset[str],
) -> int:
    """Add the relations under ``root`` to ``found``; ``visible``: WITH names in scope there.

    Only dicts and lists are pushed (a parse tree is mostly strings and
    numbers), and the names in scope change only at a WITH clause, whose
    items and statement are walked by a call of their own: the loop carries
    no scope per node. Fields named in ``skip`` are not walked. Returns how
    many RangeVars it met (CTE references included).
    """
    met = 0
    stack = [root]
    pop, push = stack.pop, stack.append
    while stack:
        item = pop()
        if type(item) is list:
            for child in item:
                if type(child) is dict or type(child) is list:
                    push(child)
            continue
        if type(item) is not dict:
            continue
        if "relname" in item:  # a RangeVar (a FROM item, UPDATE's target, INTO's table)
            found.update(_range_var(item, visible, default_schema))
            met += 1
            continue
        with_ = item.get("withClause")
        if type(with_) is dict:
            after, inside = _walk_with(with_, visible, found, default_schema, skip)
            rest = {k: v for k, v in item.items() if k != "withClause"}
            met += inside + _collect(rest, after, found, default_schema, skip)
            continue
        for key, child in item.items():
            if (type(child) is dict or type(child) is list) and key not in skip:
                push(child)
    return met


def _walk_with(
    with_: dict[str, Any],
    visible: frozenset[str],
    found: set[str],
    default_schema: str,
    skip: frozenset[str],
) -> tuple[frozenset[str], int]:
    """Walk the WITH items' bodies with the names each may see.

    Returns the names visible after them, and how many RangeVars it met.
    """
    ctes = [c.get("CommonTableExpr", {}) for c in with_.get("ctes") or [] if isinstance(c, dict)]
    names = [str(c.get("ctename", "")) for c in ctes]
    met = 0
    if with_.get("recursive"):
        every = visible | frozenset(names)
        for cte in ctes:
            met += _collect(cte, every, found, default_schema, skip)
        return every, met
    so_far = visible
    for cte, name in zip(ctes, names, strict=True):
        met += _collect(cte, so_far, found, default_schema, skip)
        so_far = so_far | {name}
    return so_far, met


def _range_var(body: dict[str, Any], visible: frozenset[str], default_schema: str) -> set[str]:
    rel = str(body.get("relname", ""))
    schema = body.get("schemaname")
    catalog = body.get("catalogname")
    if schema is None and catalog is None and rel in visible:
        return set()
    parts = [str(p) for p in (catalog, schema or default_schema, rel) if p is not None]
    return {".".join(parts)}


def table_names(names: set[str]) -> str:
    """Table names in plain words; an odd name is counted, never quoted."""
    plain = sorted(n for n in names if PLAIN_NAME.match(n))
    odd = len(names) - len(plain)
    words = list(plain)
    if odd:
        words.append(f"{odd} oddly named table" + ("s" if odd > 1 else ""))
    return ", ".join(words)
