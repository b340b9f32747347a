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
from accessguard.analysis.walker import ident, param_key
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
            node.set("db", exp.Identifier(this=spec.schema, quoted=False))
    keys: list[int | str] = []
    for param in list(tree.find_all(exp.Parameter, exp.Placeholder)):
        assert isinstance(param, exp.Parameter | exp.Placeholder)  # noqa: S101 - find_all's type
        key = param_key(param)
        if isinstance(key, str) and key.startswith("#"):  # a literal: put back as written
            param.replace(_column(f"__ag_lit{key[1:]}__"))
            continue
        keys.append(key)
        param.replace(_column(f"__ag_p{len(keys) - 1}__"))
    from accessguard.analysis import _dialect

    text = _dialect(dialect).generate(tree, comments=False, copy=False)  # our tree: no copy
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
    table = exp.Table(this=exp.Identifier(this=spec.name, quoted=False))
    if qualify:
        table.set("db", exp.Identifier(this=spec.schema, quoted=False))
    return table


def _alias(node: exp.Table, spec: TableSpec) -> str:
    """The name the statement uses for the table, as PostgreSQL folds it."""
    alias = node.args.get("alias")
    return ident(alias.this) if alias is not None else spec.name


def _column(name: str, table: str | None = None) -> exp.Column:
    column = exp.Column(this=exp.Identifier(this=name, quoted=False))
    if table is not None:
        column.set("table", exp.Identifier(this=table, quoted=True))
    return column


def _scope_filter(spec: TableSpec, qualifier: str | None) -> exp.Expression:
    return exp.EQ(
        this=_column(spec.scope_column or "", qualifier),
        expression=_column(subject_marker(spec.scope or "")),
    )


def _filtered(node: exp.Table, spec: TableSpec, *, qualify: bool) -> exp.Subquery:
    # Built node by node: sqlglot's builder helpers parse strings and deep-copy.
    inner = exp.Select(
        expressions=[exp.Star()],
        from_=exp.From(this=_table_ref(spec, qualify=qualify)),
        where=exp.Where(this=_scope_filter(spec, None)),
    )
    alias = exp.TableAlias(this=exp.Identifier(this=_alias(node, spec), quoted=True))
    return exp.Subquery(this=inner, alias=alias)


def _scope_update(tree: exp.Expression, node: exp.Table, spec: TableSpec, *, qualify: bool) -> None:
    qualifier = _alias(node, spec)
    if qualify:
        node.set("db", exp.Identifier(this=spec.schema, quoted=False))
    if spec.scope is None:
        return
    condition = _scope_filter(spec, qualifier)
    where = tree.args.get("where")
    if where is None:
        tree.set("where", exp.Where(this=condition))
    else:
        both = exp.And(this=exp.Paren(this=where.this), expression=condition)
        tree.set("where", exp.Where(this=both))
