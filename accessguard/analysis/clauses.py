"""The walker's query clauses: FROM and joins, ORDER BY / GROUP BY names, row scope.

Which names a clause sees follows PostgreSQL (parse_clause.c): an ON clause
sees only the inputs of its own join, then the enclosing query levels; a
LATERAL item sees the FROM items before it; a subquery in FROM sees only the
enclosing levels. A bare name in ORDER BY or DISTINCT ON is an output column
first, then an input column; a bare name in GROUP BY is a local input column
first, then an output column, then an outer column; every other expression
(window and aggregate internals included) reads input columns only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from sqlglot import exp

from accessguard.analysis.facts import ScopeRef
from accessguard.analysis.fromlist import JoinTrees
from accessguard.analysis.names import (
    Carried,
    Env,
    Source,
    Weight,
    ident,
    opens,
    public_level,
    refuse,
    weight_max,
    weight_sum,
)
from accessguard.analysis.nodes import display_name, output_name
from accessguard.analysis.ordering import OutputNames
from accessguard.analysis.rowscope import Condition, bind, carries
from accessguard.errors import Reason
from accessguard.policy.catalog import Catalog, TableSpec

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
        "locks",
    }
)
#: queries whose output columns carry bindings (a set operation's carry none)
#: (isinstance with a tuple: a union type is built anew on every call)
_CARRYING = (exp.Select, exp.Subquery)
_TABLE_ARGS_OK = frozenset({"this", "alias", "db"})
_SUBQUERY_ARGS_OK = frozenset({"this", "alias", "order", "limit", "offset"})
_GROUP_TABLE_ARGS_OK = _TABLE_ARGS_OK | {"joins"}
_SETOP_ARGS_OK = frozenset({"with_", "this", "expression", "distinct", "order", "limit", "offset"})


@dataclass(eq=False, kw_only=True)
class Clauses(OutputNames, JoinTrees):
    """The walker's state, and its methods for queries and their clauses."""

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
    #: packing aggregates (array_agg, string_agg, ...) of the query level being walked
    packing: list[str] = field(default_factory=list)
    #: packing aggregates over rows of a scoped table, in the whole statement
    packed: list[str] = field(default_factory=list)
    #: references to scoped tables seen so far (physical, or a CTE that reads one)
    scoped_count: int = 0
    #: while walking a select list (or VALUES row): the weight its scalar subqueries
    #: carry, and how many of its aggregate calls carry a row's value
    projecting: bool = False
    carry: Weight = field(default_factory=dict)
    carriers: int = 0
    #: the aggregate and window calls of the level's select list that carry a row's value
    #: (the same call in HAVING or ORDER BY is not counted again)
    calls: list[exp.Expr] = field(default_factory=list)
    #: the level makes a window call (``Walker.expr``)
    windowing: bool = False
    #: the expression being walked reads a spread column or a scoped table, or makes an
    #: aggregate or window call over scoped rows (``Walker._spread_read``); what one
    #: output column's expression sets marks that column spread (``Source.spread``)
    spreading: bool = False
    #: how many aggregate or window calls enclose the expression being walked: a spread
    #: column read inside one chooses or orders rows, wherever the call is
    calling: int = 0
    #: the statement's weight (``Facts.row_weight``), and how deep in queries the walk is
    weight: Weight = field(default_factory=dict)
    depth: int = 0
    #: the statement is an UPDATE (its subqueries are not the statement's SELECT)
    updating: bool = False
    #: tables whose rows a locking clause locks (``Facts.locked``)
    locked: set[str] = field(default_factory=set)
    #: each walked query's output, by id of its node (``rowscope.subqueries_bind``)
    derived: dict[int, Source] = field(default_factory=dict)
    #: the statement's own query (a SELECT statement's; None for an UPDATE)
    statement: exp.Expression | None = None

    @property
    def row_weight(self) -> int:
        """At most how many rows of one scoped table a result row carries."""
        return max(self.weight.values(), default=0)

    def _read_all(self, source: Source) -> None:
        raise NotImplementedError  # the Walker's

    # ------------------------------------------------------------------ queries

    def query(self, node: exp.Expression, parent: Env | None, ctes: dict[str, Source]) -> Source:
        """Analyze a query expression; return its output as a derived source."""
        self._count()
        if self.statement is None and not self.updating:
            self.statement = node  # the first query of a SELECT statement is the statement
        before = self.scoped_count
        with_ = node.args.get("with_")
        if with_ is not None:
            ctes = self._ctes(with_, parent, ctes)
        saved = self.projecting, self.carry, self.carriers, self.calls, self.windowing
        self.projecting, self.carry, self.carriers, self.calls = False, {}, 0, []
        self.windowing = False
        self.depth += 1
        if isinstance(node, exp.Select):
            out = self._select(node, parent, ctes)
        elif isinstance(node, exp.SetOperation):
            self._only_args(node, _SETOP_ARGS_OK)
            out = self.query(node.this, parent, ctes)
            other = self.query(node.expression, parent, ctes)
            self._set_operation(node, out, other)
            out = replace(
                out,
                public=opens(out) or opens(other),
                # the names are the left branch's: a spread column of either, by position,
                # is not followed (every column then counts as spread)
                spread=out.columns if out.spread or other.spread else frozenset(),
            )
            out.weight = weight_max(out.weight, other.weight)  # a row comes from one branch
            self._spread_order(node, out)
            self._outer_modifiers(node, out.columns, ctes)
            out.weight = weight_sum(out.weight, self.carry)  # a LIMIT (SELECT ..) chooses rows
        elif isinstance(node, exp.Subquery):
            self._only_args(node, _SUBQUERY_ARGS_OK)
            inner = self.query(node.this, parent, ctes)
            self._spread_order(node, inner)
            self._outer_modifiers(node, inner.columns, ctes)
            out = replace(inner, weight=weight_sum(inner.weight, self.carry))
        elif isinstance(node, exp.Values):
            out = self._values(node, parent, ctes)
        else:
            kind = type(node).__name__.upper()
            refuse(Reason.STATEMENT_FORBIDDEN, f"a {kind} inside a query is not allowed")
        self.projecting, self.carry, self.carriers, self.calls, self.windowing = saved
        self.depth -= 1
        if not self.depth:
            self.weight = out.weight  # the statement itself
        if self.projecting:  # a scalar subquery of a select list: one row of it per row
            self.carry = weight_sum(self.carry, out.weight)
        scoped = self.scoped_count > before
        carried = out.carried if isinstance(node, _CARRYING) else {}
        result = Source(
            out.alias,
            columns=out.columns,
            scoped=scoped,
            weight=out.weight,
            carried=carried,
            public=out.public,
            spread=out.spread,
        )
        self.derived[id(node)] = result
        return result

    def _set_operation(self, node: exp.SetOperation, left: Source, right: Source) -> None:
        """Refuse a set operation whose rows one branch chooses among rows of no scoped table.

        Every row of EXCEPT's right branch removes rows of its left, every row
        of INTERSECT's keeps them: a quantifier over all the rows of a branch,
        as NOT EXISTS is (``Walker._chooses``). ``orders o, products p1,
        products p2 .. EXCEPT SELECT 421, q1.id, q2.id FROM products q1,
        products q2, orders x WHERE ..`` left one row whose products spelled
        two orders' totals at weight 1. Refused when a branch reads rows of no
        scoped table together with a scoped table, and for EXCEPT when scoped
        rows are taken from rows of no scoped table. A guess against scoped
        rows (``SELECT email .. INTERSECT SELECT 'a guess'``) keeps or drops
        rows of the scoped branch only, and stays allowed. A UNION that
        removes duplicates collapses rows by the value of a spread column as
        DISTINCT does (``_select``).
        """
        mixed = (opens(left) and left.scoped) or (opens(right) and right.scoped)
        taken = isinstance(node, exp.Except) and opens(left) and right.scoped
        if isinstance(node, exp.Except | exp.Intersect) and (mixed or taken):
            refuse(
                Reason.SQL_UNANALYZABLE,
                "EXCEPT or INTERSECT of rows of a scoped table and rows with no row scope "
                "is not analyzed",
            )
        if (
            node.args.get("distinct") is not False
            and (left.spread or right.spread)
            and (opens(left) or opens(right))
        ):
            refuse(
                Reason.SQL_UNANALYZABLE,
                "a set operation that removes duplicate rows by a value computed over several "
                "rows of a scoped table is not analyzed",
            )

    def _spread_order(self, node: exp.Expression, out: Source) -> None:
        """ORDER BY of a set operation or a parenthesized query whose rows include rows of no
        scoped table, and a column computed over several scoped rows: refused (with a LIMIT
        it picks the public row that the column chooses)."""
        if node.args.get("order") is not None and out.spread and opens(out):
            refuse(
                Reason.SQL_UNANALYZABLE,
                "ORDER BY over rows with no row scope and a value computed over several rows "
                "of a scoped table is not analyzed",
            )

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
            columns = self._renamed(out.columns, cte.args["alias"])
            scope[name] = Source(
                name,
                columns=columns,
                scoped=out.scoped,
                weight=out.weight,
                carried=_carried(out, cte.args["alias"]),
                public=out.public,
                spread=_spread(out, cte.args["alias"], columns),
            )
        return scope

    @staticmethod
    def _renamed(columns: frozenset[str], alias: exp.TableAlias | None) -> frozenset[str]:
        if alias is not None and alias.columns:
            return frozenset(ident(c) for c in alias.columns)
        return columns

    def _values(self, node: exp.Values, parent: Env | None, ctes: dict[str, Source]) -> Source:
        self._only_args(node, {"expressions", "alias"})
        env = Env(parent)
        width, weight = 0, Weight()
        saved, self.spreading = self.spreading, False
        for row in node.expressions:
            items = row.expressions if isinstance(row, exp.Tuple) else [row]
            width = len(items)
            self.projecting, self.carry = True, {}
            for item in items:
                self.expr(item, env, ctes)
            weight = weight_max(weight, self.carry)
        self.projecting = False
        spreading, self.spreading = self.spreading, saved or self.spreading
        alias = node.args.get("alias")
        names = frozenset(f"column{i}" for i in range(1, width + 1))
        columns = self._renamed(names, alias)
        return Source(
            ident(alias.this) if alias else "*values*",
            columns=columns,
            weight=weight,
            public=True,  # its rows are no scoped table's
            spread=columns if spreading else frozenset(),  # by position: not followed
        )

    def _select(self, node: exp.Select, parent: Env | None, ctes: dict[str, Source]) -> Source:
        self._only_args(node, _SELECT_ARGS_OK)
        outer_packing, before = self.packing, self.scoped_count
        self.packing = []
        env = Env(parent)
        ons = self._from(node, env, ctes)
        where = node.args.get("where")
        binding = list(ons)
        if where is not None:
            binding.append((where.this, env, None))
        at = len(self.scopes)
        self.scopes.extend(bind(binding, env))
        self.projecting = env.listing = True
        env.outputs = self._projections(node, env, ctes)
        self.projecting = env.listing = False
        self._spread_distinct(node, env)
        for on, view, _nullable in ons:
            self.expr(on, view, ctes)
        if where is not None:
            self.expr(where.this, env, ctes)
        self.rebind(binding, env, at)
        if node.args.get("group") is not None:
            self._group(node.args["group"], env, ctes)
        if node.args.get("having") is not None:
            self.expr(node.args["having"], env, ctes)
        distinct = node.args.get("distinct")
        if distinct is not None and distinct.args.get("on") is not None:
            on = distinct.args["on"]
            self._sort_items(on.expressions if isinstance(on, exp.Tuple) else [on], env, ctes)
        if node.args.get("order") is not None:
            self._only_args(node.args["order"], {"expressions"})
            self._sort_items(node.args["order"].expressions, env, ctes)
        self._limits(node, ctes)
        if node.args.get("locks"):
            self._locks(node.args["locks"], env)
        grouped = node.args.get("group") is not None or node.args.get("having") is not None
        if (grouped or self.windowing) and _mixed(env):
            # GROUP BY p1.id, p2.id, p3.id HAVING count(*) = 3 over products and orders: each
            # group's aggregate ranges over every order, and the one group left spells three
            refuse(
                Reason.SQL_UNANALYZABLE,
                "groups or windows over rows of a scoped table joined with a table with no "
                "row scope are not analyzed",
            )
        if self.scoped_count > before:
            self.packed.extend(self.packing)  # over rows of a scoped table: the decision refuses
        self.packing = outer_packing
        # one result row: a row of each FROM item, one more per aggregate or window
        # call that returns a row's value, and what its scalar subqueries carry
        weight: Weight = {}
        for source in env.sources.values():
            if source.weight:  # an unscoped table's is empty: nothing to add
                weight = weight_sum(weight, source.weight)
        if self.carriers:
            weight = {t: n * (1 + self.carriers) for t, n in weight.items()}
        if self.carry:
            weight = weight_sum(weight, self.carry)
        # the statement's own SELECT is read by no level: what its columns carry is never asked
        carried = {} if node is self.statement else carries(node, env)
        return Source(
            "*select*",
            columns=env.outputs,
            weight=weight,
            carried=carried,
            public=not env.sources or public_level(env),  # no FROM: a row of no table
            spread=frozenset(env.spread),
        )

    @staticmethod
    def _spread_distinct(node: exp.Select, env: Env) -> None:
        """DISTINCT over rows of no scoped table and a value computed over several scoped rows.

        ``SELECT DISTINCT CASE WHEN n = 0 THEN a END FROM t``, where ``n`` counts
        the orders that disagree with a row of joined products, collapses every
        row but the one the count chooses: refused, as a filter on ``n`` is
        (``Walker._spread_read``). Without DISTINCT every row is returned and
        counted.
        """
        distinct = node.args.get("distinct")
        if distinct is not None and env.spread and public_level(env):
            refuse(
                Reason.SQL_UNANALYZABLE,
                "DISTINCT over rows with no row scope and a value computed over several rows "
                "of a scoped table is not analyzed",
            )

    def _projections(self, node: exp.Select, env: Env, ctes: dict[str, Source]) -> frozenset[str]:
        names: set[str] = set()
        for proj in node.expressions:
            target = proj.this if isinstance(proj, exp.Alias) else proj
            if isinstance(target, exp.Star):
                for source in env.sources.values():
                    self._read_all(source)
                    names |= source.columns
                    env.spread |= source.spread
                continue
            if isinstance(target, exp.Column) and isinstance(target.this, exp.Star):
                named = env.sources.get(ident(target.args["table"]))
                if named is None or any(target.args.get(k) for k in ("db", "catalog")):
                    refuse(Reason.SQL_UNANALYZABLE, "a .* the analyser cannot place in FROM")
                self._read_all(named)
                names |= named.columns
                env.spread |= named.spread
                continue
            saved, self.spreading = self.spreading, False
            self.expr(target, env, ctes)
            name = ident(proj.args["alias"]) if isinstance(proj, exp.Alias) else output_name(proj)
            names.add(name)
            if self.spreading:
                env.spread.add(name)
            self.spreading = saved or self.spreading
        return frozenset(names)

    # ------------------------------------------------------------------ FROM

    def _add_source(
        self, item: exp.Expression, env: Env, ctes: dict[str, Source], *, grouped: bool = False
    ) -> Source:
        """Add one FROM item to ``env`` (``grouped``: the first table of a join group)."""
        self._count()
        alias_node = item.args.get("alias")
        if isinstance(item, exp.Table):
            source = self._table(item, ctes, grouped=grouped)
        elif isinstance(item, exp.Subquery):
            out = self.query(item, env.parent, ctes)
            if alias_node is None:
                refuse(Reason.SQL_UNANALYZABLE, "a subquery in FROM needs an alias")
            columns = self._renamed(out.columns, alias_node)
            name = ident(alias_node.this)
            source = Source(
                name,
                columns=columns,
                scoped=out.scoped,
                weight=out.weight,
                carried=_carried(out, alias_node),
                public=out.public,
                spread=_spread(out, alias_node, columns),
            )
        elif isinstance(item, exp.Lateral) and isinstance(item.this, exp.Subquery):
            self._only_args(item, {"this", "alias", "view", "outer"})
            if item.args.get("view") or item.args.get("outer"):
                refuse(Reason.SQL_UNANALYZABLE, "LATERAL VIEW is not analyzed")
            out = self.query(item.this, env, ctes)  # sees the FROM items before it
            if alias_node is None:
                refuse(Reason.SQL_UNANALYZABLE, "a LATERAL subquery needs an alias")
            if out.scoped and any(opens(s) for s in env.sources.values()):
                # products p1, products p2, LATERAL (SELECT 1 FROM orders o WHERE NOT EXISTS
                # (.. p1.id .. p2.id ..)): whether it has a row chooses the products' rows
                refuse(
                    Reason.SQL_UNANALYZABLE,
                    "a LATERAL subquery over a scoped table after a table with no row scope "
                    "is not analyzed",
                )
            columns = self._renamed(out.columns, alias_node)
            name = ident(alias_node.this)
            source = Source(
                name,
                columns=columns,
                scoped=out.scoped,
                weight=out.weight,
                public=out.public,
                spread=_spread(out, alias_node, columns),
            )
        elif isinstance(item, exp.Values):
            source = self.query(item, env.parent, ctes)
        else:
            refuse(Reason.SQL_UNANALYZABLE, "a FROM item the analyser cannot read")
        if source.alias in env.sources:
            refuse(Reason.SQL_UNANALYZABLE, f"the name {source.alias} is used twice in one FROM")
        env.sources[source.alias] = source
        return source

    def _table(self, item: exp.Table, ctes: dict[str, Source], *, grouped: bool = False) -> Source:
        if not isinstance(item.this, exp.Identifier):
            if isinstance(item.this, exp.Func):
                refuse(
                    Reason.FUNCTION_FORBIDDEN,
                    f"the set-returning function {display_name(item.this)} is not allowed",
                )
            refuse(Reason.SQL_UNANALYZABLE, "a table expression the analyser cannot read")
        self._only_args(item, _GROUP_TABLE_ARGS_OK if grouped else _TABLE_ARGS_OK)
        alias_node = item.args.get("alias")
        if alias_node is not None and alias_node.columns:
            refuse(Reason.SQL_UNANALYZABLE, "column aliases on a table are not analyzed")
        name = ident(item.this)
        schema = ident(item.args["db"]) if item.args.get("db") else None
        alias = ident(alias_node.this) if alias_node is not None else name
        if schema is None and name in ctes:
            cte = ctes[name]
            self.scoped_count += cte.scoped
            return Source(
                alias,
                columns=cte.columns,
                scoped=cte.scoped,
                weight=cte.weight,
                carried=cte.carried,
                public=cte.public,
                spread=cte.spread,
            )
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
        qualified = spec.qualified
        self.tables.add(qualified)
        self.physical.append((item, spec))
        scoped = spec.scope is not None
        self.scoped_count += scoped
        return Source(
            alias,
            spec=spec,
            columns=spec.column_set,
            node=item,
            scoped=scoped,
            weight={qualified: 1} if scoped else {},
            public=not scoped,
        )

    def _locks(self, locks: list[exp.Expression], env: Env) -> None:
        """FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE [OF ...] of the statement's SELECT.

        A locking clause locks the rows of every table read in its FROM list
        (or of the FROM items OF names), subqueries included: PostgreSQL pushes
        it into them, so in the SQL sent it locks only rows that passed the
        second wall's filter. Allowed only on the outermost SELECT, and only
        when every table it locks is scoped: a locking read of the public
        catalogue (products) would block other people's writes to rows no
        ticket is about. OF may name tables of the FROM list only. Like
        PostgreSQL's privilege rule, the decision then asks for a grant to
        update some column of each locked table (``Facts.locked``). Called
        after the level is walked (every table of the statement is known).
        """
        if self.depth != 1 or self.updating:
            refuse(Reason.SQL_UNANALYZABLE, "a locking clause inside a query is not analyzed")
        specs: list[TableSpec] = []
        for lock in locks:
            if not isinstance(lock, exp.Lock) or lock.args.get("wait") not in (None, True, False):
                refuse(Reason.SQL_UNANALYZABLE, "a locking clause the analyser cannot read")
            if not lock.expressions:
                specs += [spec for _node, spec in self.physical]
            for item in lock.expressions:
                named = item.this if isinstance(item, exp.Table) else None
                if not isinstance(named, exp.Identifier) or any(
                    value for key, value in item.args.items() if key != "this"
                ):
                    refuse(Reason.SQL_UNANALYZABLE, "a FOR UPDATE OF item the analyser cannot read")
                source = env.sources.get(ident(named))
                if source is None or source.spec is None:
                    refuse(
                        Reason.SQL_UNANALYZABLE,
                        "FOR UPDATE OF is analyzed for tables of the FROM list only",
                    )
                specs.append(source.spec)
        for spec in specs:
            if spec.scope is None:
                refuse(
                    Reason.STATEMENT_FORBIDDEN,
                    f"a locking read (FOR UPDATE / FOR SHARE) of {spec.name} would lock rows "
                    "that no ticket is about",
                )
            self.locked.add(spec.qualified)  # the decision asks for an update grant on it

    # ------------------------------------------------------------------ helpers

    def rebind(self, conditions: list[Condition], env: Env, at: int) -> None:
        """Bind the level again once its subqueries are walked, if a conjunct compares with one.

        ``at``: where the level's references start in ``scopes`` (replaced in place,
        one per scoped table, in the same order).
        """
        if env.subqueries:  # found by bind(conditions, env), which always runs first
            refs = bind(conditions, env, self.derived)
            self.scopes[at : at + len(refs)] = refs

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


def _mixed(env: Env) -> bool:
    """Whether the level joins rows of a scoped table with rows of a table with no row scope
    (a derived table over both is both: its groups range over scoped rows as a join's do)."""
    sources = env.sources.values()
    return any(s.weight for s in sources) and any(opens(s) for s in sources)


def _spread(out: Source, alias: exp.TableAlias | None, columns: frozenset[str]) -> frozenset[str]:
    """The spread columns of a derived table, named ``columns`` by ``alias``: under an alias
    that renames them, positions are not followed, and every column counts as spread if one
    is."""
    if not out.spread:
        return frozenset()
    return columns if alias is not None and alias.columns else out.spread


def _carried(out: Source, alias: exp.TableAlias | None) -> dict[str, Carried]:
    """What a derived table's columns carry: nothing under an alias that renames them."""
    return {} if alias is not None and alias.columns else out.carried
