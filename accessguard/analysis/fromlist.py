"""The FROM list of a SELECT: join trees, parenthesised join groups, and what each ON binds.

In PostgreSQL a comma starts a new join tree and an ON clause sees only the
items of its own tree (transformFromClauseItem); elsewhere (SQLite reads a
comma as a CROSS JOIN) every item is one tree, and a name an ON clause reads
must mean the same in the whole FROM list.

A parenthesised join group, ``orders LEFT JOIN (payments JOIN customers ON
...) ON ...`` (SQLAlchemy nests an inner-joined eager load inside an outer
one that way), has no alias, so its items keep their own names at the level;
its ON clauses see only the items of the group before them. A group on the
nullable side of an outer join is absent, all of it, where the join found no
match: its own ON clauses then hold only where its items are present, so
each binds the group's items only (``rowscope``), never the preserved side.
An aliased group, USING or NATURAL around or inside a group, and groups
outside PostgreSQL are refused.
"""

from __future__ import annotations

from sqlglot import exp

from accessguard.analysis.joins import merge, using_names
from accessguard.analysis.names import Env, Source, refuse
from accessguard.analysis.rowscope import Condition
from accessguard.errors import Reason

#: an ON clause, the environment it is resolved in, and the sources it binds
#: (``rowscope.Condition``: None for an inner join's, which holds on every row)
OnClause = Condition

_JOIN_ARGS = frozenset({"this", "on", "side", "kind", "using", "method"})


class JoinTrees:
    """The walker's FROM list (a mixin of ``Clauses``)."""

    dialect: str
    reads: set[tuple[str, str]]

    def _only_args(self, node: exp.Expression, allowed: frozenset[str] | set[str]) -> None:
        raise NotImplementedError  # the Clauses'

    def _add_source(
        self, item: exp.Expression, env: Env, ctes: dict[str, Source], *, grouped: bool = False
    ) -> Source:
        raise NotImplementedError  # the Clauses'

    def _from(self, node: exp.Select, env: Env, ctes: dict[str, Source]) -> list[OnClause]:
        """Add the FROM items to ``env``; return each ON clause with the names it sees."""
        ons: list[OnClause] = []
        tree: list[Source] = []
        from_ = node.args.get("from_")
        if from_ is not None:
            tree = self._item(from_.this, env, ctes, ons)
        self._joins(node.args.get("joins") or (), tree, env, ctes, ons, top=True)
        return ons

    def _item(
        self, item: exp.Expression, env: Env, ctes: dict[str, Source], ons: list[OnClause]
    ) -> list[Source]:
        """The sources of one FROM item: one, or every item of a join group."""
        group = _group(item)
        if group is None:
            return [self._add_source(item, env, ctes)]
        if self.dialect != "postgres":
            refuse(Reason.SQL_UNANALYZABLE, "a parenthesised join is analyzed for PostgreSQL only")
        tree = [self._add_source(group, env, ctes, grouped=True)]
        inner: list[OnClause] = []
        tree = self._joins(group.args["joins"], tree, env, ctes, inner, top=False)
        ons += inner
        return tree

    def _joins(  # noqa: PLR0913 - one join tree's state
        self,
        joins: list[exp.Join] | tuple[()],
        tree: list[Source],
        env: Env,
        ctes: dict[str, Source],
        ons: list[OnClause],
        *,
        top: bool,
    ) -> list[Source]:
        """Add ``joins`` to the join tree ``tree``; return the tree (the last one, after commas)."""
        postgres = self.dialect == "postgres"
        for join in joins:
            self._only_args(join, _JOIN_ARGS)
            side = (join.args.get("side") or "").upper()
            kind = (join.args.get("kind") or "").upper()
            method = (join.args.get("method") or "").upper()
            if kind == "OUTER" and side:
                kind = ""  # LEFT OUTER JOIN is LEFT JOIN
            if kind not in ("", "INNER", "CROSS") or side not in ("", "LEFT", "RIGHT", "FULL"):
                refuse(Reason.SQL_UNANALYZABLE, f"{side} {kind} JOIN is not analyzed".strip())
            if method not in ("", "NATURAL"):
                refuse(Reason.SQL_UNANALYZABLE, f"{method} JOIN is not analyzed")
            on = join.args.get("on")
            if join.args.get("using") or method:
                if on is not None or kind == "CROSS":
                    refuse(Reason.SQL_UNANALYZABLE, "a join with both ON and USING")
                if not top or _group(join.this) is not None:
                    refuse(Reason.SQL_UNANALYZABLE, "USING or NATURAL with a parenthesised join")
                source = self._add_source(join.this, env, ctes)
                names = using_names(join, tree, source, env)
                reads, equalities = merge(names, tree, source, env, side=side, strict=postgres)
                for read_source, column in reads:
                    if read_source.spec is not None:
                        self.reads.add((read_source.spec.qualified, column))
                binds = _binds(side, tree, [source])
                ons += [(eq, view, binds) for eq, view in equalities]
                tree.append(source)
                continue
            inner: list[OnClause] = []
            right = self._item(join.this, env, ctes, inner)
            ons += _nested(inner, side, right)
            binds = _binds(side, tree, right)
            if top and postgres and not side and not kind and on is None:
                tree = list(right)  # a comma: a new join tree
            else:
                tree = tree + right
            if on is not None:
                ons.append((on, env.view(tree, strict=postgres), binds))
        return tree


def _group(item: exp.Expression) -> exp.Table | None:
    """The first table of a parenthesised join group ``(t JOIN ...)`` (it holds the joins)."""
    if (
        isinstance(item, exp.Subquery)
        and item.args.get("alias") is None
        and isinstance(item.this, exp.Table)
        and item.this.args.get("joins")
    ):
        if any(value for key, value in item.args.items() if key != "this"):
            refuse(Reason.SQL_UNANALYZABLE, "a parenthesised join the analyser cannot read")
        return item.this
    if isinstance(item, exp.Subquery) and (
        item.args.get("joins") or (isinstance(item.this, exp.Table) and item.this.args.get("joins"))
    ):
        refuse(Reason.SQL_UNANALYZABLE, "an aliased or nested parenthesised join is not analyzed")
    return None


def _nested(inner: list[OnClause], side: str, group: list[Source]) -> list[OnClause]:
    """A join group's ON clauses, as they bind once the group is joined on ``side``.

    On the nullable side (LEFT, FULL) the group is absent where the join found
    no match: a clause that held on every row now holds only where the group's
    items are present, so it binds those items only. Elsewhere it is unchanged.
    """
    if side not in ("LEFT", "FULL") or len(group) == 1:
        return inner
    ids = frozenset(id(s) for s in group)
    return [(on, view, ids if binds is None else binds) for on, view, binds in inner]


def _binds(side: str, tree: list[Source], right: list[Source]) -> frozenset[int] | None:
    """The sources a join's ON clause binds (``rowscope``): None for every one (inner).

    An outer join's ON holds only where its nullable side is present: it binds
    the right input of a LEFT JOIN, the join tree so far of a RIGHT JOIN, and
    nothing of a FULL JOIN (both sides are preserved).
    """
    if side == "LEFT":
        return frozenset(id(s) for s in right)
    if side == "RIGHT":
        return frozenset(id(s) for s in tree)
    if side == "FULL":
        return frozenset()
    return None
