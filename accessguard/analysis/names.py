"""Name resolution as PostgreSQL does it: which FROM item a column reference reads.

One ``Env`` per query level (a SELECT, with its enclosing levels as parents).
Some clauses see less than their level's whole FROM list: an ``ON`` clause
sees only the two inputs of its own join (``x JOIN y ON ..`` sees x and y; in
``a, b JOIN c ON ..`` not a), then the enclosing levels. Such a clause is
resolved in a *view*: an ``Env`` with the narrower sources whose ``home`` is
the level itself (row-scope bindings live on the home).

Expressions resolve names against input columns only (FROM items, innermost
level first), then as a whole-row reference to a FROM item. Output column
names are matched only where PostgreSQL matches them: a bare name in ORDER BY
or DISTINCT ON (output first), a bare name in GROUP BY (local input first,
then output); the walker handles those items itself and calls ``resolve``
for the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NoReturn

from sqlglot import exp

from accessguard.analysis.facts import Value
from accessguard.errors import Reason
from accessguard.policy.catalog import TableSpec

#: Unquoted, these words are SQL functions of the session, not columns.
SPECIAL_NAMES = frozenset(
    {
        "user",
        "current_user",
        "current_role",
        "session_user",
        "system_user",
        "current_catalog",
        "current_schema",
    }
)


class Refusal(Exception):
    """Raised inside the walker; analyze() turns it into Facts.problem."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def refuse(reason: Reason, detail: str) -> NoReturn:
    raise Refusal(reason, detail)


def ident(node: exp.Expression | None) -> str:
    """The name an identifier denotes: unquoted folds to lower case, as in PostgreSQL."""
    if isinstance(node, exp.Identifier):
        name = node.this
        if type(name) is not str:
            name = str(name)
        return name if node.quoted else name.lower()
    if isinstance(node, str):
        return node.lower()
    refuse(Reason.SQL_UNANALYZABLE, "a name the analyser cannot read")


#: scoped table -> at most how many of its rows one row carries values of
Weight = dict[str, int]


def weight_sum(a: Weight, b: Weight) -> Weight:
    """The weight of a row made of a row of each (a join, a select list)."""
    out = dict(a)
    for table, n in b.items():
        out[table] = out.get(table, 0) + n
    return out


def weight_max(a: Weight, b: Weight) -> Weight:
    """The weight of a row that comes from one or the other (a set operation)."""
    out = dict(a)
    for table, n in b.items():
        out[table] = max(out.get(table, 0), n)
    return out


@dataclass(frozen=True, slots=True)
class Origin:
    """A column of a scoped table whose rows, where the statement reaches them, are proven
    the ticket's subject's (``rowscope``): what an equality with it binds."""

    spec: TableSpec
    column: str


#: what one output column of a derived table carries: the values it is bound
#: to (wherever it is not NULL) and the scoped column it is a plain copy of
Carried = tuple[tuple[Value, ...], Origin | None]


@dataclass(eq=False)
class Source:
    """A relation in a FROM list: a physical table or a derived one (subquery, CTE)."""

    alias: str
    spec: TableSpec | None = None
    columns: frozenset[str] = frozenset()
    node: exp.Table | None = None
    #: whether reading it reads a scoped table (the table itself, or inside the query)
    scoped: bool = False
    #: at most how many rows of each scoped table one of its rows carries values of
    weight: Weight = field(default_factory=dict)
    #: a derived table's output columns that are plain copies of a bound column
    carried: dict[str, Carried] = field(default_factory=dict)
    #: some of its rows are not rows of a scoped table: a table with no row scope,
    #: VALUES, a query with no FROM, or a query over any of those (``opens``)
    public: bool = False
    #: output columns computed over several rows of a scoped table: a scalar subquery
    #: or an aggregate or window call over one, or such a column of a derived table
    spread: frozenset[str] = frozenset()

    def has(self, column: str) -> bool:
        return column in self.columns


@dataclass(eq=False, frozen=True)
class Merged:
    """A column a USING or NATURAL join merged: an unqualified ``name`` means it.

    ``source`` carries its value (the left input's column for an inner or
    left join, the right input's for a right join); ``covers`` are the
    sources whose column of that name it hides from unqualified lookups.
    """

    name: str
    source: Source
    covers: frozenset[int]


