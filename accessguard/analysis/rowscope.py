"""Row scope: which values a statement binds each scoped table's scope column to.

A union-find over the equalities of a query level's conjuncts, each resolved
where PostgreSQL resolves it: a scope column in one class with integer
constants or bound parameters is bound to them. An outer level's bindings
reach a correlated reference.

Which conjuncts hold depends on where a row of a FROM item comes from:

- WHERE and the ON clause of an inner join hold on every row of the result
  (the base classes). An equality is strict (NULL = x is never true), so a
  chain of such equalities binds whatever it reaches, the nullable side of an
  outer join included: ``WHERE orders.customer_id = 42`` drops every row whose
  ``orders`` side is NULL.
- The ON clause of an outer join holds only on the rows where its nullable
  side is present: ``customers LEFT JOIN orders ON c.id = o.customer_id``
  keeps every customers row, matched or not. So it binds the nullable side's
  columns (the right input of a LEFT JOIN, the join tree so far of a RIGHT
  JOIN), never the preserved side's, and a FULL JOIN's ON binds nothing. A
  WHERE conjunct on the nullable side binds that side only, through the base
  classes; it never reaches the preserved side through the outer ON.

A source's bindings are those of the base classes plus the ON clauses of the
outer joins on whose nullable side it sits: wherever one of its rows is
present, each of those ON clauses held for that row.

Bound through another table (``keys.relation``)
-----------------------------------------------
A scoped table is *proven* when every row of it the statement can reach is
the subject's: its scope column is bound to values the decision compares
with the subject, or its key is probed. A table whose column is in one class
(of its own class set, above) with a column of a proven table is proven in
turn, scope column to scope column or through a declared reference (with a
probe). Why no row of another customer can come back that way:

- Each equality in a class set holds, strictly, on every row where the table
  is present: ``x = y`` is true only if both sides are not NULL, so the
  other table's row is present too, and, being proven, is the subject's. A
  NULL never equals anything, so an absent (NULL-extended) row binds nothing.
- Only conjuncts count: an equality under OR, NOT or CASE is never added, so
  ``WHERE o.customer_id = 42 OR p.order_id = o.id`` proves nothing.
- A LEFT JOIN's ON clause binds its right side only; a WHERE equality on the
  nullable side never reaches the preserved side; a FULL JOIN's ON binds
  nothing. ``customers c LEFT JOIN orders o ON ... WHERE o.customer_id = 42``
  therefore leaves ``c`` unbound.
- The proof is a least fixpoint from tables bound by values or keys: two
  tables that only equal each other (``orders JOIN payments ON ...`` with no
  WHERE) prove nothing.
- A correlated reference is a term of the inner level's classes, with what
  its own level proved; each branch of a set operation is a level of its own
  and must be proven by itself; a derived table's output column carries the
  bindings of the column it copies (``Source.carried``: plain column
  references only, never through a set operation or a renaming alias).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from sqlglot import exp

from accessguard.analysis.facts import KeyBinding, ScopeRef, Value
from accessguard.analysis.keys import keyed, relation
from accessguard.analysis.names import Carried, Env, Origin, Source, ident, resolve
from accessguard.analysis.nodes import conjuncts, constant, output_name

#: a column in the union-find: (id of its Source, column name)
Term = tuple[int, str]

#: a condition, the environment it is resolved in, and the ids of the sources it
#: binds: None for every source (WHERE, an inner join's ON), else an outer
#: join's nullable side (empty for a FULL JOIN: it binds nothing)
Condition = tuple[exp.Expression, Env, frozenset[int] | None]


class _Classes:
    """A union-find of terms, each class with the constant values it equals."""

    def __init__(self, derived: Mapping[int, Source] | None = None) -> None:
        self.parent: dict[Term, Term] = {}
        self.consts: dict[Term, list[Value]] = {}
        #: each column term's source and the query level it belongs to
        self.places: dict[Term, tuple[Source, Env]] = {}
        #: the walked subqueries, by id of their node (``x IN (SELECT ...)`` binds ``x``)
        self.derived: Mapping[int, Source] = derived or {}
        #: the classes' members by root, made once all equalities are in (``members``)
        self.groups: dict[Term, list[Term]] | None = None
        #: whether a conjunct added compared a column with a subquery (``subqueries_bind``)
        self.queries = False

    def copy(self) -> _Classes:
        other = _Classes(self.derived)
        other.parent = dict(self.parent)
        other.consts = {k: list(v) for k, v in self.consts.items()}
        other.places = dict(self.places)
        return other

    def members(self, a: Term) -> list[Term]:
        """The terms of ``a``'s class (the classes are final once the fixpoint asks)."""
        if self.groups is None:
            self.groups = {}
            for t in self.parent:
                self.groups.setdefault(self.find(t), []).append(t)
        return self.groups.get(self.find(a), [])

    def origin(self, a: Term) -> Origin | None:
        """The proven scoped column ``a`` is (a proven table's, or what a derived one carries)."""
        place = self.places.get(a)
        return None if place is None else _origin(place[0], place[1], a[1])

    def _within(self, node: exp.Expression, query: exp.Expression, where: Env) -> None:
        """``x IN (SELECT y ...)``, ``x = (SELECT y ...)``, ``x = ANY (SELECT y ...)``.

        Each is true only where ``x`` equals, not NULL, a value of ``y`` in some
        row of the subquery: ``x`` is bound as ``y`` is (``Source.carried``),
        when the subquery has one output column and it carries something.
        """
        subject = self.term(node, where)
        found = self.derived.get(id(query))
        if not isinstance(subject, tuple) or found is None or len(found.columns) != 1:
            return
        (column,) = found.columns
        carried = found.carried.get(column)
        if carried is None:
            return
        inner = (id(found), column)
        self.places[inner] = (found, where.level)
        if carried[0]:
            self.equal(inner, carried[0])
        self.union(subject, inner)

    def _equality(self, conj: exp.EQ, where: Env) -> None:
        left, right = self.term(conj.this, where), self.term(conj.expression, where)
        if isinstance(left, tuple) and isinstance(right, tuple):
            self.union(left, right)
        elif isinstance(left, tuple) and isinstance(right, list):
            self.equal(left, right)
        elif isinstance(right, tuple) and isinstance(left, list):
            self.equal(right, left)

    def term(self, node: exp.Expression, env: Env) -> Term | list[Value] | None:
        """``term``, remembering where a column term comes from."""
        found, place = _term(node, env)
        if isinstance(found, tuple) and place is not None:
            self.places[found] = place
        return found

    def find(self, x: Term) -> Term:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            x = self.parent[x]
        return x

    def union(self, a: Term, b: Term) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.groups = None
            self.parent[ra] = rb
            self.consts.setdefault(rb, []).extend(self.consts.pop(ra, []))

    def equal(self, a: Term, values: Iterable[Value]) -> None:
        self.consts.setdefault(self.find(a), []).extend(values)

    def values(self, a: Term) -> tuple[Value, ...]:
        return tuple(self.consts.get(self.find(a), ())) if a in self.parent else ()

    def add(self, condition: exp.Expression, where: Env) -> None:
        """Add the equalities (and IN lists of constants) the conjuncts of ``condition`` assert."""
        # one comparison (most ON clauses) is its own conjunct: no list to make
        single = not isinstance(condition, _CONJUNCTIONS)
        for conj in (condition,) if single else conjuncts([condition]):
            if isinstance(conj, exp.EQ) and not (
                isinstance(conj.this, _WRAPPERS) or isinstance(conj.expression, _WRAPPERS)
            ):  # x = y, neither a subquery, nor ANY, nor in parentheses (most conjuncts)
                self._equality(conj, where)
                continue
            query = _query_operand(conj)
            if query is not None:
                self.queries = True
                self._within(query[0], query[1], where)
            elif isinstance(conj, exp.EQ) and isinstance(_bare(conj.expression), exp.Any):
                subject, items = self.term(conj.this, where), _array(conj.expression)
                if isinstance(subject, tuple) and items:  # x = ANY(ARRAY[1, 2]): x IN (1, 2)
                    found = [term(e, where) for e in items]
                    lists = [m for m in found if isinstance(m, list)]
                    if len(lists) == len(found):
                        self.equal(subject, (v for vs in lists for v in vs))
            elif isinstance(conj, exp.EQ):
                self._equality(conj, where)
            elif (
                isinstance(conj, exp.In)
                and not conj.args.get("query")
                and not conj.args.get("unnest")
            ):
                subject = self.term(conj.this, where)
                members = [term(e, where) for e in conj.expressions]
                lists = [m for m in members if isinstance(m, list)]
                if isinstance(subject, tuple) and members and len(lists) == len(members):
                    self.equal(subject, (v for vs in lists for v in vs))


