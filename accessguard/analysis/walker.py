"""Turn one parsed statement into facts: tables, columns, functions, row scope.

The walker accepts only node types it knows (an allowlist); anything else is
refused as ``sql.unanalyzable``, so a construct sqlglot learns tomorrow is
denied until someone teaches the walker what it reads.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NoReturn

from sqlglot import exp

from accessguard.analysis.facts import Const, KeyBinding, Param, ScopeRef, Value
from accessguard.analysis.functions import (
    ALLOWED_ANONYMOUS,
    ALLOWED_FUNCS,
    SCALAR_NODES,
    UNIT_FUNCS,
)
from accessguard.analysis.keys import key_binding
from accessguard.analysis.shape import LITERAL_BASE
from accessguard.catalog import Catalog, TableSpec
from accessguard.errors import Reason

MAX_NODES = 5000
_CATALOG_SCHEMAS = frozenset({"pg_catalog", "information_schema", "pg_toast"})
_SELECT_ARGS_OK = frozenset(
    {
        "with_",
        "expressions",
        "distinct",
        "from_",
        "joins",
        "where",
        "group",
        "having",
        "order",
        "limit",
        "offset",
    }
)
_SETOP_ARGS_OK = frozenset({"with_", "this", "expression", "distinct", "order", "limit", "offset"})
_UPDATE_ARGS_OK = frozenset({"this", "expressions", "where", "returning"})


#: a column in the union-find: (id of its Source, column name)
Term = tuple[int, str]


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
        name = str(node.this)
        return name if node.quoted else name.lower()
    if isinstance(node, str):
        return node.lower()
    refuse(Reason.SQL_UNANALYZABLE, "a name the analyser cannot read")


@dataclass(eq=False)
class Source:
    """A relation in a FROM list: a physical table or a derived one (subquery, CTE)."""

    alias: str
    spec: TableSpec | None = None
    columns: frozenset[str] = frozenset()
    node: exp.Table | None = None

    def has(self, column: str) -> bool:
        return column in self.columns


@dataclass(eq=False)
class Env:
    """The sources visible in one SELECT (plus its enclosing ones, for correlation)."""

    parent: Env | None
    sources: dict[str, Source] = field(default_factory=dict)
    outputs: frozenset[str] = frozenset()
    #: values each (source, column) is bound to by this SELECT's conjuncts
    bound: dict[tuple[int, str], tuple[Value, ...]] = field(default_factory=dict)


@dataclass(eq=False)
class Walker:
    catalog: Catalog
    dialect: str
    reads: set[tuple[str, str]] = field(default_factory=set)
    writes: set[tuple[str, str]] = field(default_factory=set)
    tables: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    scopes: list[ScopeRef] = field(default_factory=list)
    params: set[int | str] = field(default_factory=set)
    physical: list[tuple[exp.Table, TableSpec]] = field(default_factory=list)
    nodes: int = 0

    # ------------------------------------------------------------------ queries

    def query(self, node: exp.Expression, parent: Env | None, ctes: dict[str, Source]) -> Source:
        """Analyze a query expression; return its output as a derived source."""
        self._count()
        with_ = node.args.get("with_")
        if with_ is not None:
            ctes = self._ctes(with_, parent, ctes)
        if isinstance(node, exp.Select):
            return self._select(node, parent, ctes)
        if isinstance(node, exp.SetOperation):
            self._only_args(node, _SETOP_ARGS_OK)
            left = self.query(node.this, parent, ctes)
            self.query(node.expression, parent, ctes)
            env = Env(parent, outputs=left.columns)
            self._modifiers(node, env, ctes)
            return left
        if isinstance(node, exp.Subquery):
            self._only_args(node, {"this", "alias", "order", "limit", "offset"})
            inner = self.query(node.this, parent, ctes)
            self._modifiers(node, Env(parent, outputs=inner.columns), ctes)
            return inner
        if isinstance(node, exp.Values):
            return self._values(node, parent, ctes)
        kind = type(node).__name__.upper()
        refuse(Reason.STATEMENT_FORBIDDEN, f"a {kind} inside a query is not allowed")

    def _ctes(
        self, with_: exp.With, parent: Env | None, ctes: dict[str, Source]
    ) -> dict[str, Source]:
        if with_.args.get("recursive") or with_.args.get("search") or with_.args.get("cycle"):
            refuse(Reason.SQL_UNANALYZABLE, "recursive common table expressions are not analyzed")
        scope = dict(ctes)
        for cte in with_.expressions:
            if not isinstance(cte, exp.CTE) or cte.args.get("scalar"):
                refuse(Reason.SQL_UNANALYZABLE, "an unsupported WITH item")
            out = self.query(cte.this, parent, scope)
            name = ident(cte.args["alias"].this)
            scope[name] = Source(name, columns=self._renamed(out.columns, cte.args["alias"]))
        return scope

    @staticmethod
    def _renamed(columns: frozenset[str], alias: exp.TableAlias | None) -> frozenset[str]:
        if alias is not None and alias.columns:
            return frozenset(ident(c) for c in alias.columns)
        return columns

    def _values(self, node: exp.Values, parent: Env | None, ctes: dict[str, Source]) -> Source:
        self._only_args(node, {"expressions", "alias"})
        env = Env(parent)
        width = 0
        for row in node.expressions:
            items = row.expressions if isinstance(row, exp.Tuple) else [row]
            width = len(items)
            for item in items:
                self.expr(item, env, ctes)
        alias = node.args.get("alias")
        names = frozenset(f"column{i}" for i in range(1, width + 1))
        return Source(
            ident(alias.this) if alias else "*values*", columns=self._renamed(names, alias)
        )

    def _select(self, node: exp.Select, parent: Env | None, ctes: dict[str, Source]) -> Source:
        self._only_args(node, _SELECT_ARGS_OK)
        env = Env(parent)
        from_ = node.args.get("from_")
        binding: list[exp.Expression] = []
        if from_ is not None:
            self._add_source(from_.this, env, ctes)
        for join in node.args.get("joins") or ():
            self._join(join, env, ctes, binding)
        where = node.args.get("where")
        if where is not None:
            binding.append(where.this)
        self._bind(binding, env)
        outputs = self._projections(node, env, ctes)
        env.outputs = outputs
        for join in node.args.get("joins") or ():
            if join.args.get("on") is not None:
                self.expr(join.args["on"], env, ctes)
        if where is not None:
            self.expr(where.this, env, ctes)
        for key in ("group", "having"):
            if node.args.get(key) is not None:
                self.expr(node.args[key], env, ctes)
        distinct = node.args.get("distinct")
        if distinct is not None and distinct.args.get("on") is not None:
            self.expr(distinct.args["on"], env, ctes)
        self._modifiers(node, env, ctes)
        return Source("*select*", columns=outputs)

    def _modifiers(self, node: exp.Expression, env: Env, ctes: dict[str, Source]) -> None:
        if node.args.get("order") is not None:
            self.expr(node.args["order"], env, ctes)
        for key in ("limit", "offset"):
            mod = node.args.get(key)
            if mod is None:
                continue
            if isinstance(mod, exp.Fetch):  # FETCH FIRST n ROWS ONLY: a LIMIT by another name
                options = mod.args.get("limit_options")
                if options is not None and (
                    options.args.get("percent") or options.args.get("with_ties")
                ):
                    refuse(Reason.SQL_UNANALYZABLE, "FETCH ... PERCENT / WITH TIES is not analyzed")
                if mod.args.get("count") is not None:
                    self.expr(mod.args["count"], Env(None), ctes)
                continue
            self._only_args(mod, {"this", "expression"})
            self.expr(mod.args.get("expression") or mod.this, Env(None), ctes)

    def _projections(self, node: exp.Select, env: Env, ctes: dict[str, Source]) -> frozenset[str]:
        names: set[str] = set()
        for proj in node.expressions:
            target = proj.this if isinstance(proj, exp.Alias) else proj
            if isinstance(target, exp.Star):
                for source in env.sources.values():
                    self._read_all(source)
                    names |= source.columns
                continue
            if isinstance(target, exp.Column) and isinstance(target.this, exp.Star):
                source = self._source_named(ident(target.args["table"]), env)
                self._read_all(source)
                names |= source.columns
                continue
            self.expr(target, env, ctes)
            if isinstance(proj, exp.Alias):
                names.add(ident(proj.args["alias"]))
            else:
                names.add(_output_name(proj))
        return frozenset(names)

    # ------------------------------------------------------------------ FROM

    def _join(
        self, join: exp.Join, env: Env, ctes: dict[str, Source], binding: list[exp.Expression]
    ) -> None:
        self._only_args(join, {"this", "on", "side", "kind"})
        side = (join.args.get("side") or "").upper()
        kind = (join.args.get("kind") or "").upper()
        if kind not in ("", "INNER", "CROSS") or side not in ("", "LEFT", "RIGHT", "FULL"):
            refuse(Reason.SQL_UNANALYZABLE, f"{side} {kind} JOIN is not analyzed".strip())
        self._add_source(join.this, env, ctes)
        on = join.args.get("on")
        # Only an inner join's ON filters the rows of both sides; an outer
        # join's ON never restricts its preserved side, so it binds nothing.
        if on is not None and not side:
            binding.append(on)

    def _add_source(self, item: exp.Expression, env: Env, ctes: dict[str, Source]) -> None:
        self._count()
        alias_node = item.args.get("alias")
        if isinstance(item, exp.Table):
            source = self._table(item, ctes)
        elif isinstance(item, exp.Subquery):
            out = self.query(item, env.parent, ctes)
            if alias_node is None:
                refuse(Reason.SQL_UNANALYZABLE, "a subquery in FROM needs an alias")
            source = Source(ident(alias_node.this), columns=self._renamed(out.columns, alias_node))
        elif isinstance(item, exp.Lateral) and isinstance(item.this, exp.Subquery):
            self._only_args(item, {"this", "alias", "view", "outer"})
            if item.args.get("view") or item.args.get("outer"):
                refuse(Reason.SQL_UNANALYZABLE, "LATERAL VIEW is not analyzed")
            out = self.query(item.this, env, ctes)
            if alias_node is None:
                refuse(Reason.SQL_UNANALYZABLE, "a LATERAL subquery needs an alias")
            source = Source(ident(alias_node.this), columns=self._renamed(out.columns, alias_node))
        elif isinstance(item, exp.Values):
            source = self._values(item, env.parent, ctes)
        else:
            refuse(Reason.SQL_UNANALYZABLE, "a FROM item the analyser cannot read")
        if source.alias in env.sources:
            refuse(Reason.SQL_UNANALYZABLE, f"the name {source.alias} is used twice in one FROM")
        env.sources[source.alias] = source

    def _table(self, item: exp.Table, ctes: dict[str, Source]) -> Source:
        if not isinstance(item.this, exp.Identifier):
            if isinstance(item.this, exp.Func):
                name = (
                    item.this.sql_name().lower()
                    if not isinstance(item.this, exp.Anonymous)
                    else str(item.this.this).lower()
                )
                refuse(
                    Reason.FUNCTION_FORBIDDEN, f"the set-returning function {name} is not allowed"
                )
            refuse(Reason.SQL_UNANALYZABLE, "a table expression the analyser cannot read")
        self._only_args(item, {"this", "alias", "db"})
        alias_node = item.args.get("alias")
        if alias_node is not None and alias_node.columns:
            refuse(Reason.SQL_UNANALYZABLE, "column aliases on a table are not analyzed")
        name = ident(item.this)
        schema = ident(item.args["db"]) if item.args.get("db") else None
        alias = ident(alias_node.this) if alias_node is not None else name
        if schema is None and name in ctes:
            return Source(alias, columns=ctes[name].columns)
        if schema in _CATALOG_SCHEMAS or (schema is None and name.startswith("pg_")):
            refuse(Reason.CATALOG_FORBIDDEN, f"system catalog {name} is not reachable")
        spec = self.catalog.lookup(schema, name)
        if spec is None:
            where = f"{schema}.{name}" if schema else name
            refuse(Reason.TABLE_UNKNOWN, f"table {where} is not in the guard's schema")
        if not spec.reachable:
            refuse(
                Reason.TABLE_FORBIDDEN, f"table {spec.name} is never reachable through the guard"
            )
        self.tables.add(spec.qualified)
        self.physical.append((item, spec))
        return Source(alias, spec=spec, columns=spec.column_set, node=item)

    # ------------------------------------------------------------------ row scope

    def _bind(self, conditions: list[exp.Expression], env: Env) -> None:
        """Union-find over the equalities the conjuncts assert; record scope bindings."""
        parent: dict[Term, Term] = {}
        consts: dict[Term, list[Value]] = {}

        def find(x: Term) -> Term:
            parent.setdefault(x, x)
            while parent[x] is not x:
                x = parent[x]
            return x

        def union(a: Term, b: Term) -> None:
            ra, rb = find(a), find(b)
            if ra is not rb:
                parent[ra] = rb
                consts.setdefault(rb, []).extend(consts.pop(ra, []))

        for conj in _conjuncts(conditions):
            if isinstance(conj, exp.EQ):
                left, right = self._term(conj.this, env), self._term(conj.expression, env)
                if left is None or right is None:
                    continue
                if isinstance(left, tuple) and isinstance(right, tuple):
                    union(left, right)
                elif isinstance(left, tuple) and isinstance(right, list):
                    consts.setdefault(find(left), []).extend(right)
                elif isinstance(right, tuple) and isinstance(left, list):
                    consts.setdefault(find(right), []).extend(left)
            elif (
                isinstance(conj, exp.In)
                and not conj.args.get("query")
                and not conj.args.get("unnest")
            ):
                term = self._term(conj.this, env)
                members = [self._term(e, env) for e in conj.expressions]
                lists = [m for m in members if isinstance(m, list)]
                if isinstance(term, tuple) and members and len(lists) == len(members):
                    consts.setdefault(find(term), []).extend(v for vs in lists for v in vs)
        for key in list(parent):
            bound = consts.get(find(key))
            if bound and isinstance(key, tuple):
                env.bound[key] = tuple(bound)
        for source in env.sources.values():
            if source.spec is not None and source.spec.scope is not None:
                key = (id(source), source.spec.scope_column or "")
                values = env.bound.get(key, ())
                self.scopes.append(
                    ScopeRef(
                        table=source.spec.qualified,
                        scope=source.spec.scope,
                        values=values,
                        key=None if values else _key_binding(source, env),
                    )
                )

    def _term(self, node: exp.Expression, env: Env) -> tuple[int, str] | list[Value] | None:
        """A column term (source id, column), a list of constant values, or None."""
        while isinstance(node, exp.Paren):
            node = node.this
        if isinstance(node, exp.Column) and isinstance(node.this, exp.Identifier):
            found = self._resolve(node, env, record=False)
            if found is None:
                return None
            source, column, owner = found
            if owner is env:
                return (id(source), column)
            outer = owner.bound.get((id(source), column))
            return list(outer) if outer else None
        value = _constant(node)
        return [value] if value is not None else None

    # ------------------------------------------------------------------ expressions

    def expr(self, node: exp.Expression, env: Env, ctes: dict[str, Source]) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            refuse(Reason.SQL_UNANALYZABLE, "the statement is too large to analyze")
        cls = type(node)
        branch = _BRANCHES.get(cls)
        if branch is None:
            branch = _BRANCHES[cls] = _branch(cls)
        if branch is _Branch.SCALAR:
            pass
        elif branch is _Branch.COLUMN:
            self._column(node, env)  # type: ignore[arg-type] # a Column by its branch
            return
        elif branch is _Branch.QUERY:
            self.query(node, env, ctes)
            return
        elif branch is _Branch.EXISTS:
            self.query(node.this, env, ctes)
            return
        elif branch is _Branch.PARAM:
            self.params.add(param_key(node))  # type: ignore[arg-type] # by its branch
            return
        elif branch is _Branch.STAR:
            if isinstance(node.parent, exp.Count):
                return
            refuse(Reason.SQL_UNANALYZABLE, "* outside the select list")
        elif branch is _Branch.TYPE:
            if _reads_catalog(node):  # type: ignore[arg-type] # a DataType by its branch
                refuse(Reason.CATALOG_FORBIDDEN, "casts to reg* types read the system catalogs")
        elif branch is _Branch.VAR:
            if isinstance(node.parent, UNIT_FUNCS) and node.arg_key in ("unit", "this"):
                return
            refuse(Reason.SQL_UNANALYZABLE, f"the word {node.name.upper()} is not analyzed")
        elif branch is _Branch.FUNCTION:
            self._function(node)  # type: ignore[arg-type] # a Func by its branch
        else:
            refuse(Reason.SQL_UNANALYZABLE, f"{cls.__name__} is not analyzed")
        for child in node.iter_expressions():
            self.expr(child, env, ctes)

    def _function(self, node: exp.Func) -> None:
        if isinstance(node, exp.Anonymous):
            name = str(node.this).lower() if isinstance(node.this, str) else ident(node.this)
            if name not in ALLOWED_ANONYMOUS:
                refuse(Reason.FUNCTION_FORBIDDEN, f"function {name} is not allowed")
        else:
            name = type(node).__name__.lower()
            if type(node) not in ALLOWED_FUNCS:
                refuse(
                    Reason.FUNCTION_FORBIDDEN, f"function {node.sql_name().lower()} is not allowed"
                )
        self.functions.add(name)

    def _column(self, node: exp.Column, env: Env) -> None:
        if not isinstance(node.this, exp.Identifier):
            refuse(Reason.SQL_UNANALYZABLE, "a column reference the analyser cannot read")
        found = self._resolve(node, env, record=True)
        if found is None:
            return  # an output alias (ORDER BY / GROUP BY name)
        source, column, _owner = found
        if source.spec is not None:
            self.reads.add((source.spec.qualified, column))

    def _resolve(
        self, node: exp.Column, env: Env, *, record: bool
    ) -> tuple[Source, str, Env] | None:
        """Resolve a column as PostgreSQL does; None for an output name or a whole-row reference.

        A bare ORDER BY item names an output column first. Otherwise an
        unqualified name is looked for as a column at every level, innermost
        first; then as an output name (a bare GROUP BY item of this SELECT);
        last as a whole-row reference to a FROM item.
        """
        if node.args.get("db") or node.args.get("catalog"):
            refuse(Reason.SQL_UNANALYZABLE, "schema-qualified column references are not analyzed")
        column = ident(node.this)
        qualifier = node.args.get("table")
        scope: Env | None = env
        if qualifier is not None:
            name = ident(qualifier)
            while scope is not None:
                source = scope.sources.get(name)
                if source is not None:
                    if not source.has(column):
                        refuse(Reason.COLUMN_UNKNOWN, f"{source.alias} has no column {column}")
                    return source, column, scope
                scope = scope.parent
            refuse(Reason.COLUMN_UNKNOWN, f"no table named {name} for column {column}")
        if not node.this.quoted and column in _SPECIAL_NAMES:
            refuse(Reason.FUNCTION_FORBIDDEN, f"{column.upper()} reads session state")
        if column in env.outputs and _bare_sort_item(node):
            return None  # a bare ORDER BY name is the output column first (GROUP BY: last)
        while scope is not None:
            hits = [s for s in scope.sources.values() if s.has(column)]
            if len(hits) > 1:
                refuse(Reason.SQL_UNANALYZABLE, f"column {column} is ambiguous")
            if hits:
                return hits[0], column, scope
            scope = scope.parent
        if column in env.outputs and _bare_sort_or_group_item(node):
            return None
        scope = env
        while scope is not None:
            if column in scope.sources:  # a whole-row reference: every column
                if record:
                    self._read_all(scope.sources[column])
                return None
            scope = scope.parent
        refuse(Reason.COLUMN_UNKNOWN, f"column {column} is not in any table of the statement")

    def _source_named(self, name: str, env: Env) -> Source:
        source = env.sources.get(name)
        if source is None:
            refuse(Reason.SQL_UNANALYZABLE, f"no table named {name} in FROM")
        return source

    def _read_all(self, source: Source) -> None:
        if source.spec is not None:
            self.reads.update((source.spec.qualified, c) for c in source.spec.columns)

    # ------------------------------------------------------------------ UPDATE

    def update(self, node: exp.Update) -> None:
        self._only_args(node, _UPDATE_ARGS_OK)
        target = node.this
        if not isinstance(target, exp.Table):
            refuse(Reason.SQL_UNANALYZABLE, "UPDATE of something other than a table")
        env = Env(None)
        source = self._table(target, {})
        env.sources[source.alias] = source
        assert source.spec is not None  # noqa: S101 - _table with no CTEs is physical
        self._bind([node.args["where"].this] if node.args.get("where") else [], env)
        for assignment in node.expressions:
            if not isinstance(assignment, exp.EQ) or not isinstance(assignment.this, exp.Column):
                refuse(Reason.SQL_UNANALYZABLE, "an UPDATE assignment the analyser cannot read")
            column = ident(assignment.this.this)
            qual = assignment.this.args.get("table")
            if (qual is not None and ident(qual) != source.alias) or not source.has(column):
                refuse(Reason.COLUMN_UNKNOWN, f"{source.alias} has no column {column}")
            self.writes.add((source.spec.qualified, column))
            self.expr(assignment.expression, env, {})
        if node.args.get("where") is not None:
            self.expr(node.args["where"].this, env, {})
        returning = node.args.get("returning")
        if returning is not None:
            self._only_args(returning, {"expressions", "into"})
            if returning.args.get("into"):
                refuse(Reason.SQL_UNANALYZABLE, "RETURNING INTO is not analyzed")
            for proj in returning.expressions:
                target_expr = proj.this if isinstance(proj, exp.Alias) else proj
                if isinstance(target_expr, exp.Star):
                    self._read_all(source)
                else:
                    self.expr(target_expr, env, {})

    # ------------------------------------------------------------------ helpers

    def _only_args(self, node: exp.Expression, allowed: frozenset[str] | set[str]) -> None:
        for key, value in node.args.items():
            if key not in allowed and value not in (None, False, [], ""):
                refuse(
                    Reason.SQL_UNANALYZABLE,
                    f"{key.rstrip('_').upper()} in {type(node).__name__.upper()} is not analyzed",
                )

    def _count(self) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            refuse(Reason.SQL_UNANALYZABLE, "the statement is too large to analyze")


#: Unquoted, these words are SQL functions of the session, not columns.
_SPECIAL_NAMES = frozenset(
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


#: sqlglot's own type names whose PostgreSQL spelling is not a reg* type: a DataType
#: of one of these and nothing else is generated as that name (checked at import)
_PLAIN_TYPES = frozenset(
    t
    for t in exp.DataType.Type
    if t is not exp.DataType.Type.USERDEFINED
    and not exp.DataType(this=t).sql(dialect="postgres").lower().startswith(("reg", '"reg'))
)


def _reads_catalog(node: exp.DataType) -> bool:
    """Whether a type is a reg* type (a cast to one looks names up in the system catalogs).

    A type sqlglot knows, with no other argument, is decided by its name
    alone; anything else (a name sqlglot keeps as text, a qualified or
    parameterised type) by the SQL PostgreSQL would read.
    """
    if node.this in _PLAIN_TYPES and not any(
        value for key, value in node.args.items() if key != "this"
    ):
        return False
    return node.sql(dialect="postgres").lower().startswith(("reg", '"reg'))


class _Branch(enum.Enum):
    """What ``Walker.expr`` does with a node, by its class."""

    COLUMN = "column"
    QUERY = "query"
    EXISTS = "exists"
    PARAM = "param"
    STAR = "star"
    TYPE = "type"  # a scalar node, after the reg* check
    VAR = "var"
    FUNCTION = "function"  # a function call, after the allowlist check
    SCALAR = "scalar"
    REFUSED = "refused"


def _branch(cls: type[exp.Expression]) -> _Branch:
    """The branch of a node class: the first of the walker's tests it passes, in order.

    ``issubclass`` of the class answers as ``isinstance`` of any instance, so
    remembering the answer per class (``_BRANCHES``) changes no decision.
    """
    if issubclass(cls, exp.Column):
        return _Branch.COLUMN
    if issubclass(cls, exp.Subquery | exp.Select | exp.SetOperation):
        return _Branch.QUERY
    if issubclass(cls, exp.Exists):
        return _Branch.EXISTS
    if issubclass(cls, exp.Parameter | exp.Placeholder):
        return _Branch.PARAM
    if issubclass(cls, exp.Star):
        return _Branch.STAR
    if issubclass(cls, exp.DataType):
        return _Branch.TYPE if issubclass(cls, SCALAR_NODES) else _Branch.REFUSED
    if issubclass(cls, exp.Var):
        return _Branch.VAR
    if issubclass(cls, exp.Func) and not issubclass(cls, SCALAR_NODES):
        return _Branch.FUNCTION
    if not issubclass(cls, SCALAR_NODES):
        return _Branch.REFUSED
    return _Branch.SCALAR


#: node class -> its branch, learnt on first sight (dict writes are atomic: no lock)
_BRANCHES: dict[type[exp.Expression], _Branch] = {}


def _key_binding(source: Source, env: Env) -> KeyBinding | None:
    """How ``source`` is bound by a declared key when its scope column is not (keys.py)."""
    assert source.spec is not None  # noqa: S101 - called for physical sources only
    return key_binding(source.spec, lambda column: env.bound.get((id(source), column), ()))


def _bare_sort_item(node: exp.Column) -> bool:
    parent = node.parent
    return isinstance(parent, exp.Ordered) and isinstance(parent.parent, exp.Order)


def _bare_sort_or_group_item(node: exp.Column) -> bool:
    parent = node.parent
    if isinstance(parent, exp.Ordered):
        return isinstance(parent.parent, exp.Order)
    return isinstance(parent, exp.Group)


def _output_name(proj: exp.Expression) -> str:
    """The name PostgreSQL gives a select-list item that has no alias."""
    target = proj
    while isinstance(target, exp.Cast | exp.TryCast):
        target = target.this
    if isinstance(target, exp.Column) and isinstance(target.this, exp.Identifier):
        return ident(target.this)
    return "?column?"


def _conjuncts(conditions: list[exp.Expression]) -> list[exp.Expression]:
    out: list[exp.Expression] = []
    stack = list(conditions)
    while stack:
        node = stack.pop()
        while isinstance(node, exp.Paren):
            node = node.this
        if isinstance(node, exp.And):
            stack.extend((node.this, node.expression))
        else:
            out.append(node)
    return out


def _constant(node: exp.Expression) -> Value | None:
    """An integer literal or a bound parameter (possibly cast to an integer type)."""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Cast) and node.to.is_type(*exp.DataType.INTEGER_TYPES):
        node = node.this
        while isinstance(node, exp.Paren):
            node = node.this
    if isinstance(node, exp.Literal) and not node.is_string:
        text = node.this
        if text.isdigit():
            return Const(int(text))
        return None
    if isinstance(node, exp.Parameter | exp.Placeholder):
        return Param(param_key(node))
    return None


def param_key(node: exp.Parameter | exp.Placeholder) -> int | str:
    if isinstance(node, exp.Parameter):
        inner = node.this
        if isinstance(inner, exp.Literal) and not inner.is_string and inner.this.isdigit():
            number = int(inner.this)
            if number >= LITERAL_BASE:  # a literal lifted out by shape_of
                return f"#{number - LITERAL_BASE}"
            return number - 1
        refuse(Reason.SQL_UNANALYZABLE, "a parameter the analyser cannot read")
    name = node.this
    if isinstance(name, exp.Identifier):
        name = name.this
    if not name:
        refuse(Reason.SQL_UNANALYZABLE, "an unnumbered placeholder")
    text = str(name)
    if text.startswith("_agq") and text[4:].isdigit():
        return int(text[4:])
    if text.startswith("_agl") and text[4:].isdigit():
        return f"#{text[4:]}"
    return text
