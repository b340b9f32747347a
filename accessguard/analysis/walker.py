"""Turn one parsed statement into facts: tables, columns, functions, row scope.

The walker accepts only node types it knows (an allowlist); anything else is
refused as ``sql.unanalyzable``, so a construct sqlglot learns tomorrow is
denied until someone teaches the walker what it reads. Names resolve as
PostgreSQL resolves them (``names``); the FROM clause, ORDER BY / GROUP BY
and row-scope bindings are in ``clauses``.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from sqlglot import exp

from accessguard.analysis.clauses import MAX_NODES, Clauses
from accessguard.analysis.functions import (
    ALLOWED_FUNCS,
    PACKING,
    PACKING_ANONYMOUS,
    UNIT_FUNCS,
    builtin,
)
from accessguard.analysis.names import (
    Env,
    Refusal,
    Source,
    ident,
    public_level,
    refuse,
    resolve,
    weight_sum,
)
from accessguard.analysis.nodes import (
    BRANCHES,
    Branch,
    branch_of,
    check_type,
    display_name,
    identity,
    param_key,
)
from accessguard.analysis.rowscope import Condition, bind
from accessguard.analysis.selectors import COUNTING, counted_by
from accessguard.errors import Reason

__all__ = ["MAX_NODES", "Refusal", "Walker", "ident", "param_key"]

_UPDATE_ARGS_OK = frozenset({"this", "expressions", "where", "returning"})

#: the branches, as globals (an Enum member is looked up on its class on every use)
_SCALAR, _COLUMN, _QUERY = Branch.SCALAR, Branch.COLUMN, Branch.QUERY
_EXISTS, _PARAM, _STAR = Branch.EXISTS, Branch.PARAM, Branch.STAR
_TYPE, _VAR, _FUNCTION = Branch.TYPE, Branch.VAR, Branch.FUNCTION


@dataclass(eq=False, kw_only=True)
class Walker(Clauses):
    """Walks one statement; what it found is in the fields of ``Clauses``."""

    #: the statement's text as parsed (to name a refused function as it is written)
    text: str = ""

    # ------------------------------------------------------------------ expressions

    def expr(self, node: exp.Expression, env: Env, ctes: dict[str, Source]) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            refuse(Reason.SQL_UNANALYZABLE, "the statement is too large to analyze")
        cls = type(node)
        branch = BRANCHES.get(cls)
        if branch is None:
            branch = BRANCHES[cls] = branch_of(cls)
        if branch is _SCALAR:
            if cls is exp.Window:
                self.windowing = True  # its partitions may mix scoped and public rows
            if cls is exp.Interval and type(node.this) not in _INTERVAL_VALUES:
                # sqlglot writes INTERVAL 'a' 'b' (a Concat) as a bare INTERVAL, and
                # INTERVAL (2) '1 day' as a sum: not what PostgreSQL reads
                refuse(Reason.SQL_UNANALYZABLE, "an interval that is not one string")
        elif branch is _COLUMN:
            self._column(node, env)  # type: ignore[arg-type] # a Column by its branch
            return
        elif branch is _QUERY:
            self._chooses(self.query(node, env, ctes), env)
            return
        elif branch is _EXISTS:
            self._chooses(self.query(node.this, env, ctes), env)
            return
        elif branch is _PARAM:
            self.params.add(param_key(node))  # type: ignore[arg-type] # by its branch
            return
        elif branch is _STAR:
            if isinstance(node.parent, exp.Count):
                return
            refuse(Reason.SQL_UNANALYZABLE, "* outside the select list")
        elif branch is _TYPE:
            check_type(node)  # type: ignore[arg-type] # a DataType by its branch
        elif branch is _VAR:
            if isinstance(node.parent, UNIT_FUNCS) and node.arg_key in ("unit", "this"):
                return
            refuse(Reason.SQL_UNANALYZABLE, f"the word {node.name.upper()} is not analyzed")
        elif branch is _FUNCTION:
            self._function(node)  # type: ignore[arg-type] # a Func by its branch
            if isinstance(node, exp.AggFunc) and not isinstance(node, _ONE_ROW_AGGREGATES):
                self._combining(node, env)
            elif isinstance(node, COUNTING) and self._selective(node, env):
                self._carrier(node)  # count(*) FILTER (WHERE ..): a bit of chosen rows
        else:
            refuse(Reason.SQL_UNANALYZABLE, f"{_called(display_name(node))} is not analyzed")
        call = cls in _CALLS or isinstance(node, exp.AggFunc)
        if call:
            # an aggregate or window call: its value ranges over rows (of scoped tables, where
            # any level it may belong to reads one), and what it reads chooses among them
            self.spreading = self.spreading or _over_scoped(env)
            self.calling += 1
        for child in node.iter_expressions():
            self.expr(child, env, ctes)
        if call:
            self.calling -= 1

    def _function(self, node: exp.Func) -> None:
        """Allow a function by its catalog identity (``functions.BUILTINS``) or vetted class."""
        if isinstance(node, exp.Anonymous):
            name = display_name(node)  # as written: the SQL sent calls it by that name
            if not builtin(name, len(node.expressions)):
                refuse(Reason.FUNCTION_FORBIDDEN, f"function {name} is not allowed")
            if name in PACKING_ANONYMOUS:  # pragma: no cover - none is a builtin
                self.packing.append(name)
        elif type(node) in ALLOWED_FUNCS:
            name = _CLASS_NAMES.get(type(node)) or _class_name(node)
            if type(node) in PACKING and (
                not isinstance(node, exp.Array) or any(_is_query(e) for e in node.expressions)
            ):
                self.packing.append(name)  # ARRAY[a, b] packs one row's values: not counted
            if isinstance(node, exp.AggFunc) and type(node) not in _COUNTS:
                self._carrier(node)  # max(x), sum(CASE ..): a value of one row of the group
        else:
            found = None if isinstance(node, exp.AggFunc) else identity(node)
            if found is None or not builtin(*found):
                name = _written(node, self.text) or display_name(node)
                refuse(Reason.FUNCTION_FORBIDDEN, f"{_called(name)} is not allowed")
            name = found[0]
        self.functions.add(name)

    def _chooses(self, out: Source, env: Env) -> None:
        """Weigh a subquery of an expression outside the select list (WHERE, ON, HAVING,
        GROUP BY, ORDER BY, LIMIT): what it reads chooses or orders the level's rows.

        ``p.id = (SELECT <a value of an order>)`` makes a row of the public
        catalogue spell that value: twelve such conditions over joined products
        handed over three orders' totals in one row of weight 0, past a row cap
        of two, and the ledger counted one row. A subquery of the select list is
        weighed by ``query`` itself.

        Over a level with a FROM item none of whose rows is a scoped row (a
        public table, VALUES), such a subquery is refused: NOT EXISTS, NOT IN,
        ALL or a count quantify over every row they read, so the one candidate
        row of joined products they leave spells as many orders as the
        condition names, and no weight bounds that.
        """
        if out.scoped:
            self.spreading = True  # its value ranges over scoped rows (``Walker._spread_read``)
        if self.projecting and (not self.calling or (self.packing and not self.updating)):
            # a packing aggregate of this level over a scoped subquery is refused as such
            # (``Facts.packing``: the level then reads a scoped table)
            return
        if out.scoped and public_level(env):
            # in the select list, inside an aggregate or window call: max(CASE WHEN (SELECT
            # count(*) ..) = 0 THEN p1.id .. END) picks the one row of joined products
            refuse(
                Reason.SQL_UNANALYZABLE,
                "a subquery over a scoped table that chooses rows of a table with no row "
                "scope is not analyzed",
            )
        if out.weight and not self.projecting:  # the select list's: ``query`` weighs it
            self.carry = weight_sum(self.carry, out.weight)

    def _spread_read(self, level: Env) -> None:
        """A column computed over several scoped rows (``Source.spread``) is read at ``level``.

        Over a level with a FROM item whose rows are no scoped table's (``public_level``),
        reading it anywhere but in the select list (outside aggregate and window calls)
        chooses or orders those rows by a value that ranges over every scoped row it read:
        ``SELECT a, b, c FROM (SELECT p1.id AS a, .., (SELECT count(*) FROM orders o WHERE
        .. o.total_cents % 20 <> p1.id - 1 ..) AS n FROM products p1, ..) t WHERE n = 0``
        left one row that spelled three orders' totals at weight 1. Refused, as the same
        subquery in the WHERE clause is (``_chooses``). In the select list the value is
        handed over with each row, and the row weight counts it.
        """
        self.spreading = True
        if (self.calling or not level.listing) and public_level(level):
            refuse(
                Reason.SQL_UNANALYZABLE,
                "a value computed over several rows of a scoped table that chooses or orders "
                "rows with no row scope is not analyzed",
            )

    def _carrier(self, node: exp.Func) -> None:
        """Count an aggregate or window call that carries a value (or a bit) of chosen rows.

        Wherever it is: in the select list it is handed over; in HAVING or ORDER
        BY it chooses or orders the level's rows (``HAVING max(CASE WHEN id = ..
        THEN total_cents END) % 20 = p.id`` picks the group whose keys spell an
        order's total). A call of HAVING or ORDER BY that the select list already
        makes (``ORDER BY max(created_at)``) carries nothing more, and is not
        counted twice.
        """
        call: exp.Expr = node
        while isinstance(call.parent, _CALL_WRAPPERS):
            call = call.parent  # the whole call: its FILTER, WITHIN GROUP and window
        if self.projecting:
            self.calls.append(call)
        elif any(call == seen for seen in self.calls):
            return
        self.carriers += 1

    def _combining(self, node: exp.AggFunc, env: Env) -> None:
        """An aggregate that combines its rows' values (sum, avg, bit_or, ...): only of a bare
        column of a table. Over an expression it can pack every row of the group into one
        value (sum(total_cents * 1e6 ^ n)), past the row cap and the ledger: a packing
        aggregate, refused over a scoped table as array_agg is.
        """
        arg = node.this
        if arg is None:  # no argument: nothing of a row's to combine
            return
        if isinstance(arg, exp.Distinct) and len(arg.expressions) == 1:
            arg = arg.expressions[0]
        if self._bare(arg, env):
            return  # sum(orders.total_cents): the values of a table's column
        self.packing.append(f"{display_name(node)} of an expression")

    def _selective(self, node: exp.Func, env: Env) -> bool:
        """Whether a count or a rank (``selectors.COUNTING``) counts rows that an expression
        chooses (a FILTER, count(CASE ..), a window over an expression): each such call
        carries a bit of particular rows, and weighs as max(CASE ..) does.
        """
        keys = counted_by(node)
        return keys is None or not all(self._bare(key, env) for key in keys)

    @staticmethod
    def _bare(arg: exp.Expression, env: Env) -> bool:
        """Whether ``arg`` is a column of a table, or of a derived table that passes one on."""
        if isinstance(arg, exp.Column) and not isinstance(arg.this, exp.Star):
            found, whole = resolve(arg, env)
            if whole is None and found is not None:
                source, column, _level = found
                return source.spec is not None or plain_column(arg, source.alias, column)
        return False

    def _column(self, node: exp.Column, env: Env) -> None:
        found, whole = resolve(node, env)
        if whole is not None:
            self._read_all(whole)  # a whole-row reference: every column
            if whole.spread:
                self._spread_read(_level_of(whole, env))
            return
        if found is None:  # pragma: no cover - resolve returns one of the two
            refuse(Reason.SQL_UNANALYZABLE, "a column reference the analyser cannot read")
        source, column, level = found
        if column in source.spread:
            self._spread_read(level)
        if source.spec is not None:
            self.reads.add((source.spec.qualified, column))

    def _read_all(self, source: Source) -> None:
        if source.spec is not None:
            self.reads.update((source.spec.qualified, c) for c in source.spec.columns)

    # ------------------------------------------------------------------ UPDATE

    def update(self, node: exp.Update) -> None:
        self._only_args(node, _UPDATE_ARGS_OK)
        self.updating = True
        target = node.this
        if not isinstance(target, exp.Table):
            refuse(Reason.SQL_UNANALYZABLE, "UPDATE of something other than a table")
        env = Env(None)
        source = self._table(target, {})
        env.sources[source.alias] = source
        assert source.spec is not None  # noqa: S101 - _table with no CTEs is physical
        where = node.args.get("where")
        conditions: list[Condition] = [(where.this, env, None)] if where is not None else []
        at = len(self.scopes)
        self.scopes.extend(bind(conditions, env))
        for assignment in node.expressions:
            if not isinstance(assignment, exp.EQ) or not isinstance(assignment.this, exp.Column):
                refuse(Reason.SQL_UNANALYZABLE, "an UPDATE assignment the analyser cannot read")
            if assignment.this.args.get("db") or assignment.this.args.get("catalog"):
                refuse(Reason.SQL_UNANALYZABLE, "a schema-qualified UPDATE assignment")
            column = ident(assignment.this.this)
            qual = assignment.this.args.get("table")
            if (qual is not None and ident(qual) != source.alias) or not source.has(column):
                refuse(Reason.COLUMN_UNKNOWN, f"{source.alias} has no column {column}")
            self.writes.add((source.spec.qualified, column))
            self.expr(assignment.expression, env, {})
        if where is not None:
            self.expr(where.this, env, {})
        self.rebind(conditions, env, at)
        returning = node.args.get("returning")
        if returning is not None:
            self._only_args(returning, {"expressions", "into"})
            if returning.args.get("into"):
                refuse(Reason.SQL_UNANALYZABLE, "RETURNING INTO is not analyzed")
            self.projecting = True
            for proj in returning.expressions:
                target_expr = proj.this if isinstance(proj, exp.Alias) else proj
                if isinstance(target_expr, exp.Star):
                    self._read_all(source)
                else:
                    self.expr(target_expr, env, {})
            self.projecting = False
            self.weight = weight_sum(source.weight, self.carry)


#: aggregates that return a number of rows, never a row's value
_COUNTS = (exp.Count, exp.CountIf)
#: what wraps an aggregate or window call and is part of it (a FILTER, a WITHIN GROUP,
#: an OVER clause, IGNORE / RESPECT NULLS)
_CALL_WRAPPERS = (exp.Filter, exp.WithinGroup, exp.Window, exp.IgnoreNulls, exp.RespectNulls)
_PLAIN_DEPTH = 8
#: what wraps an aggregate call and is read inside it (a FILTER's condition, a window's
#: PARTITION BY and ORDER BY), besides the aggregate itself (``exp.AggFunc``)
_CALLS = frozenset(_CALL_WRAPPERS)


def _over_scoped(env: Env) -> bool:
    """Whether a call made in ``env`` may range over scoped rows: a FROM item of its level or
    of an enclosing one (an aggregate of outer columns belongs to the outer level) reads a
    scoped table."""
    scope: Env | None = env.level
    while scope is not None:
        if any(s.scoped or s.weight for s in scope.sources.values()):
            return True
        scope = scope.parent
    return False


def _level_of(source: Source, env: Env) -> Env:
    """The query level whose FROM list holds ``source`` (``env``'s own if none is found)."""
    scope: Env | None = env
    while scope is not None:
        if any(s is source for s in scope.sources.values()):
            return scope.level
        scope = scope.parent
    return env.level


_DERIVED = threading.local()
#: what an INTERVAL's value may be: a string, or the parameter a lifted one became
_INTERVAL_VALUES = frozenset({exp.Literal, exp.Parameter, exp.Placeholder})


#: every derived table and WITH item of a statement by name (their bodies), and the
#: names of its WITH items
_Derived = tuple[dict[str, list[exp.Expression]], frozenset[str]]


def _derived(root: object) -> _Derived:
    """Every derived table and WITH item of the statement ``root``, by name (the bodies),
    and the names of its WITH items.

    Indexed once per statement tree, not once per column asked about: a walk of
    the whole tree per column made analytic statements' first sight 60% slower.
    The tree is read, never changed, while the statement is walked.
    """
    cached: tuple[object, _Derived] | None = getattr(_DERIVED, "last", None)
    if cached is not None and cached[0] is root:
        return cached[1]
    index: dict[str, list[exp.Expression]] = {}
    ctes: set[str] = set()
    assert isinstance(root, exp.Expression)  # noqa: S101 - a statement's tree
    for found in _derived_nodes(root):
        name = found.alias_or_name.lower()
        index.setdefault(name, []).append(found.this)
        if isinstance(found, exp.CTE):
            ctes.add(name)
    derived = (index, frozenset(ctes))
    _DERIVED.last = (root, derived)
    return derived


#: nodes whose arguments are a name or a literal's text and flags, never a node: the
#: index's walk does not visit them (nearly two thirds of a statement's nodes; checked
#: by ``tests/test_analysis_firstsight.py`` over the case files)
_LEAVES = frozenset({exp.Identifier, exp.Literal})
_DERIVED_NODES = (exp.CTE, exp.Subquery)


def _derived_nodes(root: exp.Expr) -> list[exp.Expr]:
    """Every CTE and Subquery node of ``root``'s tree (``find_all`` finds the same nodes).

    Children are found as sqlglot's ``iter_expressions`` finds them; a child of
    a class in ``_LEAVES`` is not pushed, since it has no child to look into.
    ``find_all`` took 50 us of an analytic statement's first sight, this 30.
    """
    found: list[exp.Expr] = []
    stack: list[exp.Expr] = [root]
    pop, push = stack.pop, stack.append
    while stack:
        node = pop()
        if isinstance(node, _DERIVED_NODES):
            found.append(node)
        for value in node.args.values():
            if isinstance(value, list):
                for child in value:
                    if isinstance(child, exp.Expr) and type(child) not in _LEAVES:
                        push(child)
            elif isinstance(value, exp.Expr) and type(value) not in _LEAVES:
                push(value)
    return found


def forget_derived() -> None:
    """Drop the index of the last statement (its tree may change once walked)."""
    _DERIVED.last = None


def plain_column(node: exp.Expression, alias: str, column: str, depth: int = 0) -> bool:
    """Whether ``column`` of the derived table or WITH item ``alias`` is a table's column
    passed through unchanged (through further derived tables), not an expression.

    Found by name in the statement's own tree; anything it cannot follow is not plain.
    """
    if depth > _PLAIN_DEPTH:
        return False
    index, ctes = _derived(node.root())
    queries = [q for q in index.get(alias.lower(), ()) if isinstance(q, exp.Select)]
    if len(queries) != 1:  # none, a set operation, or two of that name: do not guess
        return False
    query = queries[0]
    named = [e for e in query.expressions if e.alias_or_name.lower() == column.lower()]
    if len(named) != 1:
        return False
    inner = named[0].unalias()
    if not isinstance(inner, exp.Column) or isinstance(inner.this, exp.Star):
        return False
    sources = [
        item
        for item in (query.args.get("from_"), *(query.args.get("joins") or ()))
        if item is not None
    ]
    tables = [t for item in sources for t in ([item.this] if item.this is not None else [])]
    qualifier = inner.table.lower() if inner.table else None
    candidates = [t for t in tables if qualifier is None or t.alias_or_name.lower() == qualifier]
    if len(candidates) != 1:
        return False
    origin = candidates[0]
    if isinstance(origin, exp.Table) and origin.name.lower() not in ctes:
        return True  # a physical table's column (the walker resolved and checked it)
    return plain_column(node, origin.alias_or_name, inner.name, depth + 1)


#: aggregates whose value is one row's (or a count): they cannot pack a group's rows
#: (or a rank, a count, a boolean: a bit per group, not a row's values)
_ONE_ROW_AGGREGATES = (
    exp.Count,
    exp.CountIf,
    exp.ApproxDistinct,
    exp.Max,
    exp.Min,
    exp.AnyValue,
    exp.First,
    exp.Last,
    exp.FirstValue,
    exp.LastValue,
    exp.NthValue,
    exp.Lag,
    exp.Lead,
    exp.ArgMax,
    exp.ArgMin,
    exp.Mode,
    exp.Median,
    exp.PercentileCont,
    exp.PercentileDisc,
    exp.LogicalAnd,
    exp.LogicalOr,
    exp.Rank,
    exp.DenseRank,
    exp.Ntile,
    exp.PercentRank,
    exp.CumeDist,
)


#: the name of each vetted function class, as PostgreSQL reads its first call seen
#: (generating it costs more than the walk of a call; dict writes are atomic)
_CLASS_NAMES: dict[type[exp.Func], str] = {}


def _class_name(node: exp.Func) -> str:
    name = display_name(node)
    if name.startswith("operator ") and name[9:].replace("_", "").isalpha():
        name = name[9:].lower()  # CURRENT_TIMESTAMP, LOCALTIMESTAMP: SQL keywords
    _CLASS_NAMES[type(node)] = name
    return name


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _written(node: exp.Func, text: str) -> str | None:
    """The function's name as the statement writes it (``to_hex``, not sqlglot's ``hex``).

    sqlglot remembers where it read the name of some calls; only a plain name
    at that place counts (never a literal: a quoted text is no plain name).
    """
    start, end = node.meta.get("start"), node.meta.get("end")
    if not isinstance(start, int) or not isinstance(end, int):
        return None
    word = text[start : end + 1]
    return word.lower() if _NAME.fullmatch(word) else None


def _is_query(node: exp.Expression) -> bool:
    return isinstance(node, exp.Select | exp.Subquery | exp.SetOperation)


def _called(name: str) -> str:
    """``name`` as a message says it: an operator as such, anything else as a function."""
    if name.startswith("operator ") or not name.isidentifier():
        return name
    return f"function {name}"