def bind(
    conditions: list[Condition], env: Env, derived: Mapping[int, Source] | None = None
) -> list[ScopeRef]:
    """The level's scoped references, each with the values its scope column is bound to.

    Also records in ``env.bound`` the values each column of the level is
    bound to (for correlated references of subqueries): a column of a
    nullable side with what its outer joins' ON clauses bind too (where its
    row is absent, the column is NULL, which equals nothing); and in
    ``env.proven`` the scoped tables proven (bound, keyed or through another).
    ``derived``: the subqueries walked so far (``subqueries_bind``).
    """
    sources = list(env.sources.values())
    env.proven.clear()  # bound again (``subqueries_bind``): proven anew, never carried over
    base = _Classes(derived)
    for source in sources:  # a derived table's columns carry their bindings
        for column, (values, _origin) in source.carried.items():
            base.places[(id(source), column)] = (source, env)
            if values:
                base.equal((id(source), column), values)
    outer: list[Condition] = []  # outer joins' ON clauses
    for item in conditions:
        if item[2] is None:
            base.add(item[0], item[1])
        else:
            outer.append(item)
    env.subqueries = base.queries or (bool(outer) and subqueries_bind(outer))
    if base.consts:  # no class equals a value (a join's ON clauses only): nothing is bound
        local = {id(s) for s in sources}
        for key in list(base.parent):
            if key[0] in local:
                consts = base.consts.get(base.find(key))  # base.values(key), key being a term
                if consts:
                    env.bound[key] = tuple(consts)
    sets: dict[int, _Classes] = {}  # a source's own classes, where outer ON clauses bind it
    for source in sources if outer else ():
        mine = [(c, w) for c, w, binds in outer if binds is not None and id(source) in binds]
        if mine:
            classes = sets[id(source)] = base.copy()
            for condition, where in mine:
                classes.add(condition, where)
            for key in list(classes.parent):
                bound = classes.values(key)
                if key[0] == id(source) and bound:
                    env.bound[key] = bound
    scoped = [s for s in sources if s.spec is not None and s.spec.scope is not None]
    refs: dict[int, ScopeRef] = {}
    for source in scoped:
        assert source.spec is not None  # noqa: S101 - scoped sources are tables
        ref = ScopeRef(
            table=source.spec.qualified,
            scope=source.spec.scope or "",
            values=env.bound.get((id(source), source.spec.scope_column or ""), ()),
        )
        if not ref.values:  # keyed() keeps a reference its scope column binds
            ref = keyed(ref, source.spec, env.bound, id(source))
        refs[id(source)] = ref
        if ref.values or ref.key is not None:
            env.proven.add(id(source))
    changed = len(env.proven) < len(scoped)  # every table bound by values or keys: proven
    while changed:  # the least fixpoint: a table is proven only through one proven before
        changed = False
        for source in scoped:
            if id(source) not in env.proven:
                through = _through(source, sets.get(id(source), base))
                if through is not None:
                    refs[id(source)] = dataclasses.replace(refs[id(source)], key=through)
                    env.proven.add(id(source))
                    changed = True
    return [refs[id(s)] for s in scoped]


