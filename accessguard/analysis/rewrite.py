"""The second wall: the SQL actually sent, regenerated from the analyzed tree.

Every physical table is schema-qualified (no search_path shadowing) and read
through a subquery that projects an explicit column list: the columns of that
table the statement reads according to the analysis, in schema.toml's order
(every one of which the decision checks). The database cannot return a column
the statement did not name, not even one schema.toml does not know (a column
a DBA added later comes back through no ``*``, ``t.*``, whole-row reference,
derived table or WITH item). A scoped table's subquery also filters on its
scope column. A table read for no column (``count(*)``, ``EXISTS``) projects
nothing: ``SELECT FROM t`` in PostgreSQL, a NULL named by the guard in SQLite.

The UPDATE target cannot be a subquery: it carries the scope filter ANDed to
its WHERE, ``RETURNING *`` becomes its read columns, and a whole-row
reference to it becomes a row of those columns only.

The subject id is left as a marker replaced per execution, so one analysis
serves every ticket; the projection depends only on the statement.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from sqlglot import exp

from accessguard.analysis.dialects import dialect as sql_dialect
from accessguard.analysis.facts import subject_marker
from accessguard.analysis.walker import ident, param_key
from accessguard.catalog import TableSpec

_SENTINEL = re.compile(r"__ag_p(\d+)__")
#: the name of the one column SQLite's empty projection has (SQLite has no ``SELECT FROM t``)
NO_COLUMN = "__ag_none__"
#: the name a whole-row reference to the UPDATE target is rebuilt under
ROW_ALIAS = "__ag_row__"


def projection(spec: TableSpec, reads: Collection[tuple[str, str]]) -> tuple[str, ...]:
    """The columns of ``spec`` the statement reads (``reads``: the analysis'), in schema order."""
    return tuple(c for c in spec.columns if (spec.qualified, c) in reads)


def rewrite(
    tree: exp.Expression,
    physical: list[tuple[exp.Table, TableSpec]],
    *,
    reads: Collection[tuple[str, str]],
    dialect: str,
    escape_percent: bool,
) -> tuple[str, tuple[int | str, ...]]:
    """Return (sql text with subject markers, parameter keys in sent order). Mutates tree.

    ``reads``: the (qualified table, column) pairs the analysis found; each
    table is read through a projection of exactly its pairs.
    """
    qualify = dialect == "postgres"
    update_target = tree.this if isinstance(tree, exp.Update) else None
    # the UPDATE target first: its whole-row references are found in the tree as written
    for node, spec in sorted(physical, key=lambda item: item[0] is not update_target):
        columns = projection(spec, reads)
        if node is update_target:
            assert isinstance(tree, exp.Update)  # noqa: S101 - the target of an UPDATE
            _scope_update(tree, node, spec, columns, qualify=qualify)
        else:
            joins = node.args.get("joins")  # the first table of a join group holds its joins
            replacement = _projected(node, spec, columns, dialect=dialect)
            node.replace(replacement)
            if joins:
                replacement.set("joins", joins)
    keys: list[int | str] = []
    for param in list(tree.find_all(exp.Parameter, exp.Placeholder)):
        assert isinstance(param, exp.Parameter | exp.Placeholder)  # noqa: S101 - find_all's type
        key = param_key(param)
        if isinstance(key, str) and key.startswith("#"):  # a literal: put back as written
            param.replace(_column(f"__ag_lit{key[1:]}__"))
            continue
        keys.append(key)
        param.replace(_column(f"__ag_p{len(keys) - 1}__"))
    text = sql_dialect(dialect).generate(tree, comments=False, copy=False)  # our tree: no copy
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


def _column(name: str, table: str | None = None, *, quoted: bool = False) -> exp.Column:
    column = exp.Column(this=exp.Identifier(this=name, quoted=quoted))
    if table is not None:
        column.set("table", exp.Identifier(this=table, quoted=True))
    return column


def _scope_filter(spec: TableSpec, qualifier: str | None) -> exp.Expression:
    return exp.EQ(
        this=_column(spec.scope_column or "", qualifier),
        expression=_column(subject_marker(spec.scope or "")),
    )


def _projected(
    node: exp.Table, spec: TableSpec, columns: tuple[str, ...], *, dialect: str
) -> exp.Subquery:
    """``(SELECT "c1", ... FROM schema.t [WHERE scope = <subject>]) AS "alias"``."""
    # Built node by node: sqlglot's builder helpers parse strings and deep-copy.
    items: list[exp.Expression] = [_column(c, quoted=True) for c in columns]
    if not items and dialect != "postgres":
        # SQLite needs a column; this one is named by the guard and holds nothing
        items = [exp.Alias(this=exp.Null(), alias=exp.Identifier(this=NO_COLUMN, quoted=True))]
    inner = exp.Select(
        expressions=items, from_=exp.From(this=_table_ref(spec, qualify=dialect == "postgres"))
    )
    if spec.scope is not None:
        inner.set("where", exp.Where(this=_scope_filter(spec, None)))
    alias = exp.TableAlias(this=exp.Identifier(this=_alias(node, spec), quoted=True))
    return exp.Subquery(this=inner, alias=alias)


def _scope_update(
    tree: exp.Update,
    node: exp.Table,
    spec: TableSpec,
    columns: tuple[str, ...],
    *,
    qualify: bool,
) -> None:
    qualifier = _alias(node, spec)
    _whole_rows(tree, qualifier, spec, columns)
    returning = tree.args.get("returning")
    if returning is not None:
        expanded: list[exp.Expression] = []
        for item in returning.expressions:
            if isinstance(item, exp.Star):
                expanded.extend(_column(c, quoted=True) for c in columns)
            else:
                expanded.append(item)
        returning.set("expressions", expanded)
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


def _whole_rows(tree: exp.Update, name: str, spec: TableSpec, columns: tuple[str, ...]) -> None:
    """Rebuild each whole-row reference to the UPDATE target as a row of ``columns`` only.

    ``t`` (a name that is no column of the target, where no nearer FROM item
    of that name hides it) becomes ``(SELECT r FROM (SELECT "t".c1, ...) AS r)``:
    a row with the same field names, holding only the columns the analysis saw.
    """
    for column in list(tree.find_all(exp.Column)):
        if (
            column.args.get("table") is not None
            or not isinstance(column.this, exp.Identifier)
            or ident(column.this) != name
            or name in spec.column_set
            or _hidden(column, tree, name)
        ):
            continue
        row = exp.Select(
            expressions=[_column(c, name) for c in columns],
        )
        outer = exp.Select(
            expressions=[_column(ROW_ALIAS, quoted=True)],
            from_=exp.From(
                this=exp.Subquery(
                    this=row,
                    alias=exp.TableAlias(this=exp.Identifier(this=ROW_ALIAS, quoted=True)),
                )
            ),
        )
        column.replace(exp.Subquery(this=outer))


def _hidden(node: exp.Expression, top: exp.Expression, name: str) -> bool:
    """Whether a FROM item named ``name`` of a query between ``node`` and ``top`` hides it."""
    parent = node.parent
    while parent is not None and parent is not top:
        if isinstance(parent, exp.Select):
            items = [parent.args.get("from_"), *(parent.args.get("joins") or ())]
            for item in items:
                source = item.this if item is not None else None
                alias = source.args.get("alias") if source is not None else None
                named = ident(alias.this) if alias is not None else None
                if named is None and isinstance(source, exp.Table):
                    named = ident(source.this) if isinstance(source.this, exp.Identifier) else None
                if named == name:
                    return True
        parent = parent.parent
    return False
