"""The second wall: the SQL actually sent, regenerated from the analyzed tree.

Every physical table is schema-qualified (no search_path shadowing), every
reference to a scoped table reads through a filter on its scope column, and
the UPDATE target carries the same filter. The subject id is left as a marker
replaced per execution, so one analysis serves every ticket.
"""

from __future__ import annotations

import re

from sqlglot import exp

from accessguard.analysis.facts import subject_marker
from accessguard.catalog import TableSpec

_SENTINEL = re.compile(r"__ag_p(\d+)__")


def rewrite(
    tree: exp.Expression,
    physical: list[tuple[exp.Table, TableSpec]],
    *,
    dialect: str,
    escape_percent: bool,
) -> tuple[str, tuple[int | str, ...]]:
    """Return (sql text with subject markers, parameter keys in sent order). Mutates tree."""
    qualify = dialect == "postgres"
    update_target = tree.this if isinstance(tree, exp.Update) else None
    for node, spec in physical:
        if node is update_target:
            _scope_update(tree, node, spec, qualify=qualify)
        elif spec.scope is not None:
            node.replace(_filtered(node, spec, qualify=qualify))
        elif qualify:
            node.set("db", exp.to_identifier(spec.schema))
    keys: list[int | str] = []
    for param in list(tree.find_all(exp.Parameter, exp.Placeholder)):
        from accessguard.analysis.walker import param_key

        assert isinstance(param, exp.Parameter | exp.Placeholder)  # noqa: S101 - find_all's type
        keys.append(param_key(param))
        param.replace(exp.column(f"__ag_p{len(keys) - 1}__"))
    text = tree.sql(dialect=dialect, comments=False)
    if escape_percent:
        text = text.replace("%", "%%")
    order: list[int | str] = []

    def placeholder(match: re.Match[str]) -> str:
        key = keys[int(match.group(1))]
        order.append(key)
        if dialect == "postgres":
            return "%s"
        return f":{key}" if isinstance(key, str) else "?"

    return _SENTINEL.sub(placeholder, text), tuple(order)


def _table_ref(spec: TableSpec, *, qualify: bool) -> exp.Table:
    return exp.table_(spec.name, db=spec.schema if qualify else None)


def _scope_filter(spec: TableSpec, qualifier: str | None) -> exp.Expression:
    column = exp.column(spec.scope_column or "", table=qualifier)
    return exp.EQ(this=column, expression=exp.column(subject_marker(spec.scope or "")))


def _filtered(node: exp.Table, spec: TableSpec, *, qualify: bool) -> exp.Subquery:
    alias = node.alias or spec.name
    inner = (
        exp.select("*").from_(_table_ref(spec, qualify=qualify)).where(_scope_filter(spec, None))
    )
    return inner.subquery(alias)


def _scope_update(tree: exp.Expression, node: exp.Table, spec: TableSpec, *, qualify: bool) -> None:
    qualifier = node.alias or spec.name
    if qualify:
        node.set("db", exp.to_identifier(spec.schema))
    if spec.scope is None:
        return
    condition = _scope_filter(spec, qualifier)
    where = tree.args.get("where")
    if where is None:
        tree.set("where", exp.Where(this=condition))
    else:
        tree.set("where", exp.Where(this=exp.and_(exp.Paren(this=where.this), condition)))