def _through(source: Source, classes: _Classes) -> KeyBinding | None:
    """The best binding of ``source`` through a proven table its columns equal, if any."""
    spec = source.spec
    assert spec is not None  # noqa: S101 - called for tables only
    best: tuple[int, KeyBinding] | None = None
    for column in spec.columns:
        own = (id(source), column)
        if own not in classes.parent:
            continue
        for member in classes.members(own):
            origin = classes.origin(member) if member[0] != id(source) else None
            found = relation(spec, column, origin) if origin is not None else None
            if found is not None and (best is None or found[0] < best[0]):
                best = found[0], KeyBinding(column=column, values=(), via=found[1])
    return best[1] if best is not None else None


def subqueries_bind(conditions: list[Condition]) -> bool:
    """Whether a conjunct compares a column with a subquery (bound again once it is walked)."""
    return any(
        _query_operand(conj) is not None
        for condition, _where, _binds in conditions
        for conj in conjuncts([condition])
    )


def _query_operand(conj: exp.Expression) -> tuple[exp.Expression, exp.Expression] | None:
    """(x, the subquery) of ``x IN (SELECT ..)``, ``x = (SELECT ..)`` or ``x = ANY (SELECT ..)``."""
    if isinstance(conj, exp.In) and isinstance(conj.args.get("query"), exp.Subquery):
        return conj.this, conj.args["query"]
    if not isinstance(conj, exp.EQ):
        return None
    if not isinstance(conj.this, _WRAPPERS) and not isinstance(conj.expression, _WRAPPERS):
        return None  # neither side is a subquery, in parentheses or under ANY
    for node, other in ((conj.this, conj.expression), (conj.expression, conj.this)):
        operand = _bare(other)
        if isinstance(operand, exp.Any) and isinstance(_bare(operand.this), exp.Subquery):
            operand = _bare(operand.this)
        if isinstance(operand, exp.Subquery) and not isinstance(_bare(node), exp.Subquery):
            return node, operand
    return None


