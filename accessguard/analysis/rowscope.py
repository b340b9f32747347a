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
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlglot import exp

from accessguard.analysis.facts import ScopeRef, Value
from accessguard.analysis.keys import keyed
from accessguard.analysis.names import Env, resolve
from accessguard.analysis.nodes import conjuncts, constant

#: a column in the union-find: (id of its Source, column name)
Term = tuple[int, str]

#: a condition, the environment it is resolved in, and the ids of the sources it
#: binds: None for every source (WHERE, an inner join's ON), else an outer
#: join's nullable side (empty for a FULL JOIN: it binds nothing)
Condition = tuple[exp.Expression, Env, frozenset[int] | None]


class _Classes:
    """A union-find of terms, each class with the constant values it equals."""

    def __init__(self) -> None:
        self.parent: dict[Term, Term] = {}
        self.consts: dict[Term, list[Value]] = {}

    def copy(self) -> _Classes:
        other = _Classes()
        other.parent = dict(self.parent)
        other.consts = {k: list(v) for k, v in self.consts.items()}
        return other

    def find(self, x: Term) -> Term:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            x = self.parent[x]
        return x

    def union(self, a: Term, b: Term) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb
            self.consts.setdefault(rb, []).extend(self.consts.pop(ra, []))

    def equal(self, a: Term, values: Iterable[Value]) -> None:
        self.consts.setdefault(self.find(a), []).extend(values)

    def values(self, a: Term) -> tuple[Value, ...]:
        return tuple(self.consts.get(self.find(a), ())) if a in self.parent else ()

    def add(self, condition: exp.Expression, where: Env) -> None:
        """Add the equalities (and IN lists of constants) the conjuncts of ``condition`` assert."""
        for conj in conjuncts([condition]):
            if isinstance(conj, exp.EQ) and isinstance(_bare(conj.expression), exp.Any):
                subject, items = term(conj.this, where), _array(conj.expression)
                if isinstance(subject, tuple) and items:  # x = ANY(ARRAY[1, 2]): x IN (1, 2)
                    found = [term(e, where) for e in items]
                    lists = [m for m in found if isinstance(m, list)]
                    if len(lists) == len(found):
                        self.equal(subject, (v for vs in lists for v in vs))
            elif isinstance(conj, exp.EQ):
                left, right = term(conj.this, where), term(conj.expression, where)
                if left is None or right is None:
                    continue
                if isinstance(left, tuple) and isinstance(right, tuple):
                    self.union(left, right)
                elif isinstance(left, tuple) and isinstance(right, list):
                    self.equal(left, right)
                elif isinstance(right, tuple) and isinstance(left, list):
                    self.equal(right, left)
            elif (
                isinstance(conj, exp.In)
                and not conj.args.get("query")
                and not conj.args.get("unnest")
            ):
                subject = term(conj.this, where)
                members = [term(e, where) for e in conj.expressions]
                lists = [m for m in members if isinstance(m, list)]
                if isinstance(subject, tuple) and members and len(lists) == len(members):
                    self.equal(subject, (v for vs in lists for v in vs))


def bind(conditions: list[Condition], env: Env) -> list[ScopeRef]:
    """The level's scoped references, each with the values its scope column is bound to.

    Also records in ``env.bound`` the values each column of the level is
    bound to (for correlated references of subqueries): a column of a
    nullable side with what its outer joins' ON clauses bind too (where its
    row is absent, the column is NULL, which equals nothing).
    """
    base = _Classes()
    for condition, where, binds in conditions:
        if binds is None:
            base.add(condition, where)
    for key in list(base.parent):
        bound = base.values(key)
        if bound:
            env.bound[key] = bound
    refs: list[ScopeRef] = []
    for source in env.sources.values():
        outer = [(c, w) for c, w, binds in conditions if binds is not None and id(source) in binds]
        classes = base
        if outer:
            classes = base.copy()
            for condition, where in outer:
                classes.add(condition, where)
            for key in list(classes.parent):
                bound = classes.values(key)
                if key[0] == id(source) and bound:
                    env.bound[key] = bound
        if source.spec is not None and source.spec.scope is not None:
            ref = ScopeRef(
                table=source.spec.qualified,
                scope=source.spec.scope,
                values=env.bound.get((id(source), source.spec.scope_column or ""), ()),
            )
            refs.append(keyed(ref, source.spec, env.bound, id(source)))
    return refs


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
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Column) and isinstance(node.this, exp.Identifier):
        found, _whole = resolve(node, env)
        if found is None:
            return None
        source, column, level = found
        if level is env.level:
            return (id(source), column)
        outer = level.bound.get((id(source), column))
        return list(outer) if outer else None
    value = constant(node)
    return [value] if value is not None else None