@dataclass(eq=False)
class Env:
    """The sources visible where an expression is resolved, and the enclosing levels.

    ``home`` is None for a query level itself; a view (an ON clause) names
    its level there. ``wider``: outside PostgreSQL, the level's whole FROM
    list, which must resolve every name of the view the same way (other
    databases scope ON clauses differently; where they could disagree, the
    statement is refused).
    """

    parent: Env | None
    sources: dict[str, Source] = field(default_factory=dict)
    outputs: frozenset[str] = frozenset()
    #: values each (source, column) is bound to by this SELECT's conjuncts
    bound: dict[tuple[int, str], tuple[Value, ...]] = field(default_factory=dict)
    home: Env | None = None
    wider: dict[str, Source] | None = None
    #: columns merged by USING / NATURAL joins of the visible join trees
    merged: list[Merged] = field(default_factory=list)
    #: ids of this level's scoped tables whose reachable rows are bound to the subject
    proven: set[int] = field(default_factory=set)
    #: whether a conjunct of the level compares a column with a subquery (``rowscope.bind``
    #: says; the level is bound again once its subqueries are walked)
    subqueries: bool = False
    #: the level is walking its select list: a spread column (``Source.spread``) read
    #: there is handed over with each row, not used to choose rows
    listing: bool = False
    #: the level's output columns whose expression reads a spread column or a scoped table
    spread: set[str] = field(default_factory=set)
    #: what ``resolve`` answered here, by id of the column node (with the node itself)
    resolved: dict[int, tuple[exp.Column, tuple[Resolved, Source | None]]] = field(
        default_factory=dict
    )

    @property
    def level(self) -> Env:
        """The query level this environment belongs to."""
        return self.home if self.home is not None else self

    def view(self, sources: list[Source], *, strict: bool) -> Env:
        """The environment of a clause that sees only ``sources`` of this level.

        ``strict``: PostgreSQL's scoping, nothing to compare; otherwise the
        whole FROM list must agree with the view on every name.
        """
        level = self.level
        ids = {id(s) for s in sources} if level.merged else set()
        return Env(
            self.parent,
            sources={s.alias: s for s in sources},
            home=level,
            wider=None if strict else level.sources,
            merged=[m for m in level.merged if m.covers <= ids],
        )


#: what a column reference resolves to: (source, column, query level), or None
#: for a whole-row reference (``record`` then reads every column of it)
Resolved = tuple[Source, str, Env] | None


def opens(source: Source) -> bool:
    """Whether ``source`` has rows that are not rows of a scoped table (``Source.public``).

    A FROM item with no weight is one (a table with no row scope, VALUES, a
    query over them); so is a derived table over one, whatever its scalar
    subqueries add to its weight.
    """
    return source.public or not source.weight


def public_level(env: Env) -> bool:
    """Whether the query level of ``env`` reads a FROM item with rows of no scoped table.

    Such a level's rows multiply with no scoped row to count: whatever ranges
    over several scoped rows and chooses among them spells those rows in the
    one row it leaves (``Walker._chooses``, ``Walker._spread_read``).
    """
    return any(opens(s) for s in env.level.sources.values())


def column_hits(sources: dict[str, Source], merged: list[Merged], column: str) -> list[Source]:
    """The sources an unqualified ``column`` names among ``sources`` (refused if ambiguous).

    A column merged by USING / NATURAL counts once, through the source that
    carries its value; the columns it merged are hidden.
    """
    entries = [m for m in merged if m.name == column]
    hidden: set[int] = set()
    for entry in entries:
        hidden |= entry.covers
    hits = [m.source for m in entries]
    hits += [s for s in sources.values() if s.has(column) and id(s) not in hidden]
    if len(hits) > 1:
        refuse(Reason.SQL_UNANALYZABLE, f"column {column} is ambiguous")
    return hits


def _agree(scope: Env, found: Source | None, other: Source | None, what: str) -> None:
    if scope.wider is not None and found is not other:
        refuse(
            Reason.SQL_UNANALYZABLE,
            f"{what} in an ON clause could name another table of the FROM list",
        )


def resolve(node: exp.Column, env: Env) -> tuple[Resolved, Source | None]:
    """Resolve a column reference as PostgreSQL does, against input columns only.

    Returns the column found (None for a whole-row reference) and, for a
    whole-row reference, the FROM item it names. A qualified name is looked
    for in the nearest level that has a FROM item of that name; an
    unqualified one as a column at every level, innermost first, then as a
    whole-row reference to a FROM item.

    The walker and the row-scope binding ask about the same references: the
    answer is kept in ``env`` (with the node, so an id never matches another
    node). Every reference of a level is resolved once its FROM list is
    complete (a LATERAL item's while the list is built, all of them at the
    same point), so the second answer would be the first; a refusal is never
    kept (the walk stops).
    """
    key = id(node)
    kept = env.resolved.get(key)
    if kept is not None and kept[0] is node:
        return kept[1]
    found = _resolve(node, env)
    env.resolved[key] = (node, found)
    return found