#: what ``conjuncts`` looks into (as ``nodes._CONJUNCTIONS``)
_CONJUNCTIONS = (exp.And, exp.Paren)
#: what a subquery operand of ``x = ...`` is, or is wrapped in
_WRAPPERS = (exp.Subquery, exp.Paren, exp.Any)


def _bare(node: exp.Expression) -> exp.Expression:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def _array(node: exp.Expression) -> list[exp.Expression]:
    """The members of ``ANY(ARRAY[...])``; empty for anything else (a subquery, a parameter)."""
    inner = _bare(_bare(node).this)
    if isinstance(inner, exp.Array) and not any(
        isinstance(e, exp.Select | exp.Subquery | exp.SetOperation) for e in inner.expressions
    ):
        return list(inner.expressions)
    return []


def term(node: exp.Expression, env: Env) -> Term | list[Value] | None:
    """A column term (source id, column), a list of constant values, or None."""
    return _term(node, env)[0]


def _term(
    node: exp.Expression, env: Env
) -> tuple[Term | list[Value] | None, tuple[Source, Env] | None]:
    """``term``, and for a column term its source and query level."""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Column) and isinstance(node.this, exp.Identifier):
        found, _whole = resolve(node, env)
        if found is None:
            return None, None
        source, column, level = found
        if level is (env.home or env):  # env.level
            return (id(source), column), (source, level)
        outer = level.bound.get((id(source), column))
        # an outer column: its values, else itself (what its level proved, ``_Classes.origin``)
        return (list(outer), None) if outer else ((id(source), column), (source, level))
    value = constant(node)
    return ([value] if value is not None else None), None


def carries(node: exp.Select, env: Env) -> dict[str, Carried]:
    """What each output column of a walked SELECT carries to the level that reads it.

    Only a plain column reference (``orders.id AS orders_id``) of this level
    carries anything: the values its column is bound to and the proven
    scoped column it copies. An output name given twice carries nothing.
    Called once the level is walked and bound.
    """
    carried: dict[str, Carried] = {}
    names: list[str] = []
    for proj in node.expressions:
        target = _bare(proj.this if isinstance(proj, exp.Alias) else proj)
        if isinstance(target, exp.Star) or (
            isinstance(target, exp.Column) and isinstance(target.this, exp.Star)
        ):
            return {}  # names a * brings in could repeat one
        name = ident(proj.args["alias"]) if isinstance(proj, exp.Alias) else output_name(proj)
        names.append(name)
        if not isinstance(target, exp.Column) or not isinstance(target.this, exp.Identifier):
            continue
        found, place = _term(target, env)
        if not isinstance(found, tuple) or place is None or place[1] is not env:
            continue
        values = env.bound.get(found, ())
        origin = _origin(place[0], env, found[1])
        if values or origin is not None:
            carried[name] = (values, origin)
    return {k: v for k, v in carried.items() if names.count(k) == 1}


def _origin(source: Source, level: Env, column: str) -> Origin | None:
    """The proven scoped column ``column`` of ``source`` (at ``level``) is, if any."""
    if source.spec is not None and source.spec.scope is not None:
        return Origin(source.spec, column) if id(source) in level.proven else None
    carried = source.carried.get(column)
    return carried[1] if carried is not None else None
