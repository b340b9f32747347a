"""Row scope: which values a statement binds each scoped table's scope column to.

A union-find over the equalities of a query level's conjuncts (WHERE, and the
ON clauses of inner joins, each resolved where PostgreSQL resolves it): a
scope column in one class with integer constants or bound parameters is
bound to them. An outer level's bindings reach a correlated reference.
"""

from __future__ import annotations

from sqlglot import exp

from accessguard.analysis.facts import ScopeRef, Value
from accessguard.analysis.names import Env, resolve
from accessguard.analysis.nodes import conjuncts, constant

#: a column in the union-find: (id of its Source, column name)
Term = tuple[int, str]


def bind(conditions: list[tuple[exp.Expression, Env]], env: Env) -> list[ScopeRef]:
    """Union-find over the equalities the conjuncts assert; the level's scoped references.

    Each condition is resolved in the environment it is evaluated in (an
    ON clause sees only its join's inputs).
    """
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

    for condition, where in conditions:
        for conj in conjuncts([condition]):
            if isinstance(conj, exp.EQ):
                left, right = term(conj.this, where), term(conj.expression, where)
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
                subject = term(conj.this, where)
                members = [term(e, where) for e in conj.expressions]
                lists = [m for m in members if isinstance(m, list)]
                if isinstance(subject, tuple) and members and len(lists) == len(members):
                    consts.setdefault(find(subject), []).extend(v for vs in lists for v in vs)
    for key in list(parent):
        bound = consts.get(find(key))
        if bound and isinstance(key, tuple):
            env.bound[key] = tuple(bound)
    return [
        ScopeRef(
            table=source.spec.qualified,
            scope=source.spec.scope,
            values=env.bound.get((id(source), source.spec.scope_column or ""), ()),
        )
        for source in env.sources.values()
        if source.spec is not None and source.spec.scope is not None
    ]


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