def _resolve(node: exp.Column, env: Env) -> tuple[Resolved, Source | None]:
    args = node.args
    if args.get("catalog"):
        refuse(Reason.SQL_UNANALYZABLE, "catalog-qualified column references are not analyzed")
    this = node.this
    if not isinstance(this, exp.Identifier):
        refuse(Reason.SQL_UNANALYZABLE, "a column reference the analyser cannot read")
    column = this.this if type(this.this) is str else str(this.this)  # ident(this), inline
    if not this.quoted:
        column = column.lower()
    qualifier = args.get("table")
    if args.get("db"):
        return _schema_qualified(node, env, column), None
    scope: Env | None = env
    if qualifier is not None:
        if isinstance(qualifier, exp.Identifier) and type(qualifier.this) is str:
            name = qualifier.this if qualifier.quoted else qualifier.this.lower()  # ident
        else:
            name = ident(qualifier)
        while scope is not None:
            source = scope.sources.get(name)
            if scope.wider is not None:
                _agree(scope, source, scope.wider.get(name), name)
            if source is not None:
                if column not in source.columns:  # Source.has
                    refuse(Reason.COLUMN_UNKNOWN, f"{source.alias} has no column {column}")
                return (source, column, scope.home or scope), None  # its level
            scope = scope.parent
        refuse(Reason.COLUMN_UNKNOWN, f"no table named {name} for column {column}")
    if not node.this.quoted and column in SPECIAL_NAMES:
        refuse(Reason.FUNCTION_FORBIDDEN, f"{column.upper()} reads session state")
    while scope is not None:
        hits = column_hits(scope.sources, scope.merged, column)
        if scope.wider is not None:
            wide = column_hits(scope.wider, scope.level.merged, column)
            _agree(scope, hits[0] if hits else None, wide[0] if wide else None, column)
        if hits:
            return (hits[0], column, scope.level), None
        scope = scope.parent
    scope = env
    while scope is not None:
        whole = scope.sources.get(column)
        if scope.wider is not None:
            _agree(scope, whole, scope.wider.get(column), column)
        if whole is not None:
            return None, whole
        scope = scope.parent
    refuse(Reason.COLUMN_UNKNOWN, f"column {column} is not in any table of the statement")


def _schema_qualified(node: exp.Column, env: Env, column: str) -> tuple[Source, str, Env]:
    """Resolve ``schema.table.column`` as PostgreSQL does; make it ``table.column`` in the tree.

    PostgreSQL matches it only to a FROM item that is that very table without
    an alias, at the nearest level that has one (scanNameSpaceForRelid), never
    to a WITH item or an alias of that name. The SQL sent reads each table
    through a subquery named like the table, so the reference is rewritten
    without its schema; that is refused where a nearer FROM item of the same
    name would then take it.
    """
    schema, table = ident(node.args["db"]), ident(node.args.get("table"))
    scope: Env | None = env
    while scope is not None:
        found = _unaliased(scope.sources, schema, table)
        if scope.wider is not None:
            _agree(scope, found, _unaliased(scope.wider, schema, table), table)
        if found is not None:
            if not found.has(column):
                refuse(Reason.COLUMN_UNKNOWN, f"{schema}.{table} has no column {column}")
            node.set("db", None)  # the table's projection subquery is named ``table``
            return found, column, scope.level
        if table in scope.sources:
            refuse(
                Reason.SQL_UNANALYZABLE,
                f"{schema}.{table}.{column} where the FROM item named {table} is another "
                "table, an alias or a WITH item",
            )
        scope = scope.parent
    refuse(Reason.COLUMN_UNKNOWN, f"no FROM item {schema}.{table} for column {column}")


def _unaliased(sources: dict[str, Source], schema: str, table: str) -> Source | None:
    """The FROM item that is table ``schema.table`` named by itself (no alias), if any."""
    source = sources.get(table)
    if (
        source is None
        or source.spec is None
        or source.node is None
        or source.node.args.get("alias") is not None
        or (source.spec.schema, source.spec.name) != (schema, table)
    ):
        return None
    return source


def bare_name(node: exp.Expression) -> str | None:
    """The name of an unqualified column reference (a ColumnRef of one name), else None."""
    if not isinstance(node, exp.Column) or not isinstance(node.this, exp.Identifier):
        return None
    if any(node.args.get(k) for k in ("table", "db", "catalog")):
        return None
    name = ident(node.this)
    if not node.this.quoted and name in SPECIAL_NAMES:
        return None
    return name


def local_input(env: Env, column: str) -> bool:
    """Whether ``column`` names an input column of this level (GROUP BY looks there first)."""
    return bool(column_hits(env.level.sources, env.level.merged, column))


def outer_input(env: Env, column: str) -> bool:
    """Whether ``column`` names an input column of an enclosing level."""
    scope = env.level.parent
    while scope is not None:
        if any(s.has(column) for s in scope.sources.values()):
            return True
        scope = scope.parent
    return False
