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

A column the employee reads masked (``accessguard.policy.masking``) is projected as
its mask expression under its own name: ``(SELECT "id", LEFT(CAST("email" AS
TEXT), 1) || '***@' || ... AS "email" FROM ...)``. Whatever the statement
does with it outside that subquery works on the masked value. The UPDATE
target has no projection, so a masked column of it is refused (``column.masked``).

The subject id is left as a marker replaced per execution, so one analysis
serves every ticket; the projection depends only on the statement and the
employee's masks.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from sqlglot import exp

from accessguard.analysis.dialects import dialect as sql_dialect
from accessguard.analysis.facts import subject_marker
from accessguard.analysis.names import refuse
from accessguard.analysis.walker import ident, param_key
from accessguard.errors import Reason
from accessguard.policy.catalog import TableSpec
from accessguard.policy.masking import NO_MASKING, MaskedColumn, Masking, hmac_pads

_SENTINEL = re.compile(r"__ag_p(\d+)__")
#: the name of the one column SQLite's empty projection has (SQLite has no ``SELECT FROM t``)
NO_COLUMN = "__ag_none__"
#: the name a whole-row reference to the UPDATE target is rebuilt under
ROW_ALIAS = "__ag_row__"


def projection(spec: TableSpec, reads: Collection[tuple[str, str]]) -> tuple[str, ...]:
    """The columns of ``spec`` the statement reads (``reads``: the analysis'), in schema order."""
    return tuple(c for c in spec.columns if (spec.qualified, c) in reads)


def rewrite(  # noqa: PLR0913 - keyword-only options
    tree: exp.Expression,
    physical: list[tuple[exp.Table, TableSpec]],
    *,
    reads: Collection[tuple[str, str]],
    dialect: str,
    escape_percent: bool,
    masking: Masking = NO_MASKING,
) -> tuple[str, tuple[int | str, ...], frozenset[MaskedColumn]]:
    """Return (sql text with subject markers, parameter keys in sent order, masks applied).

    Mutates tree. ``reads``: the (qualified table, column) pairs the analysis
    found; each table is read through a projection of exactly its pairs, the
    columns ``masking`` names through their mask.
    """
    qualify = dialect == "postgres"
    update_target = tree.this if isinstance(tree, exp.Update) else None
    masks = masking.tables()
    applied: set[MaskedColumn] = set()
    # the UPDATE target first: its whole-row references are found in the tree as written
    for node, spec in sorted(physical, key=lambda item: item[0] is not update_target):
        columns = projection(spec, reads)
        masked = {c: m for c, m in masks.get(spec.qualified, {}).items() if c in columns}
        if masked and (node is update_target or dialect != "postgres"):
            obj = f"{spec.name}.{min(masked)}"
            refuse(
                Reason.COLUMN_MASKED,
                f"{obj} is granted masked only: an UPDATE of its table cannot read it "  # noqa: S608
                "(in WHERE, SET or RETURNING)"
                if node is update_target
                else f"{obj} is granted masked only, and masks apply on PostgreSQL only",
            )
        applied.update((spec.qualified, c, m) for c, m in masked.items())
        if node is update_target:
            assert isinstance(tree, exp.Update)  # noqa: S101 - the target of an UPDATE
            _scope_update(tree, node, spec, columns, qualify=qualify)
        else:
            joins = node.args.get("joins")  # the first table of a join group holds its joins
            replacement = _projected(
                node, spec, columns, dialect=dialect, masked=masked, key=masking.key
            )
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
    if any(mask == "hash" for _t, _c, mask in applied):
        text = _pads_apart(text, masking.key)
    if escape_percent:
        text = text.replace("%", "%%")
    order: list[int | str] = []

    def placeholder(match: re.Match[str]) -> str:
        key = keys[int(match.group(1))]
        order.append(key)
        if dialect == "postgres":
            return "%s"
        return f":{key}" if isinstance(key, str) else "?"

    return _SENTINEL.sub(placeholder, text), tuple(order), frozenset(applied)


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


def _projected(  # noqa: PLR0913 - one projection's inputs
    node: exp.Table,
    spec: TableSpec,
    columns: tuple[str, ...],
    *,
    dialect: str,
    masked: dict[str, str],
    key: bytes,
) -> exp.Subquery:
    """``(SELECT "c1", ... FROM schema.t [WHERE scope = <subject>]) AS "alias"``.

    A masked column ``c`` is ``<mask expression of "c"> AS "c"`` instead.
    """
    # Built node by node: sqlglot's builder helpers parse strings and deep-copy.
    items: list[exp.Expression] = [
        _column(c, quoted=True)
        if c not in masked
        else exp.Alias(
            this=mask_expression(masked[c], c, key),
            alias=exp.Identifier(this=c, quoted=True),
        )
        for c in columns
    ]
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


def mask_expression(mask: str, column: str, key: bytes) -> exp.Expression:
    """PostgreSQL's expression of ``mask`` over the column ``column`` (built-in functions only).

    ``email``: ``LEFT(t, 1) || '***@' || SPLIT_PART(t, '@', 2)``; ``last4``:
    ``'***-' || RIGHT(t, 4)``; ``hash``: HMAC-SHA256 from the key's pads with
    the built-in ``SHA256`` (``accessguard.policy.masking``), where ``t`` is the
    column cast to text. NULL stays NULL (``||`` and these functions are strict).
    """

    def text() -> exp.Expression:
        return exp.Cast(this=_column(column, quoted=True), to=exp.DataType.build("text"))

    def string(value: str) -> exp.Literal:
        return exp.Literal.string(value)

    if mask == "email":
        first = exp.Left(this=text(), expression=exp.Literal.number(1))
        domain = exp.SplitPart(this=text(), delimiter=string("@"), part_index=exp.Literal.number(2))
        return exp.DPipe(this=exp.DPipe(this=first, expression=string("***@")), expression=domain)
    if mask == "last4":
        return exp.DPipe(
            this=string("***-"), expression=exp.Right(this=text(), expression=exp.Literal.number(4))
        )
    if mask == "hash":
        inner, outer = hmac_pads(key)

        def pad(value: bytes) -> exp.Expression:
            return exp.Decode(this=string(value.hex()), charset=string("hex"))

        utf8 = exp.Anonymous(this="CONVERT_TO", expressions=[text(), string("UTF8")])
        digest = exp.SHA2Digest(this=exp.DPipe(this=pad(inner), expression=utf8))
        digest = exp.SHA2Digest(this=exp.DPipe(this=pad(outer), expression=digest))
        return exp.Encode(this=digest, charset=string("hex"))
    return refuse(Reason.COLUMN_MASKED, "a mask the guard does not know")


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


def _pads_apart(text: str, key: bytes) -> str:
    """Each HMAC pad literal of ``key`` on a line of its own.

    An error PostgreSQL reports with a position (``operator does not exist``)
    comes back with the line of the SQL sent around that position ("LINE 1:
    ..."): the employee's own tokens are never on a pad's line, so no error
    shows any part of the key.
    """
    for pad in hmac_pads(key):
        literal = f"'{pad.hex()}'"
        text = text.replace(literal, f"\n{literal}\n")
    return text


def mask_texts(masking: Masking, reads: Collection[tuple[str, str]]) -> dict[str, dict[str, str]]:
    """qualified table -> column -> its mask expression as PostgreSQL text, for each read."""
    out: dict[str, dict[str, str]] = {}
    for table, column, mask in masking.columns:
        if (table, column) in reads:
            text = sql_dialect("postgres").generate(mask_expression(mask, column, masking.key))
            out.setdefault(table, {})[column] = text
    return out
